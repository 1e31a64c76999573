"""Built-in phantom dataset: what a hospital export gives a user, without any private data.

``generate_phantom`` writes, under ``out_dir``::

    images/<study_id>_<seq>.nii.gz   int16, RAS affine with the isotropic voxel size (one file per sequence)
    dicom/<study_id>/*.dcm           with ``export: dicom``, instead of images/: a PACS export's series
                                     (``phantom.dicom_export``); the manifest's ``dicom`` names the folder
    masks/<study_id>_mask.nii.gz     uint8 tumour mask, BraTS labels (``MASK_LABELS``): 0 background,
                                     1 necrotic / non-enhancing core, 2 oedema, 3 enhancing tumour
    reports.csv                      study_id, report
    findings.csv                     study_id + one column per finding (true/false, locations ';'-joined)
    lesions.csv                      ground truth per lesion (location, diameters, template-space centre)
    manifest.csv                     patient_id, study_id, <path column per sequence>, mask, report, findings

Paths in the manifest are relative to its folder; ``report`` is the inline (multi-line, quoted) text and
``findings`` the compact JSON object of ``brainvlp.findings`` (findings.csv leaves out its ``clauses``). Ids
look like hospital ones (``MRN0012345``, ``ACC000123``) so pseudonymisation has something to hide.

Anatomy comes from the MNI152 template (``phantom.anatomy``), text from the same drawn findings
(``phantom.reports``). Lesion-free studies (``1 - lesion_probability``) are fully normal: no white-matter
disease, no prior surgery. Of the studies with lesions ~15 % show white-matter disease (periventricular
FLAIR foci) and ~10 % prior surgery (a CSF-like resection cavity with a FLAIR-bright rim in the lobe of the
first lobar lesion, named in the report; it is not part of the lesion mask or of ``locations``).

Every study draws from its own ``np.random.default_rng([seed, stream, index])`` streams (index = position
after sorting by study id; anatomy per patient), so a study does not depend on generation order.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from brainvlp.findings import LOCATIONS
from brainvlp.phantom.anatomy import (
    PlacedLesion,
    Template,
    load_template,
    necrotic_centre,
    paint,
    place_lesion,
    scanner_signal,
    smooth_field,
    warp,
    warp_coordinates,
    white_matter_hyperintensities,
)
from brainvlp.phantom.config import SUPPORTED_SEQUENCES, PhantomConfig
from brainvlp.phantom.dicom_export import write_study as write_dicom_study
from brainvlp.phantom.reports import Lesion, midline_shift_lesion, study_findings, write_report

logger = logging.getLogger(__name__)

FINDING_COLUMNS = (
    "enhancing_lesion",
    "lesion_count_bucket",
    "largest_mass_bucket",
    "side",
    "locations",
    "midline_shift",
    "white_matter_disease",
    "prior_surgery",
    "tumor_location",
)
_LOBES = tuple(loc for loc in LOCATIONS if loc.endswith("_lobe"))
_IDS, _ANATOMY, _PLAN, _IMAGE, _TEXT, _CORRUPT = range(6)
_SEQUENCE_STREAM = 10  # + position in SUPPORTED_SEQUENCES: each contrast has its own noise stream


@dataclass(frozen=True)
class PhantomSummary:
    """Where the dataset went and what it holds (counts only: nothing identifying)."""

    out_dir: Path
    manifest: Path
    num_studies: int
    num_patients: int
    num_lesions: int
    num_corrupt: int
    voxel_size: float
    seconds: float


@dataclass(frozen=True)
class StudyRecord:
    """One study's identity: position after sorting by study id, and its patient."""

    index: int
    study_id: str
    patient_index: int
    patient_id: str


@dataclass(frozen=True)
class SimulatedStudy:
    """A rendered study. ``template_labels`` marks lesion ``i`` as ``i + 1`` in template (MNI) space."""

    record: StudyRecord
    lesions: list[Lesion]
    findings: dict[str, Any]
    report: str
    images: dict[str, np.ndarray]
    mask: np.ndarray
    template_labels: np.ndarray


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream, index])


