"""Reading and validating one NIfTI volume, deciding from its header before reading its voxels.

The header states the voxel count and type, so a study whose volume would not fit the memory budget (a
258 KB ``.nii.gz`` claiming 10000^3 voxels) is rejected after reading 540 bytes of it; a gzip stream is
then decompressed only up to the bytes the header accounts for, so a compression bomb costs no more than
an honest file. What is read must also be what ingest can use: a real 3D grid, one placement in world
space that both header descriptions agree on, and magnitude intensities (not a phase map, not CT).
"""

from __future__ import annotations

import io
import os
import zlib

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from brainvlp.data import storage
from brainvlp.data.errors import RejectError
from brainvlp.data.limits import MIB, IngestLimits

# Voxel sizes outside this range (mm) are header corruption, not an acquisition choice.
MIN_VOXEL_MM = 0.01
MAX_VOXEL_MM = 20.0
# A larger field of view along any axis means a corrupt header (a head is < 300 mm) and would make the
# resampling grid explode in memory.
MAX_EXTENT_MM = 500.0
# A magnitude image has (almost) no negative voxels; phase maps and CT are half or mostly negative.
# Reconstruction noise around zero stays far below both bounds.
NEGATIVE_SHARE = 0.05
NEGATIVE_LEVEL = 0.01  # of the largest absolute intensity
SAMPLE_VOXELS = 100_000
# Failures pyarrow/gzip/nibabel/numpy raise on bytes that are not a readable NIfTI volume.
READ_ERRORS = (OSError, EOFError, ValueError, TypeError, zlib.error, ImageFileError, HeaderDataError)
_HEADER_BYTES = 540  # a NIfTI-2 header; NIfTI-1's 348 fit inside
_GZIP_MAGIC = b"\x1f\x8b"


def load_nifti(
    path: str,
    *,
    label: str | None = None,
    allow_empty: bool = False,
    limits: IngestLimits | None = None,
) -> nib.Nifti1Image:
    """Load and validate one 3D volume from a local path or a filesystem URI; return it with float32
    voxels in memory.

    ``label`` names the file in reject details (default: its base name); pass a sequence name when paths
    may carry patient ids. ``allow_empty`` marks a label mask: a constant mask is legitimate, and labels
    are not intensities. Raises RejectError for every kind of bad input so that ingest can record it.
    """
    name = label or os.path.basename(path)
    limits = limits or IngestLimits()
    try:
        data = _read_within_budget(path, name, limits)
        img = _nifti_from_bytes(data, name)
    except READ_ERRORS as exc:
        # ``from None``: pyarrow's and nibabel's messages embed the full path, which may hold patient ids.
        raise RejectError("unreadable_file", f"{name}: {type(exc).__name__}") from None
    shape = spatial_shape(img.shape, name)
    _check_forms(img.header, name)
    _check_geometry(img, _raw_pixdim(img, data), shape, name)
    try:
        voxels = voxels_float32(img).reshape(shape)
    except READ_ERRORS as exc:
        raise RejectError("unreadable_file", f"{name}: {type(exc).__name__} reading voxels") from None
    check_voxels(voxels, name, allow_empty)
    return nib.Nifti1Image(voxels, img.affine)


def check_voxels(voxels: np.ndarray, name: str, allow_empty: bool = False) -> None:
    """The content checks every image passes, whatever its file format (NIfTI, a DICOM series)."""
    lo, hi = voxels.min(), voxels.max()  # min/max propagate NaN/Inf without a full-size boolean temporary
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise RejectError("nonfinite_voxels", f"{name}: NaN or Inf voxels")
    if lo == hi and not allow_empty:
        raise RejectError("empty_volume", f"{name}: every voxel equals {float(lo):g}")
    if not allow_empty:
        _check_magnitude(voxels, max(abs(float(lo)), abs(float(hi))), name)


def _read_within_budget(path: str, name: str, limits: IngestLimits) -> bytes:
    """The file's bytes up to the end of the voxel data the header describes, decompressed when gzip;
    rejects a file or a volume over its budget before reading (or inflating) the rest."""
    fs, inner = storage.filesystem(path)
    max_file = int(limits.max_file_mb * MIB)
    with fs.open_input_stream(inner, compression=None) as stream:
        raw = stream.read(max_file + 1)
    if len(raw) > max_file:
        raise RejectError("file_too_large", f"{name}: over the {limits.max_file_mb:g} MiB file budget")
    if raw[:2] != _GZIP_MAGIC:
        return raw[: _needed_bytes(raw[:_HEADER_BYTES], name, limits)]
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    head = inflate.decompress(raw, _HEADER_BYTES)
    while len(head) < _HEADER_BYTES and inflate.unconsumed_tail:
        head += inflate.decompress(inflate.unconsumed_tail, _HEADER_BYTES - len(head))
    needed = _needed_bytes(head, name, limits)
    chunks, have = [head], len(head)
    while have < needed and inflate.unconsumed_tail:
        chunk = inflate.decompress(inflate.unconsumed_tail, needed - have)
        if not chunk:
            break
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)[:needed]


