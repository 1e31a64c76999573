"""Stacking one DICOM series' frames into a 3D RAS+ volume, from the geometry in its headers alone.

Order. Frames are ordered by their position (ImagePositionPatient) projected on the slice normal, the
cross product of the row and column direction cosines (ImageOrientationPatient), as robust converters do.
File names and InstanceNumber are export artefacts: PACS exports name files by arrival or by SOP UID, and
InstanceNumber runs against the slice direction on some scanners and restarts per stack on others.

Geometry. Voxel (i, j, k) = (column, row, slice) lies at P0 + i * dc * row_cosine + j * dr * col_cosine +
k * step, where PixelSpacing = (dr, dc) and step is the mean position step of the sorted stack; DICOM's
patient space is LPS, nibabel's RAS+, so the affine's x and y rows are negated. The data array is indexed
(column, row, slice), i.e. each frame transposed. Enhanced multi-frame images take their per-frame
geometry and rescale from PerFrameFunctionalGroupsSequence, falling back on SharedFunctionalGroupsSequence.

What becomes a reject, and why: frames whose orientation, pixel spacing or matrix differ
(``dicom_mixed_geometry``: a 3-plane scout, or two stacks under one UID); several frames at one position
(``dicom_multi_volume``: echoes, b-values, time points; picking one would be a guess); a position step far
from the median (``dicom_gap``: missing files, the volume would be stretched); pixel data that cannot be
decoded with what is installed (``dicom_unreadable``, naming the transfer syntax).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder

from brainvlp.data.errors import RejectError
from brainvlp.data.nifti_load import MAX_EXTENT_MM, MAX_VOXEL_MM, MIN_VOXEL_MM

# Direction cosines equal within this (about 0.06 degrees): scanners write 6 to 10 decimals.
ORIENTATION_TOL = 1e-3
# Pixel spacings equal within this share.
SPACING_TOL = 1e-3
# A position step over GAP_RATIO x the median step (or under median / GAP_RATIO) means missing slices or
# an interleaved foreign stack: at 1.5 one missing slice of an otherwise regular stack is always caught.
GAP_RATIO = 1.5
# Frames closer than this along the normal (mm) are at the same position.
SAME_POSITION_MM = 0.01
# Positions may stray from one straight stack by this share of the smallest voxel size (DS rounding is
# ~1e-4 mm); beyond it a single step vector would misplace slices.
COLLINEAR_TOL = 0.2
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# What pydicom and its decoder plugins raise on pixel data they cannot turn into an array.
DECODE_ERRORS = (
    RuntimeError,
    ValueError,
    NotImplementedError,
    AttributeError,
    KeyError,
    TypeError,
    IndexError,
    EOFError,
    OSError,
    struct.error,
)


@dataclass(frozen=True)
class Frame:
    """One 2D image of a series: which file and frame it is, where it lies, how its values scale."""

    file: int
    frame: int
    position: np.ndarray  # (3,) LPS mm, centre of the first transmitted pixel
    orientation: np.ndarray  # (6,) unit row cosine, then unit column cosine
    spacing: np.ndarray  # (2,) mm between rows, between columns (DICOM PixelSpacing order)
    shape: tuple[int, int]  # (rows, columns)
    slope: float
    intercept: float


def functional_value(groups: Sequence[Dataset | None], sequence: str, keyword: str) -> Any:
    """``keyword`` from the first item of ``sequence`` in the first of ``groups`` that has it (a frame's
    own functional group before the shared one), or None."""
    for group in groups:
        if group is None or not group.get(sequence):
            continue
        item = group[sequence].value[0]
        if item.get(keyword) not in (None, ""):
            return item.get(keyword)
    return None


def _floats(value: Any, count: int) -> np.ndarray | None:
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return numbers if numbers.shape == (count,) and np.isfinite(numbers).all() else None


def _scale(value: Any, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _frame(file: int, frame: int, ds: Dataset, values: dict[str, Any], where: str) -> Frame:
    position = _floats(values["position"], 3)
    orientation = _floats(values["orientation"], 6)
    spacing = _floats(values["spacing"], 2)
    for name, value in (("position", position), ("orientation", orientation), ("pixel spacing", spacing)):
        if value is None:
            raise RejectError("dicom_unreadable", f"{where}: no usable {name}; the frame cannot be placed")
    row, col = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if min(norms) < 0.5 or abs(row @ col) > 0.01 * norms[0] * norms[1]:
        raise RejectError("singular_affine", f"{where}: row and column directions are not orthogonal")
    return Frame(
        file=file,
        frame=frame,
        position=position,
        orientation=np.concatenate([row / norms[0], col / norms[1]]),
        spacing=spacing,
        shape=(int(ds.Rows), int(ds.Columns)),
        slope=_scale(values["slope"], 1.0),
        intercept=_scale(values["intercept"], 0.0),
    )


def frames_of(ds: Dataset, file: int, where: str) -> list[Frame]:
    """The frames of one file: one for a classic image, NumberOfFrames for an enhanced multi-frame one."""
    top = {
        "position": ds.get("ImagePositionPatient"),
        "orientation": ds.get("ImageOrientationPatient"),
        "spacing": ds.get("PixelSpacing"),
        "slope": ds.get("RescaleSlope"),
        "intercept": ds.get("RescaleIntercept"),
    }
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        if int(ds.get("NumberOfFrames") or 1) > 1:
            raise RejectError("dicom_unreadable", f"{where}: a multi-frame file without per-frame positions")
        return [_frame(file, 0, ds, top, where)]
    if len(per_frame) != int(ds.get("NumberOfFrames") or 0):
        raise RejectError("dicom_unreadable", f"{where}: NumberOfFrames disagrees with its functional groups")
    shared = (
        ds["SharedFunctionalGroupsSequence"].value[0] if ds.get("SharedFunctionalGroupsSequence") else None
    )
    frames = []
    for index, own in enumerate(per_frame):
        groups = (own, shared)
        values = {
            "position": functional_value(groups, "PlanePositionSequence", "ImagePositionPatient"),
            "orientation": functional_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"),
            "spacing": functional_value(groups, "PixelMeasuresSequence", "PixelSpacing"),
            "slope": functional_value(groups, "PixelValueTransformationSequence", "RescaleSlope"),
            "intercept": functional_value(groups, "PixelValueTransformationSequence", "RescaleIntercept"),
        }
        # A functional group may leave a value to the top level (rescale in older enhanced exports).
        values = {key: top[key] if value is None else value for key, value in values.items()}
        frames.append(_frame(file, index, ds, values, f"{where}, frame {index + 1}"))
    return frames


def _check_uniform(frames: list[Frame], label: str) -> None:
    """Reject a series whose frames do not share one orientation, pixel spacing and matrix."""
    first = frames[0]
    for frame in frames[1:]:
        if np.abs(frame.orientation - first.orientation).max() > ORIENTATION_TOL:
            raise RejectError("dicom_mixed_geometry", f"{label}: frames have different orientations")
        if np.abs(frame.spacing - first.spacing).max() > SPACING_TOL * first.spacing.max():
            raise RejectError("dicom_mixed_geometry", f"{label}: frames have different pixel spacings")
        if frame.shape != first.shape:
            raise RejectError(
                "dicom_mixed_geometry", f"{label}: frames of {first.shape} and {frame.shape} rows x columns"
            )


def _order(frames: list[Frame], label: str) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices sorted along the slice normal, and the mean step vector between slices (LPS mm)."""
    orientation = frames[0].orientation
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.stack([f.position for f in frames])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    distinct = 1 + int(np.count_nonzero(steps > SAME_POSITION_MM))
    if distinct < len(frames):
        raise RejectError(
            "dicom_multi_volume",
            f"{label}: {len(frames)} frames at {distinct} positions "
            "(several echoes, b-values or time points)",
        )
    median = float(np.median(steps))
    worst = int(np.argmax(np.maximum(steps / median, median / steps)))
    if not median / GAP_RATIO <= steps[worst] <= median * GAP_RATIO:
        raise RejectError(
            "dicom_gap",
            f"{label}: slice step {steps[worst]:.2f} mm between slices {worst + 1} and {worst + 2} of "
            f"{len(frames)}, against a median of {median:.2f} mm (missing slices?)",
        )
    step = (positions[order[-1]] - positions[order[0]]) / (len(frames) - 1)
    expected = positions[order[0]] + np.arange(len(frames))[:, None] * step
    stray = float(np.linalg.norm(positions[order] - expected, axis=1).max())
    if stray > COLLINEAR_TOL * min(frames[0].spacing.min(), median):
        raise RejectError(
            "dicom_mixed_geometry", f"{label}: slice positions stray {stray:.2f} mm from one straight stack"
        )
    return order, step


