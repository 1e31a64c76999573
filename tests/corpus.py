"""A corpus of the defects real exports and real users produce, written by the tests themselves.

``bad_images`` and friends return ``(kind, row fields, expected reason)``: ``kind`` names the defect (every
kind once), the fields replace those of a valid row. ``PHI`` strings are planted in ids, reports and
findings, and must never leave the data they were put in.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np

from volumes import PHANTOM_SHAPE, RAS_AFFINE, labels, phantom, reject_cases, save

PATIENT_PHI = "MRN-55031"  # a raw patient id: pseudonymised in shards, absent everywhere else
TEXT_PHI = "Mrs Okonkwo"  # report and findings text
GOOD_REPORT = f"FINDINGS: {TEXT_PHI} has a 2 cm lesion in the left frontal lobe.\nIMPRESSION: Lesion."
GOOD_FINDINGS = json.dumps({"enhancing_lesion": True, "side": "left", "locations": ["left_frontal_lobe"]})

Case = tuple[str, dict, str]


def _header_only(path: Path, shape: tuple[int, ...], dtype: type = np.float32) -> str:
    """A small .nii.gz whose header claims ``shape`` but which holds almost no voxel data."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_qform(np.eye(4), code=1)
    header.set_sform(np.eye(4), code=1)
    header["vox_offset"] = 352
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 256_000))
    return str(path)


def _lr_conflict(path: Path) -> str:
    img = nib.Nifti1Image(phantom(), RAS_AFFINE)
    flipped = RAS_AFFINE.copy()
    flipped[0, 0] = -1.0
    img.header.set_sform(RAS_AFFINE, code=1)
    img.header.set_qform(flipped, code=1)
    return save(path, img)


