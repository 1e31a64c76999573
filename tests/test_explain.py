"""Explainability: Dice against hand-counted masks, the largest axial slice, and attention upsampling.

Shape legend: D, H, W volume axes (D axial); d, h, w token grid; P tokens.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainvlp.evaluate.explain import ExplanationDice, attention_to_volume, dice, explanation_dice


def _box(shape, lo, hi):
    mask = np.zeros(shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return mask


# ------------------------------------------------------------------------------------------------- dice


def test_dice_of_overlapping_cubes():
    # Two 4^3 cubes (64 voxels each) shifted by 2 along every axis share a 2^3 = 8 voxel cube.
    a_DHW = _box((10, 10, 10), (2, 2, 2), (6, 6, 6))
    b_DHW = _box((10, 10, 10), (4, 4, 4), (8, 8, 8))
    assert dice(a_DHW, b_DHW) == pytest.approx(2 * 8 / (64 + 64))
    # A 2 x 4 x 4 slab (32 voxels) inside the first cube: 2 * 32 / (64 + 32).
    slab_DHW = _box((10, 10, 10), (2, 2, 2), (4, 6, 6))
    assert dice(a_DHW, slab_DHW) == pytest.approx(2 / 3)
    assert dice(a_DHW, a_DHW) == 1.0
    assert dice(a_DHW, _box((10, 10, 10), (7, 7, 7), (9, 9, 9))) == 0.0


def test_dice_of_slices_and_other_dtypes():
    a_HW = _box((6, 6), (0, 0), (3, 2))  # 6 pixels
    b_HW = _box((6, 6), (2, 0), (4, 4))  # 8 pixels, 2 shared
    expected = 2 * 2 / (6 + 8)
    assert dice(a_HW, b_HW) == pytest.approx(expected)
    assert dice(torch.as_tensor(a_HW, dtype=torch.bfloat16), b_HW.astype(np.uint8) * 3) == pytest.approx(
        expected
    )


def test_dice_empty_cases():
    empty_DHW = np.zeros((3, 4, 5), bool)
    assert dice(empty_DHW, empty_DHW) == 1.0
    assert dice(empty_DHW, _box((3, 4, 5), (0, 0, 0), (1, 1, 1))) == 0.0


def test_dice_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        dice(np.zeros((3, 4, 5), bool), np.zeros((3, 5, 4), bool))


# ------------------------------------------------------------------------------------ explanation_dice


def _lesion():
    """Axial areas: slice 3 holds 4 voxels, slices 5 and 6 hold 9 each (ties: the first, 5, wins)."""
    mask_DHW = np.zeros((8, 10, 10), bool)
    mask_DHW[3, 4:6, 4:6] = True
    mask_DHW[5, 3:6, 3:6] = True
    mask_DHW[6, 4:7, 4:7] = True
    return mask_DHW


def test_explanation_dice_by_hand():
    mask_DHW = _lesion()
    attn_DHW = np.zeros((8, 10, 10))
    attn_DHW[5:7, 3:6, 3:5] = 0.5  # 2 x 3 x 2 = 12 explained voxels
    attn_DHW[0, 0, 0] = 0.01  # at the threshold: not explained (strictly above only)
    # Shared: slice 5 rows 3-5 x cols 3-4 (6) plus slice 6 rows 4-5 x col 4 (2) = 8; lesion 22 voxels.
    result = explanation_dice(attn_DHW, mask_DHW)
    assert result.slice_index == 5
    assert result.dice_3d == pytest.approx(2 * 8 / (12 + 22))
    # Slice 5: 6 explained pixels, all inside its 9-pixel lesion.
    assert result.dice_slice == pytest.approx(2 * 6 / (6 + 9))
    assert explanation_dice(torch.as_tensor(attn_DHW), torch.as_tensor(mask_DHW)) == result


def test_explanation_dice_threshold_zero_keeps_nonzero_attention():
    mask_DHW = _lesion()
    attn_DHW = np.where(mask_DHW, 0.003, 0.0)
    assert explanation_dice(attn_DHW, mask_DHW, threshold=0.0).dice_3d == 1.0
    assert explanation_dice(attn_DHW, mask_DHW).dice_3d == 0.0  # all below the default 0.01


def test_explanation_dice_empty_lesion():
    empty_DHW = np.zeros((4, 5, 6), bool)
    result = explanation_dice(np.zeros((4, 5, 6)), empty_DHW)
    assert (result.dice_3d, result.slice_index) == (1.0, -1) and math.isnan(result.dice_slice)
    assert explanation_dice(np.ones((4, 5, 6)), empty_DHW).dice_3d == 0.0


@pytest.mark.parametrize(
    "attn_DHW", [np.full((8, 10, 10), 1.5), np.full((8, 10, 10), -0.1), np.ones((8, 10))]
)
def test_explanation_dice_rejects_unnormalised_or_misshapen_maps(attn_DHW):
    with pytest.raises(ValueError):
        explanation_dice(attn_DHW, _lesion())


# --------------------------------------------------------------------------------- attention_to_volume


def test_upsampling_keeps_the_peak_over_its_token_block():
    grid_dhw = np.zeros((4, 4, 4))
    grid_dhw[1, 2, 3] = 5.0
    grid_dhw[3, 0, 0] = 1.0
    volume_DHW = attention_to_volume(grid_dhw, (8, 16, 12))  # scale 2, 4 and 3 per axis
    assert volume_DHW.shape == (8, 16, 12) and volume_DHW.dtype == np.float32
    assert volume_DHW.min() == 0.0 and volume_DHW.max() == 1.0
    # Token (1, 2, 3) covers voxels 2-3 x 8-11 x 9-11; every voxel at the maximum lies inside that block.
    peak_rows = np.argwhere(volume_DHW == 1.0)
    assert len(peak_rows) > 0
    assert np.all((peak_rows >= [2, 8, 9]) & (peak_rows < [4, 12, 12]))
    block = np.zeros(volume_DHW.shape, bool)
    block[2:4, 8:12, 9:12] = True
    assert volume_DHW[~block].max() < volume_DHW[block].max()


def test_upsampling_to_the_same_shape_is_min_max_normalisation():
    grid_dhw = torch.rand(3, 4, 5, dtype=torch.float64)
    expected = (grid_dhw - grid_dhw.min()) / (grid_dhw.max() - grid_dhw.min())
    np.testing.assert_allclose(attention_to_volume(grid_dhw, (3, 4, 5)), expected.numpy(), atol=1e-6)


def test_flat_tokens_with_grid_shape_match_the_grid():
    grid_dhw = torch.rand(2, 3, 4)
    flat_P = grid_dhw.flatten()  # the row-major order of a flattened B x C x d x h x w feature map
    np.testing.assert_array_equal(
        attention_to_volume(flat_P, (6, 6, 8), grid_shape=(2, 3, 4)),
        attention_to_volume(grid_dhw.numpy(), (6, 6, 8)),
    )


def test_constant_map_becomes_zeros():
    volume_DHW = attention_to_volume(np.full((2, 2, 2), 0.3), (4, 4, 4))
    assert not volume_DHW.any()
    assert explanation_dice(volume_DHW, _box((4, 4, 4), (1, 1, 1), (3, 3, 3))) == ExplanationDice(0.0, 0.0, 1)


@pytest.mark.parametrize(
    ("attn", "volume_shape", "grid_shape"),
    [
        (np.zeros((2, 2)), (4, 4, 4), None),
        (np.zeros(7), (4, 4, 4), (2, 2, 2)),
        (np.zeros((2, 2, 2)), (4, 4), None),
        (np.full((2, 2, 2), math.nan), (4, 4, 4), None),
    ],
)
def test_attention_to_volume_rejects_bad_input(attn, volume_shape, grid_shape):
    with pytest.raises(ValueError):
        attention_to_volume(attn, volume_shape, grid_shape=grid_shape)
