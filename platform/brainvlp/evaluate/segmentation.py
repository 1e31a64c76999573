"""Tumour segmentation: BraTS regions, Dice, HD95 and the BraTS 2023 lesion-wise scores (brat Tables 8-9).

BraTS scores overlapping *regions* built from the label map, not the labels themselves: whole tumour WT,
tumour core TC and enhancing tumour ET (``BRATS_2021_REGIONS`` for the glioma labels 1/2/4,
``BRATS_2023_REGIONS`` for the 2023 labels 1/2/3). ``regions_from_labels`` turns a label map into one binary
mask per region; every metric below takes such masks, one region per row.

Study-level metrics (``dice_per_region``, ``hd95_per_region``):

- Dice 2|P ∩ T| / (|P| + |T|) (MONAI ``compute_dice``). BraTS convention for empty masks: both empty is 1.0
  (the model correctly finds no such region), exactly one empty is 0.0.
- HD95: the larger of the two directed 95th-percentile surface distances, in mm (MONAI
  ``compute_hausdorff_distance`` with ``percentile=95`` and the voxel spacing). Both empty is 0.0; exactly one
  empty has no finite distance and gets ``penalty_mm``, by default 373.13 mm = sqrt(240² + 240² + 155²), the
  diagonal of the 240 x 240 x 155 1-mm BraTS volume, i.e. the largest distance possible inside a BraTS scan.
  The official BraTS 2023 script (``BraTS-2023_Metrics``, R. Saluja et al.) uses 374, that value rounded up;
  pass ``penalty_mm=374`` to reproduce its numbers exactly.

Lesion-wise metrics (``lesion_wise_scores``) follow the official BraTS 2023 script, ``get_LesionWiseScores``
and ``get_LesionWiseResults`` (github.com/rachitsaluja/BraTS-2023_Metrics; outlined by the organisers in the
Synapse BraTS 2023 forum, "lesion-wise Dice and HD95"):

1. GT lesions: the ground truth is dilated by ``dilation_iters`` iterations of
   ``generate_binary_structure(3, 2)`` (the 3x3x3 block without its 8 corners, as in the script) and its
   26-connected components are found; each GT lesion is the *undilated* GT inside one such component, so GT
   pieces closer than about two dilation radii form a single lesion.
2. Each GT lesion is dilated again the same way; every 26-connected predicted component that overlaps the
   dilated lesion is matched to it (a component may match several lesions).
3. A matched lesion scores Dice and HD95 of the union of its matched components against the undilated
   lesion; an unmatched (false-negative) lesion scores Dice 0 and HD95 ``penalty_hd95``.
4. Predicted components that match no GT lesion are false positives, each adding Dice 0 and HD95
   ``penalty_hd95``. The score is the sum over scored GT lesions and false positives divided by their count;
   with neither (both masks empty) Dice is 1 and HD95 0.
5. GT lesions of at most ``min_lesion_voxels`` voxels are left out of the score and of the TP/FN counts (the
   script's ``gt_lesion_vol <= lesion_volume_thresh``); predicted components matching them are still not
   false positives. The script thresholds the volume in mm³, which is the voxel count at BraTS's 1-mm
   isotropic spacing. Official settings (``BRATS_2023_LESION_SETTINGS``): GLI, SSA, PED dilation 3 and
   threshold 50; MEN dilation 1 and 50; MET dilation 1 and 2. The default 0 drops nothing (phantom data).

Known deviation: the script measures HD95 with DeepMind's ``surface-distance`` package, whose percentile
weights each surface element by its area; MONAI's HD95 (used here, for both study-level and lesion-wise
HD95, MONAI being the platform's metrics library) takes the unweighted percentile over boundary voxels, so
HD95 values can differ slightly from the script's; the size of that difference on BraTS data is not measured
here. Dice is identical. MONAI returns float32, so both metrics carry about 7 significant digits (returned
as float64).

Conventions: volumes are ``D x H x W`` (axial along D, METHODS 1.1) and ``spacing`` is the voxel size in mm
in the same axis order (reverse NIfTI zooms if the array was transposed from RAS). Masks are boolean; other
dtypes count non-zero voxels as inside.

Shape legend: R regions, D, H, W volume depth (axial), height, width.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance
from scipy import ndimage

BRATS_2021_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
BRATS_2023_REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
# sqrt(240² + 240² + 155²) = 373.129...: the diagonal of the BraTS volume at 1 mm, the worst possible HD95.
BRATS_DIAGONAL_MM = 373.13
# (dilation_iters, min_lesion_voxels) per BraTS 2023 challenge, from the script's get_LesionWiseResults.
BRATS_2023_LESION_SETTINGS: dict[str, tuple[int, int]] = {
    "GLI": (3, 50),
    "SSA": (3, 50),
    "PED": (3, 50),
    "MEN": (1, 50),
    "MET": (1, 2),
}
# Connected components are 26-connected (cc3d connectivity=26 in the script).
_COMPONENTS = np.ones((3, 3, 3), dtype=bool)
# The script dilates with generate_binary_structure(3, 2): 18-connected, no corner voxels.
_DILATION = ndimage.generate_binary_structure(3, 2)

MaskLike = np.ndarray | torch.Tensor


def regions_from_labels(label_DHW: MaskLike, regions: Mapping[str, Sequence[int]]) -> MaskLike:
    """Boolean region masks R x D x H x W, in the order of ``regions`` (name -> labels inside the region).

    Regions may overlap (WT contains TC contains ET). Any spatial shape works (a D x H x W volume, or a
    1 x H x W slice); the output is a torch tensor for a tensor input (same device), else a numpy array.
    """
    if not regions:
        raise ValueError("regions is empty: name at least one region and its labels")
    for name, codes in regions.items():
        if len(codes) == 0:
            raise ValueError(f"region {name!r} lists no labels")
    if isinstance(label_DHW, torch.Tensor):
        codes_R = [torch.as_tensor(list(codes), device=label_DHW.device) for codes in regions.values()]
        return torch.stack([torch.isin(label_DHW, codes) for codes in codes_R])
    label_DHW = np.asarray(label_DHW)
    return np.stack([np.isin(label_DHW, list(codes)) for codes in regions.values()])


def dice_per_region(pred_RDHW: MaskLike, true_RDHW: MaskLike) -> np.ndarray:
    """Dice per region, float64 (R,): 1.0 where both masks are empty, 0.0 where exactly one is."""
    pred_RDHW, true_RDHW = _region_masks(pred_RDHW, true_RDHW)
    # ignore_empty=False gives the BraTS convention (NaN otherwise). MONAI works in float32: voxel counts stay
    # exact below 2**24 (a BraTS volume has 8.9M voxels) and the ratio is rounded to about 1e-7.
    dice_1R = compute_dice(
        torch.from_numpy(pred_RDHW)[None],
        torch.from_numpy(true_RDHW)[None],
        include_background=True,
        ignore_empty=False,
    )
    return dice_1R[0].double().numpy()


def hd95_per_region(
    pred_RDHW: MaskLike,
    true_RDHW: MaskLike,
    spacing: float | Sequence[float],
    *,
    penalty_mm: float = BRATS_DIAGONAL_MM,
) -> np.ndarray:
    """95th-percentile Hausdorff distance per region in mm, float64 (R,): the larger of the two directed
    distances, 0.0 where both masks are empty and ``penalty_mm`` where exactly one is (see the module
    docstring for the 373.13 mm default)."""
    pred_RDHW, true_RDHW = _region_masks(pred_RDHW, true_RDHW)
    spacing_3 = _spacing(spacing, pred_RDHW.ndim - 1)
    hd95_R = np.zeros(len(pred_RDHW), np.float64)
    for r, (pred_DHW, true_DHW) in enumerate(zip(pred_RDHW, true_RDHW, strict=True)):
        has_pred, has_true = bool(pred_DHW.any()), bool(true_DHW.any())
        if has_pred != has_true:
            hd95_R[r] = penalty_mm
        elif has_pred:  # called only with two non-empty masks: MONAI warns and returns inf/NaN otherwise
            hd95_R[r] = _monai_hd95(pred_DHW, true_DHW, spacing_3)
    return hd95_R


def lesion_wise_scores(
    pred_DHW: MaskLike,
    true_DHW: MaskLike,
    spacing: float | Sequence[float],
    dilation_iters: int = 3,
    penalty_hd95: float = BRATS_DIAGONAL_MM,
    *,
    min_lesion_voxels: int = 0,
) -> dict[str, float]:
    """BraTS 2023 lesion-wise Dice and HD95 of one region (see the module docstring for the definition).

    Returns ``lesion_dice``, ``lesion_hd95`` and the counts ``num_gt_lesions`` (scored GT lesions, after
    merging by dilation and dropping small ones), ``num_dropped_gt_lesions``, ``num_pred_lesions``
    (26-connected predicted components), ``tp`` (scored GT lesions with a match), ``fn`` (without one) and
    ``fp`` (predicted components that match no GT lesion). ``dilation_iters=0`` matches only components that
    touch the lesion itself (scipy would read 0 iterations as "dilate until nothing changes").
    """
    pred_DHW, true_DHW = _region_masks(pred_DHW, true_DHW)
    if pred_DHW.ndim != 3:
        raise ValueError(f"lesion-wise scores need D x H x W masks, got shape {pred_DHW.shape}")
    if dilation_iters < 0 or min_lesion_voxels < 0:
        raise ValueError("dilation_iters and min_lesion_voxels must be >= 0")
    spacing_3 = _spacing(spacing, 3)
    lesion_DHW = _gt_lesions(true_DHW, dilation_iters)
    component_DHW, num_components = ndimage.label(pred_DHW, structure=_COMPONENTS)
    matched: set[int] = set()
    dice_L: list[float] = []
    hd95_L: list[float] = []
    tp = dropped = 0
    for lesion, box in enumerate(ndimage.find_objects(lesion_DHW), start=1):
        hits = _matched_components(lesion_DHW, component_DHW, lesion, box, dilation_iters)
        matched.update(hits)  # a dropped lesion's components are not false positives either (as the script)
        if int((lesion_DHW[box] == lesion).sum()) <= min_lesion_voxels:
            dropped += 1
        elif not hits:
            dice_L.append(0.0)
            hd95_L.append(penalty_hd95)
        else:
            tp += 1
            found_1DHW = np.isin(component_DHW, hits)[None]
            lesion_1DHW = (lesion_DHW == lesion)[None]
            dice_L.append(float(dice_per_region(found_1DHW, lesion_1DHW)[0]))
            hd95_L.append(float(hd95_per_region(found_1DHW, lesion_1DHW, spacing_3)[0]))
    fp = num_components - len(matched)
    total = len(dice_L) + fp
    return {
        "lesion_dice": sum(dice_L) / total if total else 1.0,
        "lesion_hd95": (sum(hd95_L) + fp * penalty_hd95) / total if total else 0.0,
        "num_gt_lesions": len(dice_L),
        "num_dropped_gt_lesions": dropped,
        "num_pred_lesions": num_components,
        "tp": tp,
        "fn": len(dice_L) - tp,
        "fp": fp,
    }


def score_case(
    pred_RDHW: MaskLike,
    true_RDHW: MaskLike,
    region_names: Sequence[str],
    spacing: float | Sequence[float],
    *,
    dilation_iters: int = 3,
    min_lesion_voxels: int = 0,
    penalty_hd95: float = BRATS_DIAGONAL_MM,
) -> dict[str, float]:
    """All scores of one study, flat: ``Dice_<region>``, ``HD95_<region>``, ``LesionDice_<region>``,
    ``LesionHD95_<region>`` and the lesion counts ``LesionTP_``, ``LesionFN_``, ``LesionFP_<region>``, for
    each region (row r of the masks is ``region_names[r]``)."""
    pred_RDHW, true_RDHW = _region_masks(pred_RDHW, true_RDHW)
    if len(region_names) != len(pred_RDHW):
        raise ValueError(f"{len(region_names)} region names for {len(pred_RDHW)} region masks")
    dice_R = dice_per_region(pred_RDHW, true_RDHW)
    hd95_R = hd95_per_region(pred_RDHW, true_RDHW, spacing, penalty_mm=penalty_hd95)
    scores: dict[str, float] = {}
    for r, name in enumerate(region_names):
        lesion = lesion_wise_scores(
            pred_RDHW[r],
            true_RDHW[r],
            spacing,
            dilation_iters,
            penalty_hd95,
            min_lesion_voxels=min_lesion_voxels,
        )
        scores[f"Dice_{name}"] = float(dice_R[r])
        scores[f"HD95_{name}"] = float(hd95_R[r])
        scores[f"LesionDice_{name}"] = lesion["lesion_dice"]
        scores[f"LesionHD95_{name}"] = lesion["lesion_hd95"]
        scores[f"LesionTP_{name}"] = lesion["tp"]
        scores[f"LesionFN_{name}"] = lesion["fn"]
        scores[f"LesionFP_{name}"] = lesion["fp"]
    return scores


def _monai_hd95(pred_DHW: np.ndarray, true_DHW: np.ndarray, spacing: tuple[float, ...]) -> float:
    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated always_return_as_numpy argument internally: not ours to fix.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd95_11 = compute_hausdorff_distance(
            torch.from_numpy(pred_DHW)[None, None],
            torch.from_numpy(true_DHW)[None, None],
            include_background=True,
            percentile=95,
            spacing=spacing,
        )
    return float(hd95_11[0, 0])


def _gt_lesions(true_DHW: np.ndarray, dilation_iters: int) -> np.ndarray:
    """GT lesion ids (0 background, 1..L): the GT voxels of each 26-connected component of the dilated GT."""
    dilated_DHW = _dilate(true_DHW, dilation_iters)
    component_DHW, _ = ndimage.label(dilated_DHW, structure=_COMPONENTS)
    # Every dilated component holds GT voxels (it grew from them), so the ids stay 1..L without gaps.
    return np.where(true_DHW, component_DHW, 0)


def _matched_components(
    lesion_DHW: np.ndarray,
    component_DHW: np.ndarray,
    lesion: int,
    box: tuple[slice, ...],
    dilation_iters: int,
) -> list[int]:
    """Ids of the predicted components that overlap GT lesion ``lesion`` (bounding box ``box``) dilated."""
    # Dilation grows by at most one voxel per axis and iteration, so a box padded by dilation_iters holds all
    # of it (the volume border clips both alike: scipy treats outside voxels as background).
    padded = tuple(
        slice(max(0, s.start - dilation_iters), min(size, s.stop + dilation_iters))
        for s, size in zip(box, lesion_DHW.shape, strict=True)
    )
    reach_DHW = _dilate(lesion_DHW[padded] == lesion, dilation_iters)
    hits = np.unique(component_DHW[padded][reach_DHW])
    return [int(c) for c in hits if c != 0]


def _dilate(mask_DHW: np.ndarray, iterations: int) -> np.ndarray:
    # scipy dilates until nothing changes when iterations < 1; zero iterations here means no dilation.
    if iterations == 0:
        return mask_DHW
    return ndimage.binary_dilation(mask_DHW, structure=_DILATION, iterations=iterations)


def _region_masks(pred: MaskLike, true: MaskLike) -> tuple[np.ndarray, np.ndarray]:
    pred, true = _bool_mask(pred), _bool_mask(true)
    if pred.shape != true.shape:
        raise ValueError(f"prediction and truth shapes differ: {pred.shape} vs {true.shape}")
    if pred.ndim < 2:
        raise ValueError(f"expected region masks R x D x H x W (or D x H x W), got shape {pred.shape}")
    return pred, true


def _spacing(spacing: float | Sequence[float], dims: int) -> tuple[float, ...]:
    """Voxel size in mm per spatial axis: one number for isotropic voxels or one per axis."""
    values = [float(spacing)] * dims if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(values) != dims or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be one or {dims} positive sizes in mm, got {spacing!r}")
    return tuple(values)


def _bool_mask(mask: MaskLike) -> np.ndarray:
    if isinstance(mask, torch.Tensor):  # compare in torch: numpy has no bfloat16
        return np.ascontiguousarray((mask.detach().cpu() != 0).numpy())
    mask = np.asarray(mask)
    return np.ascontiguousarray(mask if mask.dtype == bool else mask != 0)