def bad_images(tmp: Path) -> list[Case]:
    """Image defects, each in the second sequence of an otherwise valid study."""
    cases = [(f"classic-{n}-{reason}", path, reason) for n, (reason, path) in enumerate(reject_cases(tmp))]
    (tmp / "empty.nii.gz").write_bytes(b"")
    (tmp / "a_folder.nii.gz").mkdir()
    (tmp / "text.nii.gz").write_bytes(gzip.compress(b"patient name: " + TEXT_PHI.encode() * 100))
    inf = phantom()
    inf[2, 2, 2] = np.inf
    overflow = nib.Nifti1Image((phantom() * 100).astype(np.int16), RAS_AFFINE)
    overflow.header.set_slope_inter(1e38, 0)
    rng = np.random.default_rng(0)
    phase = rng.uniform(-np.pi, np.pi, PHANTOM_SHAPE).astype(np.float32)
    ct = np.where(phantom() > 0, 40.0, -1000.0).astype(np.float32)
    complex_img = nib.Nifti1Image(phantom().astype(np.complex64), RAS_AFFINE)
    rgb = np.zeros(PHANTOM_SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    short = tmp / "short.nii"
    save(short, nib.Nifti1Image(phantom(), RAS_AFFINE))
    short.write_bytes(short.read_bytes()[:2000])
    big = save(tmp / "big.nii", nib.Nifti1Image(np.ones((96, 96, 96), np.float32), RAS_AFFINE))
    cases += [
        ("zero-byte-file", str(tmp / "empty.nii.gz"), "unreadable_file"),
        ("directory-not-file", str(tmp / "a_folder.nii.gz"), "unreadable_file"),
        ("gzip-of-text", str(tmp / "text.nii.gz"), "unreadable_file"),
        ("uncompressed-truncated", str(short), "unreadable_file"),
        ("inf-voxel", save(tmp / "inf.nii.gz", nib.Nifti1Image(inf, RAS_AFFINE)), "nonfinite_voxels"),
        ("slope-overflow", save(tmp / "overflow.nii.gz", overflow), "nonfinite_voxels"),
        ("header-10000-cubed", _header_only(tmp / "huge_claim.nii.gz", (10000,) * 3), "image_too_large"),
        ("header-2-gib", _header_only(tmp / "two_gib.nii.gz", (1024, 1024, 512)), "image_too_large"),
        ("over-file-budget", big, "file_too_large"),
        ("complex-voxels", save(tmp / "complex.nii.gz", complex_img), "unsupported_datatype"),
        ("rgb-voxels", save(tmp / "rgb.nii.gz", nib.Nifti1Image(rgb, RAS_AFFINE)), "unsupported_datatype"),
        ("phase-map", save(tmp / "phase.nii.gz", nib.Nifti1Image(phase, RAS_AFFINE)), "not_magnitude_image"),
        ("ct-hounsfield", save(tmp / "ct.nii.gz", nib.Nifti1Image(ct, RAS_AFFINE)), "not_magnitude_image"),
        ("sform-qform-left-right", _lr_conflict(tmp / "lr.nii.gz"), "conflicting_geometry"),
    ]
    return [(kind, {"flair": path}, reason) for kind, path, reason in cases]


def bad_masks(tmp: Path) -> list[Case]:
    outside = np.zeros(PHANTOM_SHAPE, np.uint8)
    outside[0:3, 0:3, 0:3] = 1  # the corner, where the head is not
    far = RAS_AFFINE.copy()
    far[:3, 3] += 400.0
    masks = {
        "m_neg": (labels().astype(np.int16) - 1, RAS_AFFINE),
        "m_prob": (labels() * 0.37, RAS_AFFINE),
        "m_out": (outside, RAS_AFFINE),
        "m_far": (labels(), far),
    }
    path = {name: save(tmp / f"{name}.nii.gz", nib.Nifti1Image(*data)) for name, data in masks.items()}
    return [
        ("mask-negative-labels", path["m_neg"], "bad_mask"),
        ("mask-probabilities", path["m_prob"], "bad_mask"),
        ("mask-outside-head", path["m_out"], "mask_mismatch"),
        ("mask-other-geometry", path["m_far"], "mask_mismatch"),
        ("mask-missing-file", str(tmp / "no_mask.nii.gz"), "unreadable_file"),
    ]


def bad_texts() -> list[Case]:
    """Report, findings and id defects."""
    long_report = "FINDINGS: " + " ".join(f"{TEXT_PHI} finding {i} is stable." for i in range(40_000))
    clause = {"modality": "T1c", "side": f"left, per {TEXT_PHI}", "site": "frontal lobe", "appearance": "x"}
    wrong_type = json.dumps({"enhancing_lesion": f"yes ({TEXT_PHI})"})
    return [
        ("report-null", {"report": None}, "missing_report"),
        ("report-blank", {"report": " \t "}, "empty_report"),
        ("report-headers-only", {"report": "FINDINGS:\nIMPRESSION:"}, "empty_report"),
        ("report-one-megabyte", {"report": long_report}, "report_too_long"),
        ("findings-not-json", {"findings": "{enhancing: yes"}, "bad_findings"),
        ("findings-array", {"findings": "[1, 2]"}, "bad_findings"),
        ("findings-phi-in-bad-clause", {"findings": json.dumps({"clauses": [clause]})}, "bad_findings"),
        ("findings-nested-100000", {"findings": "[" * 100_000 + "]" * 100_000}, "bad_findings"),
        ("findings-nested-30000", {"findings": "[" * 30_000 + "]" * 30_000}, "bad_findings"),
        ("findings-wrong-type", {"findings": wrong_type}, "bad_findings"),
        ("findings-unknown-location", {"findings": json.dumps({"locations": ["left_toe"]})}, "bad_findings"),
        ("findings-duplicate-key", {"findings": '{"side": "left", "side": "right"}'}, "bad_findings"),
        ("findings-nan", {"findings": '{"enhancing_lesion": NaN}'}, "bad_findings"),
        ("no-study-id", {"study_id": ""}, "missing_study_id"),
        ("no-patient-id", {"patient_id": "  "}, "missing_patient_id"),
        ("study-id-300-chars", {"study_id": "S" * 300}, "bad_id"),
        ("patient-id-control-chars", {"patient_id": f"{PATIENT_PHI}\x07"}, "bad_id"),
        ("no-sequence", {"t1c": None, "flair": None}, "missing_sequence"),
    ]  # fmt: skip


def valid_row(number: int, good: str) -> dict:
    return {
        "patient_id": f"{PATIENT_PHI}-{number % 7}",
        "study_id": f"ok-{number:03d}",
        "t1c": good,
        "flair": good,
        "mask": None,
        "report": GOOD_REPORT,
        "findings": GOOD_FINDINGS,
    }
