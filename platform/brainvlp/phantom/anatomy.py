"""Anatomy of the phantom dataset: the MNI152 template on the output grid, named regions, lesions, warps.

Everything here works in *template space*: the nilearn MNI ICBM152 2009a template (shipped inside the
nilearn wheel, so no download) resampled once per process onto the output voxel grid. Lesions are placed
and painted there, so their named region is exact, and only then is each study warped into its own
"subject space" (random pose, head size and smooth displacement, plus mass effect), with the lesion mask
warped by the same coordinates (nearest neighbour) so image and mask always agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

# Regions as MNI boxes in mm, (x, y, z) ranges; left = negative MNI x. The boxes are pairwise disjoint and
# are intersected with the template's tissue (grey + white matter) so a lesion never sits in CSF or air.
_LATERAL_BOXES = {  # |x| range, y range, z range
    "frontal_lobe": ((8.0, 70.0), (22.0, 75.0), (-25.0, 75.0)),
    "parietal_lobe": ((8.0, 70.0), (-78.0, -25.0), (30.0, 80.0)),
    "temporal_lobe": ((40.0, 72.0), (-45.0, 10.0), (-40.0, -5.0)),
    "occipital_lobe": ((4.0, 55.0), (-107.0, -82.0), (-20.0, 35.0)),
    "basal_ganglia_thalamus": ((6.0, 30.0), (-32.0, 18.0), (-8.0, 18.0)),
}
REGION_BOXES: dict[str, tuple[tuple[float, float], ...]] = {
    **{f"left_{name}": ((-x1, -x0), y, z) for name, ((x0, x1), y, z) in _LATERAL_BOXES.items()},
    **{f"right_{name}": (x, y, z) for name, (x, y, z) in _LATERAL_BOXES.items()},
    "cerebellum": ((-45.0, 45.0), (-88.0, -48.0), (-60.0, -25.0)),
    "brainstem": ((-9.0, 9.0), (-40.0, -15.0), (-50.0, -12.0)),
}
# Extent of the MNI152 brain mask (mm) plus a margin: what the derived voxel size must fit.
_BRAIN_BOX_MM = np.array([[-72.0, 72.0], [-107.0, 73.0], [-72.0, 82.0]])
_MARGIN_MM = 8.0


@dataclass(frozen=True)
class Template:
    """The template resampled to one output grid, with what lesion placement and painting need."""

    affine: np.ndarray
    mm: np.ndarray  # (3, X, Y, Z) MNI coordinates of every voxel centre
    t1: np.ndarray
    flair: np.ndarray  # FLAIR-like contrast from the tissue maps: CSF dark, WM < GM
    wm: np.ndarray
    brain: np.ndarray  # bool
    regions: dict[str, np.ndarray]  # location -> bool mask (box ∩ tissue)
    depth: dict[str, np.ndarray]  # location -> distance (mm) to the region's border
    periventricular: np.ndarray  # bool band of white matter around the ventricles

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.t1.shape


@dataclass(frozen=True)
class PlacedLesion:
    """One lesion (or resection cavity) drawn in template space."""

    centre_mm: tuple[float, float, float]
    core: np.ndarray  # bool
    oedema: np.ndarray  # bool, excludes the core
    distance: np.ndarray  # normalised ellipsoid distance (0 at the centre, 1 at the border)


def derive_voxel_size(shape: tuple[int, int, int]) -> float:
    """Smallest isotropic voxel size (mm, rounded up to 0.05) at which the whole brain fits the grid."""
    extent = _BRAIN_BOX_MM[:, 1] - _BRAIN_BOX_MM[:, 0] + 2 * _MARGIN_MM
    return math.ceil(float(np.max(extent / np.asarray(shape))) * 20) / 20


def grid_affine(shape: tuple[int, int, int], voxel_size: float) -> np.ndarray:
    """RAS affine of the output grid, centred on the brain so every scan shows the whole head."""
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    centre_mm = _BRAIN_BOX_MM.mean(axis=1)
    affine[:3, 3] = centre_mm - voxel_size * (np.asarray(shape) - 1) / 2
    return affine


@lru_cache(maxsize=4)
def load_template(shape: tuple[int, int, int], voxel_size: float) -> Template:
    """Resample the nilearn MNI152 maps to the grid once per process (smoothed first to avoid aliasing)."""
    from nilearn import datasets, image  # heavy import, only needed here

    affine = grid_affine(shape, voxel_size)
    fwhm = math.sqrt(max(voxel_size**2 - 1.0, 0.0)) or None
    maps = [
        datasets.load_mni152_template(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
        datasets.load_mni152_brain_mask(resolution=1),
    ]
    t1, gm, wm, brain = (
        image.resample_img(
            image.smooth_img(img, fwhm), target_affine=affine, target_shape=shape, interpolation="linear"
        )
        .get_fdata(dtype=np.float32)
        .clip(0.0, 1.0)
        for img in maps
    )
    brain_mask = brain >= 0.5
    csf = np.clip(brain - gm - wm, 0.0, 1.0) * brain_mask
    flair = (0.1 * csf + 0.5 * wm + 0.75 * gm) * brain_mask
    mm = np.einsum("ij,j...->i...", affine[:3, :3], np.indices(shape, dtype=np.float32)) + affine[
        :3, 3
    ].reshape(3, 1, 1, 1)
    regions = _region_masks(mm, (gm + wm >= 0.5) & brain_mask)
    depth = {name: ndimage.distance_transform_edt(mask) * voxel_size for name, mask in regions.items()}
    return Template(
        affine=affine,
        mm=mm.astype(np.float32),
        t1=t1 * brain_mask,
        flair=flair.astype(np.float32),
        wm=wm,
        brain=brain_mask,
        regions=regions,
        depth=depth,
        periventricular=_periventricular_band(csf, wm, brain_mask, voxel_size),
    )


def _region_masks(mm: np.ndarray, tissue: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean mask per named location: its MNI box intersected with brain tissue."""
    masks = {}
    for name, box in REGION_BOXES.items():
        inside = tissue.copy()
        for axis, (low, high) in enumerate(box):
            inside &= (mm[axis] >= low) & (mm[axis] <= high)
        masks[name] = inside
    return masks


