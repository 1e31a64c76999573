"""Load, validate and preprocess NIfTI brain volumes into fixed-shape int16 arrays (METHODS 1.1).

Pipeline per sequence: validate -> resample onto a world-aligned RAS grid at ``spacing`` (trilinear for
images, nearest for masks) -> intensity normalisation -> ``resize`` or ``crop_pad`` to ``shape`` -> int16.

Axis convention. The output grid is axis-aligned with RAS+ world space, i.e. the orientation that
``nibabel.as_closest_canonical`` gives, with exact rather than closest alignment: one resampling through
the full voxel-to-world affine both reorients and removes any obliquity, so an explicit canonical
reorientation beforehand would change nothing. A canonical RAS array is indexed (x: L->R, y: P->A,
z: I->S); outputs are (D, H, W) = (z, y, x), the same as ``canonical.transpose(2, 1, 0)``: D runs
inferior->superior (axial slices), H posterior->anterior, W left->right. Every storage orientation (RAS,
LPS, LIA, ...) of the same physical image therefore yields the same array. ``spacing`` and
``StudyVolume.spacing`` are in (D, H, W) order too.

Reading and validating a file (budgets from its header, geometry, intensities) is ``nifti_load.py``; voxels
are float32 from the moment they leave the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Literal, get_args

import nibabel as nib
import numpy as np
from nibabel.spaces import vox2out_vox

from brainvlp.data.errors import RejectError
from brainvlp.data.limits import IngestLimits
from brainvlp.data.nifti_load import check_voxels, load_nifti, voxels_float32
from brainvlp.data.resample import Grid, resample
from brainvlp.spec import PositiveFloat, PositiveInt, Range

Fit = Literal["resize", "crop_pad"]
Intensity = Literal["brat", "znorm", "selip"]

# Label values must be integers up to float round-off.
MASK_ROUNDING = 0.01
# At least this share of a mask's labelled voxels must lie in the image's foreground after resampling;
# a lower share means the mask belongs to another scan or another geometry.
MASK_OVERLAP = 0.5
# SeLIP truncates at the 99.9th percentile of the whole image.
SELIP_PERCENTILE = 99.9
# Percentiles are bracketed from a strided sample of about this many voxels, at this many percentile points
# below the target: the sample quantile's standard error there is ~0.04 points, so the bracket holds.
PERCENTILE_SAMPLE = 100_000
PERCENTILE_MARGIN = 0.5


@dataclass
class VolumeConfig:
    """How one sequence becomes a fixed-shape int16 array. ``spacing`` is in (D, H, W) order, in mm."""

    spacing: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (1.0, 1.0, 1.0)
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (32, 256, 256)
    fit: Fit = "resize"
    intensity: Intensity = "brat"
    percentile: Annotated[float, Range(gt=0, le=100)] = 99.0  # used by "brat" only
    scale_max: Annotated[int, Range(ge=1, le=32767)] = 800  # stored as int16

    def __post_init__(self) -> None:
        # Specs arrive from YAML as lists; store tuples so configs stay hashable and comparable.
        self.spacing = tuple(float(s) for s in self.spacing)
        self.shape = tuple(int(s) for s in self.shape)
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive sizes in mm, got {self.spacing}")
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be three positive sizes, got {self.shape}")
        if self.fit not in get_args(Fit):
            raise ValueError(f"fit must be one of {get_args(Fit)}, got {self.fit!r}")
        if self.intensity not in get_args(Intensity):
            raise ValueError(f"intensity must be one of {get_args(Intensity)}, got {self.intensity!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
        if not 0 < self.scale_max <= np.iinfo(np.int16).max:
            raise ValueError(f"scale_max must be in 1..32767 (stored as int16), got {self.scale_max}")
        if self.intensity != "brat" and self.percentile != 99.0:
            warnings.warn(f"percentile has no effect with intensity={self.intensity!r}", stacklevel=2)


@dataclass
class StudyVolume:
    """One study's channels on a common grid; ``present[c]`` is False for a zero-filled missing sequence."""

    volume: np.ndarray  # int16 (C, D, H, W), channels in the order of the sequence mapping
    present: list[bool]
    mask: np.ndarray | None  # uint8 (D, H, W)
    spacing: tuple[float, float, float]  # output voxel size in mm, (D, H, W) order


def _output_grid(reference: nib.spatialimages.SpatialImage | Grid, config: VolumeConfig) -> Grid:
    """The (D, H, W) shape and voxel-to-world affine of the ``spacing`` grid covering ``reference``.

    ``reference`` is an image or a ``(shape, affine)`` pair. The grid is axis-aligned with RAS+ and spans
    the world bounding box of the reference's voxel centres, so it depends only on physical geometry.
    """
    shape_xyz, affine_xyz = vox2out_vox(reference, config.spacing[::-1])
    # Reorder the grid's index axes to (z, y, x) so that resampling writes (D, H, W) directly.
    return tuple(shape_xyz[::-1]), affine_xyz[:, [2, 1, 0, 3]]


