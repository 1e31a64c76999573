"""Small NIfTI volumes for tests: a phantom head with a bright cube off-centre, and bad files of all kinds."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

# Phantom in RAS voxel order (x, y, z): a dim ellipsoid "head" and a bright cube off-centre (right,
# anterior, superior), so that any flip or transpose shows up.
PHANTOM_SHAPE = (30, 26, 22)
CUBE = (slice(18, 24), slice(15, 20), slice(12, 17))  # x, y, z voxel ranges of the bright cube


def phantom() -> np.ndarray:
    x, y, z = np.ogrid[: PHANTOM_SHAPE[0], : PHANTOM_SHAPE[1], : PHANTOM_SHAPE[2]]
    centre = (np.array(PHANTOM_SHAPE) - 1) / 2
    inside = ((x - centre[0]) / 13) ** 2 + ((y - centre[1]) / 11) ** 2 + ((z - centre[2]) / 9) ** 2 <= 1
    data = np.where(inside, 100.0, 0.0).astype(np.float32)
    data += inside * np.random.default_rng(0).normal(0, 5, PHANTOM_SHAPE).astype(np.float32)
    data[CUBE] = 400.0
    return data


def labels() -> np.ndarray:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[CUBE] = 2
    labels[4:8, 4:8, 4:8] = 1
    return labels


# An ingest small enough for tests: two sequences, tiny volumes and reports, four shards.
SMALL_INGEST = {
    "sequences": ["t1c", "flair"],
    "tokenizer": "builtin:tiny",
    "volume": {"spacing": [2.0, 2.0, 2.0], "shape": [8, 16, 16]},
    "report": {"max_sentences": 20, "max_tokens": 64},
    "splits": {"dev": 0.2, "test": 0.2, "num_folds": 2},
    "min_shards": 4,
}

RAS_AFFINE = np.array([[1.0, 0, 0, -15], [0, 1, 0, -13], [0, 0, 1, -11], [0, 0, 0, 1]])


def save(path: Path, img: nib.Nifti1Image) -> str:
    nib.save(img, str(path))
    return str(path)


def reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same physical image stored with another voxel order (data permuted/flipped, affine to match)."""
    current = nib.orientations.io_orientation(img.affine)
    return img.as_reoriented(nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(codes)))


def with_pixdim(path: Path, pixdim: list[float]) -> str:
    """Patch the stored pixdim bytes: nibabel's writer refuses to write zero or negative voxel sizes."""
    save(path, nib.Nifti1Image(phantom(), RAS_AFFINE))
    header = nib.load(str(path)).header.copy()
    header["pixdim"][1:4] = pixdim
    raw = bytearray(path.read_bytes())
    raw[: len(header.binaryblock)] = header.binaryblock
    path.write_bytes(bytes(raw))
    return str(path)


def reject_cases(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "garbage.nii.gz").write_bytes(b"not a nifti file at all" * 20)
    full = save(tmp / "full.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(Path(full).read_bytes()[: Path(full).stat().st_size // 2])
    nan = phantom()
    nan[3, 3, 3] = np.nan
    singular = np.eye(4)
    singular[:3, :3] = [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    return [
        ("unreadable_file", str(tmp / "does_not_exist.nii.gz")),
        ("unreadable_file", str(tmp / "garbage.nii.gz")),
        ("unreadable_file", str(truncated)),
        ("not_3d", save(tmp / "4d.nii.gz", nib.Nifti1Image(np.stack([phantom()] * 3, -1), RAS_AFFINE))),
        ("not_3d", save(tmp / "slice.nii.gz", nib.Nifti1Image(phantom()[:, :, :1], RAS_AFFINE))),
        ("nonfinite_voxels", save(tmp / "nan.nii.gz", nib.Nifti1Image(nan, RAS_AFFINE))),
        ("degenerate_voxel_size", with_pixdim(tmp / "zero.nii", [0.0, 1, 1])),
        ("degenerate_voxel_size", with_pixdim(tmp / "negative.nii", [1.0, -1, 1])),
        (
            "degenerate_voxel_size",
            save(tmp / "huge.nii.gz", nib.Nifti1Image(phantom(), np.diag([50.0, 1, 1, 1]))),
        ),
        (
            "degenerate_voxel_size",
            save(tmp / "wide.nii.gz", nib.Nifti1Image(phantom(), np.diag([19.0, 1, 1, 1]))),
        ),
        ("singular_affine", save(tmp / "singular.nii.gz", nib.Nifti1Image(phantom(), singular))),
        (
            "empty_volume",
            save(tmp / "zeros.nii.gz", nib.Nifti1Image(np.zeros(PHANTOM_SHAPE, np.float32), RAS_AFFINE)),
        ),
        (
            "empty_volume",
            save(tmp / "flat.nii.gz", nib.Nifti1Image(np.full(PHANTOM_SHAPE, 7, np.int16), RAS_AFFINE)),
        ),
    ]