def _periventricular_band(
    csf: np.ndarray, wm: np.ndarray, brain: np.ndarray, voxel_size: float
) -> np.ndarray:
    """White matter within ~10 mm of the ventricles (deep CSF), where small-vessel disease shows on FLAIR."""
    deep = ndimage.distance_transform_edt(brain) * voxel_size > 15.0
    ventricles = (csf > 0.5) & deep
    near = ndimage.distance_transform_edt(~ventricles) * voxel_size <= 10.0
    return near & (wm > 0.5) & ~ventricles


@lru_cache(maxsize=16)
def _upsampling_matrix(size: int, control: int) -> np.ndarray:
    """(size, control) matrix that cubic-spline upsamples a 1D signal (columns: ``ndimage.zoom`` of unit
    vectors); applied along each axis it equals ``ndimage.zoom`` of the 3D grid at a fraction of the cost."""
    return ndimage.zoom(np.eye(control), (size / control, 1.0), order=3, mode="nearest").astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], channels: int, control: int) -> np.ndarray:
    """Smooth random fields (about unit amplitude): Gaussian noise on a coarse grid, cubic-upsampled."""
    coarse = rng.standard_normal((channels, control, control, control)).astype(np.float32)
    mx, my, mz = (_upsampling_matrix(size, control) for size in shape)
    field = np.einsum("bj,najk->nabk", my, np.einsum("ai,nijk->najk", mx, coarse))
    return field @ mz.T


def place_lesion(
    template: Template,
    location: str,
    radii_mm: np.ndarray,
    occupied: np.ndarray,
    texture: np.ndarray,
    rng: np.random.Generator,
    oedema_mm: float = 0.0,
) -> PlacedLesion | None:
    """Draw an irregular ellipsoid whose core centroid lies in ``location``; ``None`` if it does not fit.

    Centres are drawn from voxels deep enough inside the region, the core is clipped to the brain, and a
    draw is rejected when it touches ``occupied`` or its centroid leaves the region, so the invariant
    "lesion inside the brain, in the region it is named after" holds by construction.
    """
    depth = template.depth[location]
    candidates = np.flatnonzero(depth >= min(0.5 * float(radii_mm.min()), 0.8 * float(depth.max())))
    for _ in range(20):
        centre = np.unravel_index(rng.choice(candidates), template.shape)
        centre_mm = template.mm[(slice(None), *centre)]
        offsets = (template.mm - centre_mm.reshape(3, 1, 1, 1)) / radii_mm.reshape(3, 1, 1, 1)
        distance = np.sqrt(np.sum(offsets**2, axis=0)) * (1.0 + 0.15 * texture)
        core = (distance <= 1.0) & template.brain
        if (core & occupied).any():
            continue
        if not _centroid_in_region(template, core, location):
            continue
        oedema = np.zeros_like(core)
        if oedema_mm:
            reach = 1.0 + oedema_mm / float(radii_mm.mean())
            oedema = (distance <= reach) & template.brain & (template.wm > 0.25) & ~core
        return PlacedLesion(tuple(float(v) for v in centre_mm), core, oedema, distance)
    return None


def _centroid_in_region(template: Template, core: np.ndarray, location: str) -> bool:
    """The exact centroid lies in the region's box, and its nearest voxel in the region's tissue."""
    centroid = np.asarray(ndimage.center_of_mass(core))
    centroid_mm = template.affine[:3, :3] @ centroid + template.affine[:3, 3]
    in_box = all(low <= c <= high for c, (low, high) in zip(centroid_mm, REGION_BOXES[location], strict=True))
    return in_box and bool(template.regions[location][tuple(np.round(centroid).astype(int))])


