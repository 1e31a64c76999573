"""The phantom as a PACS export: each study a folder of single-frame MR DICOM files, several series per
visit, as a hospital's export arrives (README "From a PACS export"; brat section 8).

A study's folder holds one series per sequence, named as scanners name them ("Ax T1 POST" with a contrast
agent for t1c, "AX T2 FLAIR" 2D for flair), and a three-slice "3-plane localizer" that series selection
must never choose. A corrupt study (``corrupt_studies``) loses a middle slice of its t1c series, the gap
ingest rejects as ``dicom_gap``. Files are named by a random number, and InstanceNumbers are shuffled, so
that nothing but the positions orders the slices, as in real exports.

``write_series`` is the one writer: the phantom export and the DICOM tests (which add PHI tags and
compressed transfer syntaxes) use it. Geometry: the volume's RAS affine is turned into DICOM's LPS
patient coordinates; a slice's ImagePositionPatient is its first voxel's centre and its
ImageOrientationPatient the row and column directions (column index first: DICOM's pixel (r, c) is the
volume's (x=c, y=r) at z=k).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS, its own inverse
PHANTOM_UID_ROOT = "1.2.826.0.1.3680043.9.7.0."  # an example root; the phantom is no device's data
SERIES = {  # sequence: (SeriesDescription, SeriesNumber, header)
    "t1c": ("Ax T1 POST", 3, {"MRAcquisitionType": "3D", "ContrastBolusAgent": "GADOLINIUM"}),
    "flair": ("AX T2 FLAIR", 5, {"MRAcquisitionType": "2D"}),
}


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def base_dataset(sop_class: str, series_uid: str, uid_root: str, header: Mapping[str, Any]) -> Any:
    """A dataset with file meta, the study's UIDs, ``header`` and 16-bit signed grey-level pixel tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid(uid_root)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = uid_root + "1", uid_root + "2"
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MR"
    for keyword, value in header.items():
        setattr(ds, keyword, value)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    return ds


def write_series(
    folder: Path,
    stored: np.ndarray,
    affine: np.ndarray,
    *,
    description: str,
    number: int,
    uid_root: str = PHANTOM_UID_ROOT,
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    syntax: str | None = None,
    seed: int = 0,
    skip_slices: tuple[int, ...] = (),
    **header: Any,
) -> list[Path]:
    """Slice int16 ``stored`` (x, y, z) with RAS ``affine`` into single-frame files, one per z but
    ``skip_slices``, under random file names and shuffled InstanceNumbers; the image is stored * slope +
    intercept. ``syntax`` compresses the pixel data (a transfer syntax UID)."""
    from pydicom.uid import MRImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    series_uid = series_uid or generate_uid(uid_root)
    lps = LPS @ affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [_ds(v) for v in np.concatenate([lps[:3, 0] / dc, lps[:3, 1] / dr])]
    header = {
        "SeriesDescription": description,
        "SeriesNumber": number,
        "ImageType": ["ORIGINAL", "PRIMARY"],
        "MRAcquisitionType": "3D",
        "SliceThickness": _ds(np.linalg.norm(lps[:3, 2])),
        **header,
    }
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    numbers = rng.permutation(stored.shape[2]) + 1
    for k in (k for k in range(stored.shape[2]) if k not in skip_slices):
        ds = base_dataset(MRImageStorage, series_uid, uid_root, header)
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = [_ds(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = [_ds(dr), _ds(dc)]
        ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(intercept)
        pixels = np.ascontiguousarray(stored[:, :, k].T.astype(np.int16))
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        if syntax is not None:
            ds.compress(syntax, pixels)
        paths.append(folder / f"{rng.integers(1 << 40):x}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def write_study(
    folder: Path, images: Mapping[str, np.ndarray], affine: np.ndarray, *, seed: int, corrupt: bool
) -> None:
    """One phantom visit as a PACS export: a series per sequence and a localiser (module docstring)."""
    study_root = f"{PHANTOM_UID_ROOT}{seed}."
    for offset, (sequence, volume) in enumerate(images.items()):
        description, number, header = SERIES[sequence]
        gap = (volume.shape[2] // 2,) if corrupt and offset == 0 else ()
        write_series(folder, volume, affine, description=description, number=number, uid_root=study_root,
                     seed=seed * 8 + offset, skip_slices=gap, PatientID="PHANTOM", **header)  # fmt: skip
    first = next(iter(images.values()))
    middle = first.shape[2] // 2
    localizer = {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "PatientID": "PHANTOM"}
    write_series(folder, first[:, :, middle - 1 : middle + 2], affine, description="3-plane localizer",
                 number=1, uid_root=study_root, seed=seed * 8 + 7, **localizer)  # fmt: skip