def assign_studies(config: PhantomConfig) -> list[StudyRecord]:
    """Hospital-like ids, sorted by study id; every patient has >= 1 study, the rest go to random patients."""
    rng = _rng(config.seed, _IDS, 0)
    patients = rng.choice(10_000_000, size=config.num_patients, replace=False)
    studies = np.sort(rng.choice(1_000_000, size=config.num_studies, replace=False))
    extra = rng.integers(0, config.num_patients, config.num_studies - config.num_patients)
    owners = np.concatenate([np.arange(config.num_patients), extra])
    rng.shuffle(owners)
    return [
        StudyRecord(index, f"ACC{study:06d}", int(owner), f"MRN{patients[owner]:07d}")
        for index, (study, owner) in enumerate(zip(studies, owners, strict=True))
    ]


def _draw_lesion(
    template: Template, occupied: np.ndarray, texture: np.ndarray, rng: np.random.Generator
) -> tuple[Lesion, PlacedLesion] | None:
    """One lesion at a random named location (retrying other locations when the region is full)."""
    for _ in range(5):
        location = str(rng.choice(LOCATIONS))
        largest = round(rng.uniform(0.5, 2.0 if location == "brainstem" else 3.0), 1)
        others = [max(0.3, round(largest * rng.uniform(0.65, 1.0), 1)) for _ in range(2)]
        diameters = (largest, others[0]) if rng.random() < 0.5 else (others[0], largest)
        diameters_cm = (*diameters, others[1])
        oedema = rng.random() < (0.65 if largest >= 1.0 else 0.2)
        enhancing = bool(rng.random() < 0.6)
        margin = rng.uniform(6.0, 15.0) if oedema else 0.0
        placed = place_lesion(
            template, location, np.array(diameters_cm) * 5.0, occupied, texture, rng, margin
        )
        if placed is not None:
            return Lesion(location, diameters_cm, enhancing, bool(oedema), placed.centre_mm), placed
    return None


def _draw_cavity(
    template: Template,
    lesions: list[Lesion],
    occupied: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
) -> tuple[tuple[str, float], PlacedLesion] | None:
    """A resection cavity in the lobe of the first lobar lesion (else another lobe where it fits)."""
    diameter = round(rng.uniform(0.8, 1.5), 1)
    preferred = [lesion.location for lesion in lesions if lesion.location in _LOBES][:1]
    for location in preferred + [str(loc) for loc in rng.permutation(_LOBES)]:
        placed = place_lesion(template, location, np.full(3, diameter * 5.0), occupied, texture, rng)
        if placed is not None:
            return (location, diameter), placed
    return None


# BraTS 2023's labels (NCR 1, ED 2, ET 3): a segmentation spec's regions are sets of them, e.g. whole tumour
# {1, 2, 3}, tumour core {1, 3}, enhancing tumour {3}.
MASK_LABELS = {"core": 1, "oedema": 2, "enhancing": 3}


@dataclass(frozen=True)
class _Pathology:
    """What the plan stream drew for one study, placed in template space."""

    drawn: list[tuple[Lesion, PlacedLesion]]
    cavity: tuple[tuple[str, float], PlacedLesion] | None
    white_matter_disease: bool
    shift_mm: int
    texture: np.ndarray