def _needed_bytes(head: bytes, name: str, limits: IngestLimits) -> int:
    """Bytes up to the end of the voxel data, from the header; rejects shapes, types and sizes that
    cannot be ingested before any voxel is read."""
    for header_class in (nib.Nifti1Header, nib.Nifti2Header):
        if len(head) >= header_class.sizeof_hdr and header_class.may_contain_header(head):
            header = header_class.from_fileobj(io.BytesIO(head), check=False)
            break
    else:
        raise RejectError("unreadable_file", f"{name}: not a NIfTI-1/2 file (.nii or .nii.gz)")
    shape = spatial_shape(header.get_data_shape(), name)
    dtype = header.get_data_dtype()
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise RejectError("unsupported_datatype", f"{name}: voxel type {dtype} is not a real-valued scalar")
    voxels = int(np.prod(shape, dtype=np.float64))
    if voxels * 4 > limits.max_image_mb * MIB:
        raise RejectError(
            "image_too_large",
            f"{name}: the header's {shape} voxels need {voxels * 4 / MIB:.0f} MiB as float32, over the "
            f"{limits.max_image_mb:g} MiB budget",
        )
    return int(header.get_data_offset()) + voxels * dtype.itemsize


def _nifti_from_bytes(data: bytes, name: str) -> nib.Nifti1Image:
    """Parse an uncompressed single-file NIfTI-1 or NIfTI-2 image held in memory."""
    for image_class in (nib.Nifti1Image, nib.Nifti2Image):
        header = image_class.header_class
        if header.may_contain_header(data[: header.sizeof_hdr]):
            return image_class.from_bytes(data)
    raise RejectError("unreadable_file", f"{name}: not a NIfTI-1/2 file (.nii or .nii.gz)")


def spatial_shape(shape: tuple[int, ...], name: str) -> tuple[int, int, int]:
    """Drop trailing singleton axes (a 4D file holding one volume); what is left must be a real 3D grid."""
    spatial = tuple(int(s) for s in shape)
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial = spatial[:-1]
    if len(spatial) != 3 or min(spatial) < 2:
        raise RejectError("not_3d", f"{name}: shape {tuple(shape)}")
    return spatial


def _check_forms(header: nib.Nifti1Header, name: str) -> None:
    """Reject a header whose two geometry descriptions (sform and qform, both declared valid) put the
    voxel axes on different sides: nibabel silently prefers the sform, and a left-right flip from a
    converter bug would put every lesion on the wrong side of the brain."""
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    if not (scode and qcode) or sform is None or qform is None:
        return
    try:
        codes = nib.aff2axcodes(sform), nib.aff2axcodes(qform)
    except (ValueError, np.linalg.LinAlgError):
        return  # a singular form is the singular-affine rule's to reject
    if codes[0] != codes[1]:
        raise RejectError(
            "conflicting_geometry",
            f"{name}: sform ({''.join(map(str, codes[0]))}) and qform ({''.join(map(str, codes[1]))}) "
            "disagree about the axes' directions",
        )


def _check_geometry(img: nib.Nifti1Image, zooms: np.ndarray, shape: tuple[int, int, int], name: str) -> None:
    """Reject headers whose voxel sizes (``zooms``, as stored) or affine cannot place the volume in world
    space."""
    if not _plausible_voxels(zooms):
        raise RejectError("degenerate_voxel_size", f"{name}: voxel size {zooms.tolist()} mm")
    affine = np.asarray(img.affine, dtype=np.float64)
    columns = np.linalg.norm(affine[:3, :3], axis=0) if np.isfinite(affine).all() else np.zeros(3)
    # Relative determinant: ~0 when the axes are (nearly) collinear, whatever the voxel size.
    if columns.min() == 0 or abs(np.linalg.det(affine[:3, :3])) < 1e-6 * columns.prod():
        raise RejectError("singular_affine", f"{name}: affine cannot map voxels to world space")
    if not _plausible_voxels(columns):
        raise RejectError("degenerate_voxel_size", f"{name}: affine voxel size {columns.tolist()} mm")
    extent = columns * (np.asarray(shape) - 1)
    if extent.max() > MAX_EXTENT_MM:
        raise RejectError("degenerate_voxel_size", f"{name}: field of view {extent.tolist()} mm")


def _check_magnitude(voxels: np.ndarray, peak: float, name: str) -> None:
    """Reject intensities that cannot be a magnitude MR image (see NEGATIVE_SHARE), from a strided sample."""
    sample = voxels.reshape(-1)[:: max(voxels.size // SAMPLE_VOXELS, 1)]
    share = float(np.mean(sample < -NEGATIVE_LEVEL * peak))
    if share > NEGATIVE_SHARE:
        raise RejectError(
            "not_magnitude_image",
            f"{name}: {share:.0%} of voxels are negative (a phase map or CT?); MRI magnitudes are >= 0",
        )


def _raw_pixdim(img: nib.Nifti1Image, data: bytes) -> np.ndarray:
    """Spatial pixdim as stored: nibabel's loader silently turns zero sizes into 1 mm and negatives into
    their absolute value, which would hide a corrupt header, so re-read the header without that fix."""
    raw = type(img.header).from_fileobj(io.BytesIO(data), check=False)
    return np.asarray(raw["pixdim"][1:4], dtype=np.float64)


def _plausible_voxels(sizes: np.ndarray) -> bool:
    return bool(np.isfinite(sizes).all() and sizes.min() >= MIN_VOXEL_MM and sizes.max() <= MAX_VOXEL_MM)


def voxels_float32(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Scaled voxels as float32 with one full-size allocation: nibabel's own ``get_fdata`` scales via
    float64, which costs ~2.5x the memory and ~10x the time on a 512x512x300 int16 volume."""
    if not nib.is_proxy(img.dataobj):
        return np.asarray(img.dataobj, dtype=np.float32)
    data = np.asarray(img.dataobj.get_unscaled()).astype(np.float32)
    slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    if slope != 1.0:
        data *= np.float32(slope)
    if inter != 0.0:
        data += np.float32(inter)
    return data