def warp_coordinates(
    template: Template,
    anatomy_rng: np.random.Generator,
    pose_rng: np.random.Generator,
    mass_effect: tuple[float, float, float, float] | None,
) -> np.ndarray:
    """Where each subject voxel samples the template: head size and smooth shape (per patient), pose
    (per study) and an optional midline shift ``(x_mm, y_mm, z_mm, shift_mm)`` pushing away from a lesion."""
    shape = template.shape
    voxel = float(template.affine[0, 0])
    centre = (np.asarray(shape, dtype=np.float32) - 1) / 2
    scale = anatomy_rng.uniform(0.94, 1.06, 3)
    displacement = smooth_field(anatomy_rng, shape, channels=3, control=5) * (2.0 / voxel)
    rotation = Rotation.from_euler("xyz", pose_rng.uniform(-4.0, 4.0, 3), degrees=True).as_matrix()
    translation = pose_rng.uniform(-3.0, 3.0, 3) / voxel
    grid = np.indices(shape, dtype=np.float32) - centre.reshape(3, 1, 1, 1)
    matrix = (rotation / scale).astype(np.float32)
    coords = np.einsum("ij,j...->i...", matrix, grid) + (centre + translation).reshape(3, 1, 1, 1)
    coords += displacement
    if mass_effect is not None:
        x_mm, y_mm, z_mm, shift_mm = mass_effect
        ref = np.array([0.0, y_mm, z_mm])  # the midline next to the lesion
        squared = np.sum((template.mm - ref.reshape(3, 1, 1, 1)) ** 2, axis=0)
        coords[0] += np.sign(x_mm) * shift_mm / voxel * np.exp(-squared / (2 * 30.0**2))
    return coords


def warp(volume: np.ndarray, coords: np.ndarray, order: int) -> np.ndarray:
    """Resample a template-space volume at the subject's coordinates (order 0 for label maps)."""
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0)


def scanner_signal(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Turn a clean [0, ~1.2] image into scanner-like int16: multiplicative bias field, Rician noise, gain."""
    bias = np.exp(0.2 * smooth_field(rng, image.shape, channels=1, control=3)[0])
    sigma = np.float32(rng.uniform(0.015, 0.03))
    real = image * bias + sigma * rng.standard_normal(image.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(image.shape, dtype=np.float32)
    magnitude = np.hypot(real, imaginary) * np.float32(rng.uniform(700.0, 1100.0))
    return np.round(magnitude).astype(np.int16)


def white_matter_hyperintensities(template: Template, rng: np.random.Generator) -> np.ndarray:
    """Patchy foci inside the periventricular band: thresholded fine-grained smooth noise."""
    control = max(4, template.shape[0] // 6)
    return template.periventricular & (
        smooth_field(rng, template.shape, channels=1, control=control)[0] > 0.7
    )


def necrotic_centre(placed: PlacedLesion) -> np.ndarray:
    """The dark, non-enhancing centre of a necrotic core (``paint`` draws it, the mask labels it NCR)."""
    return placed.core & (placed.distance < 0.55)


def paint(
    template: Template,
    lesions: list[tuple[PlacedLesion, bool, bool]],
    cavity: PlacedLesion | None,
    hyperintensities: np.ndarray | None,
    texture: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """T1-post-contrast-like and FLAIR-like template-space images with the study's pathology.

    ``lesions`` holds ``(placed, enhancing, necrotic)``. Enhancing cores are bright on T1c (a bright rim
    around a dark centre when necrotic), non-enhancing cores dark; cores and oedema are bright on FLAIR,
    oedema slightly dark on T1c; a resection cavity is CSF-like with a gliotic FLAIR rim.
    """
    t1c, flair = template.t1.copy(), template.flair.copy()
    grain = 1.0 + 0.06 * texture
    # Contrasts as conspicuous as real pathology: FLAIR lesions and oedema well above grey matter (0.75),
    # enhancement well above white matter; subtler values vanish under percentile clipping at ingest.
    for placed, enhancing, necrotic in lesions:
        t1c[placed.oedema] *= 0.85
        flair[placed.oedema] = np.maximum(flair, 1.25 * grain)[placed.oedema]
        centre = necrotic_centre(placed) if necrotic else np.zeros_like(placed.core)
        t1c[placed.core] = ((1.8 if enhancing else 0.35) * grain)[placed.core]
        flair[placed.core] = (1.6 * grain)[placed.core]
        t1c[centre], flair[centre] = 0.35, 1.0
    if cavity is not None:
        rim = ndimage.binary_dilation(cavity.core) & template.brain & ~cavity.core
        flair[rim] += 0.4
        t1c[cavity.core], flair[cavity.core] = 0.25, 0.05
    if hyperintensities is not None:
        flair[hyperintensities] += 0.45
    return t1c, flair