def _draw_pathology(config: PhantomConfig, template: Template, index: int) -> _Pathology:
    """The study's lesions, cavity and flags (the plan stream)."""
    rng = _rng(config.seed, _PLAN, index)
    texture = smooth_field(rng, template.shape, channels=1, control=max(4, template.shape[0] // 4))[0]
    drawn: list[tuple[Lesion, PlacedLesion]] = []
    occupied = np.zeros(template.shape, dtype=bool)
    if rng.random() < config.lesion_probability and config.max_lesions > 0:
        for _ in range(int(rng.integers(1, config.max_lesions + 1))):
            result = _draw_lesion(template, occupied, texture, rng)
            if result is not None:
                drawn.append(result)
                occupied |= ndimage.binary_dilation(result[1].core)
    lesions = [lesion for lesion, _ in drawn]
    cavity = None
    if lesions and rng.random() < 0.10:
        cavity = _draw_cavity(template, lesions, occupied, texture, rng)
    wmd = bool(lesions) and bool(rng.random() < 0.15)
    return _Pathology(drawn, cavity, wmd, int(rng.integers(3, 9)), texture)


def _label_maps(
    template: Template, drawn: list[tuple[Lesion, PlacedLesion]]
) -> tuple[np.ndarray, np.ndarray]:
    """Template-space BraTS mask and per-lesion core ids. Labels follow what ``paint`` draws, so every
    region is visible in the images: an enhancing core is enhancing tumour (bright on T1c) except its
    necrotic centre (dark), a non-enhancing core is non-enhancing tumour core; oedema surrounds them. The
    enhancing label is present exactly when the ``enhancing_lesion`` finding is true."""
    mask = np.zeros(template.shape, dtype=np.uint8)
    labels = np.zeros(template.shape, dtype=np.uint8)
    for number, (_, placed) in enumerate(drawn, start=1):
        mask[placed.oedema & (mask == 0)] = MASK_LABELS["oedema"]
        labels[placed.core] = number
    for number, (lesion, placed) in enumerate(drawn, start=1):
        core = labels == number
        mask[core] = MASK_LABELS["enhancing" if lesion.enhancing else "core"]
        if lesion.necrotic:
            mask[core & necrotic_centre(placed)] = MASK_LABELS["core"]
    return mask, labels


def _render(
    config: PhantomConfig, template: Template, record: StudyRecord, plan: _Pathology, mask: np.ndarray
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Subject-space int16 images and uint8 mask: paint in template space, warp both with the same
    coordinates (mask nearest-neighbour), then add each sequence's own bias field, noise and gain."""
    image_rng = _rng(config.seed, _IMAGE, record.index)
    shifter = midline_shift_lesion([lesion for lesion, _ in plan.drawn])
    mass_effect = None if shifter is None else (*shifter.centre_mm, float(plan.shift_mm))
    anatomy_rng = _rng(config.seed, _ANATOMY, record.patient_index)
    coords = warp_coordinates(template, anatomy_rng, image_rng, mass_effect)
    hyper = white_matter_hyperintensities(template, image_rng) if plan.white_matter_disease else None
    lesions = [(placed, lesion.enhancing, lesion.necrotic) for lesion, placed in plan.drawn]
    t1c, flair = paint(template, lesions, plan.cavity and plan.cavity[1], hyper, plan.texture)
    clean = {"t1c": t1c, "flair": flair}
    images = {
        seq: scanner_signal(
            warp(clean[seq], coords, order=1),
            _rng(config.seed, _SEQUENCE_STREAM + SUPPORTED_SEQUENCES.index(seq), record.index),
        )
        for seq in config.sequences
    }
    return images, warp(mask, coords, order=0)


def _text(config: PhantomConfig, plan: _Pathology, index: int) -> tuple[str, dict[str, Any]]:
    """The report and findings of a drawn study (the text stream)."""
    lesions = [lesion for lesion, _ in plan.drawn]
    cavity = None if plan.cavity is None else plan.cavity[0]
    report = write_report(
        lesions,
        white_matter_disease=plan.white_matter_disease,
        cavity=cavity,
        shift_mm=plan.shift_mm,
        rng=_rng(config.seed, _TEXT, index),
    )
    return report, study_findings(lesions, plan.white_matter_disease, cavity is not None, cavity=cavity)


def draw_report(config: PhantomConfig, index: int) -> tuple[str, dict[str, Any]]:
    """Study ``index``'s report and findings exactly as ``simulate_study`` draws them, without rendering
    its images (which the text never reads): cheap corpora of phantom reports for the text's tests."""
    template = load_template(tuple(config.shape), config.resolved_voxel_size)
    return _text(config, _draw_pathology(config, template, index), index)


def simulate_study(config: PhantomConfig, record: StudyRecord) -> SimulatedStudy:
    """Render one study (images, mask, findings, report); depends only on the config and the record."""
    template = load_template(tuple(config.shape), config.resolved_voxel_size)
    plan = _draw_pathology(config, template, record.index)
    mask, labels = _label_maps(template, plan.drawn)
    images, subject_mask = _render(config, template, record, plan, mask)
    report, findings = _text(config, plan, record.index)
    lesions = [lesion for lesion, _ in plan.drawn]
    return SimulatedStudy(record, lesions, findings, report, images, subject_mask, labels)


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _corrupt(path: Path, rng: np.random.Generator, truncate: bool) -> None:
    """Make a written NIfTI unreadable the two ways exports break: cut-off gzip, or not gzip at all."""
    if truncate:
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.write_bytes(b"corrupt export " + rng.bytes(4096))


def _write_study(
    study: SimulatedStudy, config: PhantomConfig, out: Path, affine: np.ndarray
) -> dict[str, str]:
    """Write one study's images (NIfTI files, or a DICOM folder) and mask; return its manifest row (paths
    relative to ``out``)."""
    sid, index = study.record.study_id, study.record.index
    row = {"patient_id": study.record.patient_id, "study_id": sid}
    corrupt_seq = "t1c" if "t1c" in config.sequences else config.sequences[0]
    if config.export == "dicom":
        row["dicom"] = f"dicom/{sid}"
        write_dicom_study(out / row["dicom"], study.images, affine, seed=index,
                          corrupt=index < config.corrupt_studies)  # fmt: skip
    for seq, array in study.images.items() if config.export == "nifti" else ():
        relative = f"images/{sid}_{seq}.nii.gz"
        _save_nifti(array, affine, out / relative)
        if seq == corrupt_seq and index < config.corrupt_studies:
            _corrupt(out / relative, _rng(config.seed, _CORRUPT, index), truncate=index % 2 == 1)
        row[seq] = relative
    row["mask"] = f"masks/{sid}_mask.nii.gz"
    _save_nifti(study.mask, affine, out / row["mask"])
    row["report"] = study.report
    row["findings"] = json.dumps(study.findings, separators=(",", ":"))
    return row


def _csv_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return ";".join(value) if isinstance(value, list) else str(value)


def _lesion_rows(study: SimulatedStudy) -> list[dict[str, Any]]:
    return [
        {
            "study_id": study.record.study_id,
            "lesion": number,
            "location": lesion.location,
            **{f"diameter_{axis}_cm": f"{d:.1f}" for axis, d in zip("xyz", lesion.diameters_cm, strict=True)},
            "enhancing": _csv_value(lesion.enhancing),
            "oedema": _csv_value(lesion.oedema),
            **{f"centre_{axis}_mm": f"{c:.1f}" for axis, c in zip("xyz", lesion.centre_mm, strict=True)},
        }
        for number, lesion in enumerate(study.lesions, start=1)
    ]


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """RFC-4180 CSV via the csv module, so multi-line reports stay one quoted field."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate_phantom(config: PhantomConfig, out_dir: str | os.PathLike) -> PhantomSummary:
    """Generate the whole dataset into ``out_dir`` (created if needed) and return a summary."""
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    voxel_size = config.resolved_voxel_size
    affine = load_template(tuple(config.shape), voxel_size).affine
    manifest, reports, findings, lesions = [], [], [], []
    for record in assign_studies(config):
        study = simulate_study(config, record)
        manifest.append(_write_study(study, config, out, affine))
        reports.append({"study_id": record.study_id, "report": study.report})
        findings.append(
            {"study_id": record.study_id, **{k: _csv_value(study.findings[k]) for k in FINDING_COLUMNS}}
        )
        lesions += _lesion_rows(study)
    _write_csv(out / "reports.csv", ["study_id", "report"], reports)
    _write_csv(out / "findings.csv", ["study_id", *FINDING_COLUMNS], findings)
    lesion_columns = ["study_id", "lesion", "location"]
    lesion_columns += (
        [f"diameter_{a}_cm" for a in "xyz"] + ["enhancing", "oedema"] + [f"centre_{a}_mm" for a in "xyz"]
    )
    _write_csv(out / "lesions.csv", lesion_columns, lesions)
    manifest_path = out / "manifest.csv"
    images = config.sequences if config.export == "nifti" else ("dicom",)
    columns = ["patient_id", "study_id", *images, "mask", "report", "findings"]
    _write_csv(manifest_path, columns, manifest)
    summary = PhantomSummary(
        out_dir=out,
        manifest=manifest_path,
        num_studies=config.num_studies,
        num_patients=config.num_patients,
        num_lesions=len(lesions),
        num_corrupt=config.corrupt_studies,
        voxel_size=voxel_size,
        seconds=time.perf_counter() - start,
    )
    logger.info(
        "phantom: %d studies, %d patients, %d lesions, %d corrupt in %.1f s",
        summary.num_studies,
        summary.num_patients,
        summary.num_lesions,
        summary.num_corrupt,
        summary.seconds,
    )
    return summary