def _normalise_intensity(volume: np.ndarray, config: VolumeConfig) -> np.ndarray:
    """Map intensities linearly to 0..scale_max (float32, in place) using the configured variant."""
    if config.intensity == "znorm":
        # Z-scoring the non-zero voxels and then mapping them min-max onto 0..1 is the same affine map as
        # min-max on the raw non-zero voxels, so compute that directly; background stays 0.
        foreground = volume != 0
        values = volume[foreground]
        lo, hi = (values.min(), values.max()) if values.size else (0.0, 0.0)
        if hi > lo:
            volume[foreground] = (values - lo) * np.float32(config.scale_max / (hi - lo))
    else:
        # brat: percentile of the non-zero voxels; SeLIP: of the whole image.
        brat = config.intensity == "brat"
        hi = _percentile(volume, config.percentile if brat else SELIP_PERCENTILE, nonzero=brat)
        lo = volume.min()  # 0 for MRI magnitudes, so the background stays 0
        if hi > lo:
            np.clip(volume, lo, hi, out=volume)
            volume -= lo
            volume *= np.float32(config.scale_max / (hi - lo))
    if not hi > lo:
        raise RejectError("empty_volume", "volume is constant after resampling")
    return volume


def _percentile(volume: np.ndarray, q: float, *, nonzero: bool) -> float:
    """``np.percentile(values, q)`` (linear method, same result) of the voxels, or of the non-zero ones;
    0.0 when there are none.

    Selecting from the whole volume is the costliest step of preprocessing a 1 mm scan, so a strided
    sample first bounds the tail that holds the wanted order statistics, and only that tail (~1 % of the
    voxels) is partitioned: ~5x faster, no full-size copy. A bound that misses falls back to all voxels.
    """
    flat = volume.reshape(-1)
    count = int(np.count_nonzero(flat)) if nonzero else flat.size
    if count == 0:
        return 0.0
    position = (count - 1) * (q / 100)
    below = int(position)
    ranks = np.array([below, min(below + 1, count - 1)])
    sample = flat[:: max(flat.size // PERCENTILE_SAMPLE, 1)]
    sample = sample[sample != 0] if nonzero else sample
    bound = np.percentile(sample, max(q - PERCENTILE_MARGIN, 0)) if sample.size else -np.inf
    tail = flat[(flat > bound) & (flat != 0)] if nonzero and bound < 0 else flat[flat > bound]
    # The tail holds the ``tail.size`` largest values, i.e. ranks count - tail.size .. count - 1.
    if count - tail.size > ranks[0]:
        tail = flat[flat != 0] if nonzero else flat.copy()
    ranks -= count - tail.size
    tail.partition(ranks)
    lower, upper = tail[ranks]
    # numpy's own interpolation, term for term, so that the result equals np.percentile's.
    weight = position - below
    return upper - (upper - lower) * (1 - weight) if weight >= 0.5 else lower + (upper - lower) * weight


def _fit(volume: np.ndarray, config: VolumeConfig, *, labels: bool) -> np.ndarray:
    """Bring a (D, H, W) array to ``config.shape`` by interpolation or by centred crop / zero pad."""
    if volume.shape == config.shape:
        return volume
    if config.fit == "crop_pad":
        out = np.zeros(config.shape, dtype=volume.dtype)
        src, dst = [], []
        for have, want in zip(volume.shape, config.shape, strict=True):
            lo_src, lo_dst = max((have - want) // 2, 0), max((want - have) // 2, 0)
            size = min(have, want)
            src.append(slice(lo_src, lo_src + size))
            dst.append(slice(lo_dst, lo_dst + size))
        out[tuple(dst)] = volume[tuple(src)]
        return out
    # Imported here: a spec holding a VolumeConfig is validated without paying torch's ~1 s import.
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(volume)[None, None]
    if labels:
        # "nearest-exact" uses the same half-voxel sample positions as trilinear with align_corners=False,
        # so a resized mask stays aligned with its resized image.
        resized = F.interpolate(tensor, size=config.shape, mode="nearest-exact")
    else:
        resized = F.interpolate(tensor, size=config.shape, mode="trilinear", align_corners=False)
    return resized[0, 0].numpy()


def _fitted_spacing(grid_shape: tuple[int, int, int], config: VolumeConfig) -> tuple[float, float, float]:
    """Voxel size (mm, D/H/W) after ``_fit``: resizing stretches voxels, crop/pad keeps them."""
    if config.fit == "crop_pad":
        return config.spacing
    return tuple(
        s * have / want for s, have, want in zip(config.spacing, grid_shape, config.shape, strict=True)
    )


def preprocess_image(
    img: nib.spatialimages.SpatialImage,
    config: VolumeConfig,
    *,
    reference: nib.spatialimages.SpatialImage | Grid | None = None,
) -> np.ndarray:
    """Resample (trilinear), normalise and fit one validated 3D image; returns int16 (D, H, W).

    ``reference`` (an image or ``(shape, affine)``, default ``img``) fixes the output grid, so that
    co-registered sequences of one study land on the same voxels.
    """
    grid = _output_grid(img if reference is None else reference, config)
    volume = resample(voxels_float32(img), img.affine, grid, order=1)
    volume = _fit(_normalise_intensity(volume, config), config, labels=False)
    return np.rint(volume, out=volume).astype(np.int16)


def preprocess_mask(
    img: nib.spatialimages.SpatialImage,
    config: VolumeConfig,
    *,
    reference: nib.spatialimages.SpatialImage | Grid | None = None,
) -> np.ndarray:
    """Resample and fit a label mask with nearest neighbour; returns uint8 (D, H, W).

    Pass the study's image (or its ``(shape, affine)``) as ``reference`` to get exactly the image's grid;
    by default the mask's own geometry defines it, which is the same grid when the mask shares the
    image's shape and affine.
    """
    voxels = voxels_float32(img)
    lo, hi = voxels.min(), voxels.max()
    if lo < 0 or hi > np.iinfo(np.uint8).max:
        raise RejectError("bad_mask", f"mask labels span {float(lo):g}..{float(hi):g}, not 0..255")
    # Labels go to uint8 before resampling: nearest neighbour needs no float, and it quarters the memory.
    labels = np.rint(voxels).astype(np.uint8)
    # Rounding a probability map or an interpolated mask would invent labels without a word.
    if np.abs(voxels - labels).max() > MASK_ROUNDING:
        raise RejectError("bad_mask", "mask values are not integer labels (a probability map?)")
    grid = _output_grid(img if reference is None else reference, config)
    return _fit(resample(labels, img.affine, grid, order=0), config, labels=True)


def load_study(
    sequence_paths: Mapping[str, str | Callable[[], nib.Nifti1Image] | None],
    config: VolumeConfig,
    *,
    mask_path: str | None = None,
    missing: Literal["zero", "reject"] = "zero",
    limits: IngestLimits | None = None,
) -> StudyVolume:
    """Load a multi-sequence study as channels on one grid (METHODS 1.1 step 5).

    The first present sequence defines the output grid; the others are co-registered and resampled onto
    it. A sequence whose path is None or empty is a zero channel (``missing="zero"``) or a reject; instead
    of a path, a sequence may come as a loader of its image (a DICOM series, ``data.dicom_ingest``).
    Volumes are loaded one at a time so that peak memory is one full-resolution volume; ``limits``
    bounds what one file may cost. A mask with labels must overlap the image's foreground.
    """
    if missing not in ("zero", "reject"):
        raise ValueError(f"missing must be 'zero' or 'reject', got {missing!r}")
    volume = np.zeros((len(sequence_paths), *config.shape), dtype=np.int16)
    present = [bool(path) for path in sequence_paths.values()]
    absent = [name for name, path in sequence_paths.items() if not path]
    if absent and missing == "reject":
        raise RejectError("missing_sequence", f"sequences {absent}")
    if not any(present):
        raise RejectError("missing_sequence", "no sequence present")
    reference: Grid | None = None
    for channel, (name, path) in enumerate(sequence_paths.items()):
        if not path:
            continue
        if callable(path):
            img = path()
            check_voxels(np.asarray(img.dataobj), f"sequence {name}")
        else:
            img = load_nifti(path, label=f"sequence {name}", limits=limits)
        reference = reference or (img.shape, img.affine)
        volume[channel] = preprocess_image(img, config, reference=reference)
    mask = None
    if mask_path:
        mask_img = load_nifti(mask_path, label="mask", allow_empty=True, limits=limits)
        labelled = bool(np.asarray(mask_img.dataobj).max() >= 0.5)
        mask = preprocess_mask(mask_img, config, reference=reference)
        if labelled:
            _check_overlap(mask, volume[present])
    grid_shape = _output_grid(reference, config)[0]
    return StudyVolume(volume=volume, present=present, mask=mask, spacing=_fitted_spacing(grid_shape, config))


def _check_overlap(mask: np.ndarray, channels: np.ndarray) -> None:
    """Reject a labelled mask that lands outside the image's grid or foreground (``MASK_OVERLAP``)."""
    labelled = mask > 0
    count = int(np.count_nonzero(labelled))
    if count == 0:
        raise RejectError(
            "mask_mismatch", "no labelled voxel of the mask lies in the image's (cropped) field of view"
        )
    share = np.count_nonzero(labelled & (channels > 0).any(axis=0)) / count
    if share < MASK_OVERLAP:
        raise RejectError(
            "mask_mismatch", f"only {share:.0%} of the mask's labelled voxels lie in the image's foreground"
        )