def _affine(first: Frame, step: np.ndarray, count: int, label: str) -> np.ndarray:
    """RAS+ voxel-to-world affine of the sorted stack; rejects voxel sizes no brain scan has."""
    lps = np.eye(4)
    lps[:3, 0] = first.orientation[:3] * first.spacing[1]  # along a row: the column index, column spacing
    lps[:3, 1] = first.orientation[3:] * first.spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = first.position
    sizes = np.linalg.norm(lps[:3, :3], axis=0)
    extent = sizes * (np.array([first.shape[1], first.shape[0], count]) - 1)
    if sizes.min() < MIN_VOXEL_MM or sizes.max() > MAX_VOXEL_MM or extent.max() > MAX_EXTENT_MM:
        raise RejectError(
            "degenerate_voxel_size",
            f"{label}: voxel size {np.round(sizes, 3).tolist()} mm, "
            f"field of view {np.round(extent).tolist()} mm",
        )
    return LPS_TO_RAS @ lps


def _pixels(ds: Dataset, where: str) -> np.ndarray:
    """The file's frames as (frames, rows, columns) stored values; rejects what cannot be decoded here."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None:
        raise RejectError("dicom_unreadable", f"{where}: no transfer syntax in the file meta information")
    try:
        available = get_decoder(syntax).is_available
    except NotImplementedError:
        available = None
    if not available:
        missing = "no pixel data decoder exists" if available is None else "no installed plugin decodes it"
        raise RejectError(
            "dicom_unreadable",
            f"{where}: transfer syntax {syntax.name} ({syntax}): {missing} (pylibjpeg, pyjpegls or gdcm)",
        )
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise RejectError("unsupported_datatype", f"{where}: colour pixels, not a grey-level MR image")
    try:
        pixels = ds.pixel_array
    except DECODE_ERRORS as exc:
        raise RejectError(
            "dicom_unreadable", f"{where}: {syntax.name} pixel data cannot be decoded ({type(exc).__name__})"
        ) from None
    return pixels.reshape(-1, *pixels.shape[-2:])


def stack_series(datasets: list[Dataset | None], label: str) -> nib.Nifti1Image:
    """One float32 RAS+ image (rescale applied) from a series' datasets, read with their pixel data.

    The list's items are released as their pixels are copied, so that peak memory is the stored pixels
    plus one float32 volume.
    """
    count = len(datasets)
    frames = [
        frame
        for index, ds in enumerate(datasets)
        for frame in frames_of(ds, index, f"{label}: file {index + 1} of {count}")
    ]
    if len(frames) < 2:
        raise RejectError("dicom_single_slice", f"{label}: one frame, not a volume")
    _check_uniform(frames, label)
    order, step = _order(frames, label)
    affine = _affine(frames[order[0]], step, len(frames), label)
    rows, columns = frames[0].shape
    volume = np.empty((columns, rows, len(frames)), dtype=np.float32)
    slots = np.empty(len(frames), dtype=np.int64)
    slots[order] = np.arange(len(frames))
    by_file: dict[int, list[tuple[Frame, int]]] = {}
    for frame, slot in zip(frames, slots, strict=True):
        by_file.setdefault(frame.file, []).append((frame, int(slot)))
    for index in range(count):
        pixels = _pixels(datasets[index], f"{label}: file {index + 1} of {count}")
        datasets[index] = None
        for frame, slot in by_file[index]:
            if frame.frame >= len(pixels) or pixels.shape[1:] != (rows, columns):
                raise RejectError(
                    "dicom_unreadable", f"{label}: file {index + 1} holds fewer frames than declared"
                )
            out = volume[:, :, slot]
            out[...] = pixels[frame.frame].T
            if frame.slope != 1.0:
                out *= np.float32(frame.slope)
            if frame.intercept != 0.0:
                out += np.float32(frame.intercept)
    return nib.Nifti1Image(volume, affine)
