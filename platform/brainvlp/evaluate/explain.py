"""Explainability of a classifier's attention against the tumour mask (pLGG; METHODS 4).

The attention that the classifier's self-attention block puts on the image tokens lives on the low-resolution
grid of the last feature map (D' x H' x W'). ``attention_to_volume`` upsamples it trilinearly to the volume
(D x H x W) and min-max normalises it to [0, 1]; ``explanation_dice`` thresholds that map (0.01 by default,
as in pLGG) and scores the thresholded region against the lesion mask with Dice, in 3D and on one axial
slice, the one with the largest lesion cross-section.

Conventions:

- Volumes are ``D x H x W`` with axial slices along D (axis 0), the layout of the platform's stored tensors
  (METHODS 1.1). Arrays straight from nibabel in RAS orientation have the axial (superior) axis last and
  must be transposed first.
- Upsampling uses ``align_corners=False``: each token stands for a block of voxels centred on the token, the
  way a strided feature map covers its input, so a peak token stays over its own block of voxels.
- Masks are boolean; other dtypes count non-zero voxels as inside.

Shape legend: D, H, W volume depth (axial), height, width; d, h, w the token grid (D', H', W'); P tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def attention_to_volume(
    attn: torch.Tensor | np.ndarray,
    volume_shape: Sequence[int],
    *,
    grid_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Attention over the image tokens as a float32 (D, H, W) map in [0, 1].

    ``attn`` is the token grid (d, h, w), or flat (P,) token weights together with ``grid_shape`` = (d, h, w),
    reshaped in row-major order (the order in which a B x C x d x h x w feature map flattens to P tokens).
    A constant map becomes all zeros: it singles out no region, and zeros make it select nothing at any
    positive threshold (Dice 0 against a lesion) instead of everything, which would look like a partial hit.
    """
    attn_dhw = torch.as_tensor(attn).detach().cpu().double()
    if grid_shape is not None:
        if attn_dhw.numel() != math.prod(grid_shape):
            raise ValueError(f"{attn_dhw.numel()} attention weights do not fill a {tuple(grid_shape)} grid")
        attn_dhw = attn_dhw.reshape(tuple(grid_shape))
    if attn_dhw.ndim != 3 or attn_dhw.numel() == 0:
        raise ValueError(
            f"expected a 3-D token grid (or flat tokens plus grid_shape), got {tuple(attn_dhw.shape)}"
        )
    if len(volume_shape) != 3 or min(volume_shape) < 1:
        raise ValueError(f"volume_shape must be three positive sizes, got {tuple(volume_shape)}")
    if not torch.isfinite(attn_dhw).all():
        raise ValueError("the attention map contains NaN or infinite values")
    attn_DHW = F.interpolate(
        attn_dhw[None, None], size=tuple(int(s) for s in volume_shape), mode="trilinear", align_corners=False
    )[0, 0]
    low, high = attn_DHW.min(), attn_DHW.max()
    if high <= low:
        return np.zeros(tuple(attn_DHW.shape), np.float32)
    # Normalised after upsampling: voxels rarely sit on token centres, so the grid's extremes may not occur.
    return ((attn_DHW - low) / (high - low)).clamp_(0, 1).float().numpy()


def dice(pred_mask: torch.Tensor | np.ndarray, true_mask: torch.Tensor | np.ndarray) -> float:
    """Dice coefficient 2|A ∩ B| / (|A| + |B|) of two masks of the same shape (volumes or slices).

    Both empty is 1.0: the explanation and the mask agree that there is nothing to find, and it keeps Dice a
    similarity (1 for identical masks) instead of 0/0.
    """
    pred, true = _bool_mask(pred_mask), _bool_mask(true_mask)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    total = int(pred.sum()) + int(true.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, true).sum()) / total


@dataclass(frozen=True)
class ExplanationDice:
    """Dice of the thresholded attention against the lesion, in 3D and on the axial slice ``slice_index``
    (the one with the largest lesion area; -1 with ``dice_slice`` NaN when the mask is empty)."""

    dice_3d: float
    dice_slice: float
    slice_index: int


def explanation_dice(
    attn_volume: torch.Tensor | np.ndarray,
    lesion_mask: torch.Tensor | np.ndarray,
    threshold: float = 0.01,
) -> ExplanationDice:
    """Threshold a normalised attention volume (from ``attention_to_volume``) and compare it to the lesion.

    A voxel is explained when its attention is strictly above ``threshold``, so threshold 0 keeps exactly the
    non-zero attention. The slice is the axial one (axis 0, D) with the most lesion voxels, the first of
    equal ones. An empty lesion mask has no such slice: ``slice_index`` is -1 and ``dice_slice`` NaN, while
    ``dice_3d`` follows ``dice`` (1.0 only if nothing is explained either).
    """
    attn_DHW = torch.as_tensor(attn_volume).detach().cpu().double().numpy()
    mask_DHW = _bool_mask(lesion_mask)
    if attn_DHW.ndim != 3 or attn_DHW.shape != mask_DHW.shape:
        raise ValueError(
            f"need two D x H x W volumes of one shape, got {attn_DHW.shape} and {mask_DHW.shape}"
        )
    if not (np.isfinite(attn_DHW).all() and attn_DHW.min() >= 0 and attn_DHW.max() <= 1):
        raise ValueError("the attention volume must be normalised to [0, 1] (see attention_to_volume)")
    explained_DHW = attn_DHW > threshold
    area_D = mask_DHW.sum(axis=(1, 2))
    if not area_D.any():
        return ExplanationDice(dice(explained_DHW, mask_DHW), math.nan, -1)
    axial = int(area_D.argmax())
    return ExplanationDice(dice(explained_DHW, mask_DHW), dice(explained_DHW[axial], mask_DHW[axial]), axial)


def _bool_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(mask, torch.Tensor):  # compare in torch: numpy has no bfloat16
        return (mask.detach().cpu() != 0).numpy()
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0
