"""Segmentation metrics on hand-made 3D masks whose answers are worked out by hand below, plus a cross-check
of Dice against a plain voxel loop and invariance under swapping and translation.

Cube arithmetic used throughout: an n-cube has n³ voxels, of which n³ - (n-2)³ lie on its surface (a voxel
with a 6-neighbour outside); HD95 is measured between those surface voxels.

Shape legend: R regions, D, H, W volume depth, height, width.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brainvlp.evaluate.segmentation import (
    BRATS_2021_REGIONS,
    BRATS_2023_REGIONS,
    BRATS_DIAGONAL_MM,
    dice_per_region,
    hd95_per_region,
    lesion_wise_scores,
    regions_from_labels,
    score_case,
)

PENALTY = BRATS_DIAGONAL_MM


def _cube(shape, corner, size) -> np.ndarray:
    """Boolean volume of ``shape`` with the box [corner, corner + size) set; size is an int or per axis."""
    sizes = (size,) * 3 if isinstance(size, int) else size
    mask_DHW = np.zeros(shape, bool)
    mask_DHW[tuple(slice(c, c + s) for c, s in zip(corner, sizes, strict=True))] = True
    return mask_DHW


def test_brats_diagonal_is_the_volume_diagonal():
    # sqrt(240² + 240² + 155²) = sqrt(57600 + 57600 + 24025) = sqrt(139225) = 373.129...
    assert abs(math.sqrt(240**2 + 240**2 + 155**2) - BRATS_DIAGONAL_MM) < 5e-3


def test_regions_from_labels_numpy_and_torch():
    label_DHW = np.array([0, 1, 2, 3, 4]).reshape(1, 1, 5)
    regions_RDHW = regions_from_labels(label_DHW, BRATS_2023_REGIONS)
    assert regions_RDHW.dtype == bool and regions_RDHW.shape == (3, 1, 1, 5)
    # WT = {1, 2, 3}, TC = {1, 3}, ET = {3}; label 4 is no 2023 label.
    expected_RW = [[0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 0, 0, 1, 0]]
    np.testing.assert_array_equal(regions_RDHW[:, 0, 0], np.array(expected_RW, bool))
    regions_2021 = regions_from_labels(torch.from_numpy(label_DHW.astype(np.uint8)), BRATS_2021_REGIONS)
    # 2021: WT = {1, 2, 4}, TC = {1, 4}, ET = {4}; a tensor in gives a tensor out (seg_fit stacks them).
    assert isinstance(regions_2021, torch.Tensor) and regions_2021.dtype == torch.bool
    expected_2021 = [[0, 1, 1, 0, 1], [0, 1, 0, 0, 1], [0, 0, 0, 0, 1]]
    np.testing.assert_array_equal(regions_2021[:, 0, 0].numpy(), np.array(expected_2021, bool))
    with pytest.raises(ValueError, match="lists no labels"):
        regions_from_labels(label_DHW, {"WT": []})


def test_dice_of_overlapping_cubes():
    shape = (16, 16, 16)
    cube_a = _cube(shape, (2, 2, 2), 4)  # 64 voxels
    shifted = _cube(shape, (4, 2, 2), 4)  # shifted by 2 along D: overlap 2 * 4 * 4 = 32
    inner = _cube(shape, (2, 2, 2), 2)  # 8 voxels, all inside cube_a
    pred_RDHW = np.stack([shifted, inner])
    true_RDHW = np.stack([cube_a, cube_a])
    # 2 * 32 / (64 + 64) = 0.5 and 2 * 8 / (8 + 64) = 16 / 72 = 2 / 9
    np.testing.assert_allclose(dice_per_region(pred_RDHW, true_RDHW), [0.5, 2 / 9], rtol=1e-6)
    np.testing.assert_allclose(
        dice_per_region(torch.from_numpy(pred_RDHW), torch.from_numpy(true_RDHW)), [0.5, 2 / 9], rtol=1e-6
    )


def test_empty_mask_conventions():
    shape = (16, 16, 16)
    empty, cube = np.zeros(shape, bool), _cube(shape, (4, 4, 4), 4)
    pred_RDHW = np.stack([empty, cube, empty])
    true_RDHW = np.stack([empty, empty, cube])
    # both empty -> Dice 1, HD95 0; exactly one empty (either way) -> Dice 0, HD95 the penalty
    np.testing.assert_array_equal(dice_per_region(pred_RDHW, true_RDHW), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(hd95_per_region(pred_RDHW, true_RDHW, 1.0), [0.0, PENALTY, PENALTY])
    np.testing.assert_array_equal(
        hd95_per_region(pred_RDHW, true_RDHW, 1.0, penalty_mm=374.0), [0.0, 374.0, 374.0]
    )


@pytest.mark.parametrize(
    ("axis", "expected_mm"),
    [
        (0, 2 * 2.0),  # shift 2 voxels along D, spacing 2.0 mm: 4.0 mm
        (1, 2 * 0.5),  # along H, 0.5 mm: 1.0 mm
        (2, 2 * 0.75),  # along W, 0.75 mm: 1.5 mm
    ],
)
def test_hd95_of_shifted_cubes_with_anisotropic_spacing(axis, expected_mm):
    # An 8-cube and its copy shifted by k = 2 voxels along one axis. The face left behind (8 * 8 = 64 surface
    # voxels of 8³ - 6³ = 296, i.e. 21.6 % > 5 %) lies k * spacing[axis] from the other cube's face, and no
    # surface voxel is farther (lateral faces coincide or lie within k steps), so HD95 = k * spacing[axis].
    spacing = (2.0, 0.5, 0.75)
    shape = (24, 24, 24)
    corner = [4, 4, 4]
    true_DHW = _cube(shape, corner, 8)
    corner[axis] += 2
    pred_DHW = _cube(shape, corner, 8)
    hd95_R = hd95_per_region(pred_DHW[None], true_DHW[None], spacing)
    np.testing.assert_allclose(hd95_R, [expected_mm], rtol=1e-6)


def test_hd95_ignores_an_outlier_under_five_percent():
    # An 8-cube plus one far voxel: 296 distances 0 and one 9 * sqrt(3) (to the corner (11, 11, 11)); the 95th
    # percentile of 297 values sits at position 0.95 * 296 = 281.2, inside the zeros; the other direction is
    # all zeros (the cube's surface is part of the prediction's). The plain Hausdorff distance would be 15.6.
    true_DHW = _cube((24, 24, 24), (4, 4, 4), 8)
    pred_DHW = true_DHW.copy()
    pred_DHW[20, 20, 20] = True
    assert hd95_per_region(pred_DHW[None], true_DHW[None], 1.0)[0] == 0.0


def test_lesion_wise_detected_missed_and_false_positive():
    shape = (32, 32, 32)
    gt_hit = _cube(shape, (4, 4, 4), 4)  # 64 voxels
    gt_missed = _cube(shape, (20, 4, 4), 4)  # 12 empty voxels from gt_hit: dilations (3 each) never meet
    pred_hit = _cube(shape, (4, 4, 5), 4)  # gt_hit shifted 1 along W: overlap 4 * 4 * 3 = 48
    false_blob = _cube(shape, (20, 20, 20), 3)  # far from both dilated GT lesions
    scores = lesion_wise_scores(pred_hit | false_blob, gt_hit | gt_missed, 1.0, dilation_iters=3)
    d1 = 2 * 48 / (64 + 64)  # 0.75
    h1 = 1.0  # shift 1 voxel of 1 mm (16 of 56 surface voxels at 1 mm, none farther)
    # (d1 + 0 [missed] + 0 [false positive]) / (2 GT lesions + 1 FP) = 0.25
    assert scores["lesion_dice"] == pytest.approx((d1 + 0 + 0) / 3, rel=1e-6)
    assert scores["lesion_hd95"] == pytest.approx((h1 + PENALTY + PENALTY) / 3, rel=1e-6)
    counts = {k: scores[k] for k in ("num_gt_lesions", "num_pred_lesions", "tp", "fn", "fp")}
    assert counts == {"num_gt_lesions": 2, "num_pred_lesions": 2, "tp": 1, "fn": 1, "fp": 1}
    # Study-level Dice of the same masks: 2 * 48 / ((64 + 27) + 128) = 96 / 219
    whole = dice_per_region((pred_hit | false_blob)[None], (gt_hit | gt_missed)[None])
    assert whole[0] == pytest.approx(96 / 219, rel=1e-6)


def test_blob_within_the_dilation_margin_is_matched():
    shape = (32, 32, 32)
    gt_DHW = _cube(shape, (10, 10, 10), 4)  # D 10..13
    slab_DHW = _cube(shape, (16, 10, 10), (2, 4, 4))  # D 16..17: 3 voxels beyond the lesion, no overlap
    scores = lesion_wise_scores(slab_DHW, gt_DHW, 1.0, dilation_iters=3)  # dilation reaches D = 16
    assert (scores["tp"], scores["fn"], scores["fp"]) == (1, 0, 0)
    assert scores["lesion_dice"] == 0.0  # matched, but no voxel in common
    # GT -> slab: layers D = 13, 12, 11, 10 hold 16, 12, 12, 16 surface voxels at 3, 4, 5, 6 mm; the 95th
    # percentile of those 56 (position 52.25) is 6. Slab -> GT: 16 at 3, 16 at 4 -> 4. HD95 = max = 6.
    assert scores["lesion_hd95"] == pytest.approx(6.0, rel=1e-6)
    # Two dilation steps stop at D = 15: the lesion is missed and the slab is a false positive.
    short = lesion_wise_scores(slab_DHW, gt_DHW, 1.0, dilation_iters=2)
    assert (short["tp"], short["fn"], short["fp"]) == (0, 1, 1)
    assert (short["lesion_dice"], short["lesion_hd95"]) == (0.0, pytest.approx(PENALTY))


def test_dilation_uses_the_official_18_connected_structure():
    # generate_binary_structure(3, 2) moves at most 2 coordinates by 1 per step: 3 steps reach an offset
    # (a, b, c) from the corner (13, 13, 13) when max |.| <= 3 and |a| + |b| + |c| <= 6.
    gt_DHW = _cube((32, 32, 32), (10, 10, 10), 4)
    edge_voxel = np.zeros_like(gt_DHW)
    edge_voxel[16, 16, 13] = True  # offset (3, 3, 0): sum 6, reached
    corner_voxel = np.zeros_like(gt_DHW)
    corner_voxel[16, 16, 16] = True  # offset (3, 3, 3): sum 9, not reached (a full 3x3x3 cube would)
    assert lesion_wise_scores(edge_voxel, gt_DHW, 1.0)["tp"] == 1
    scores = lesion_wise_scores(corner_voxel, gt_DHW, 1.0)
    assert (scores["tp"], scores["fn"], scores["fp"]) == (0, 1, 1)


def test_nearby_gt_pieces_merge_into_one_lesion():
    shape = (32, 32, 32)
    piece_a = _cube(shape, (4, 4, 4), 4)  # D 4..7
    piece_b = _cube(shape, (11, 4, 4), 4)  # D 11..14: a gap of 3 voxels (D 8, 9, 10)
    gt_DHW = piece_a | piece_b
    # 3 steps: a's dilation reaches D = 10 and b's D = 8, so one dilated component, one lesion of 128 voxels,
    # predicted as piece_a alone: 2 * 64 / (64 + 128) = 2 / 3.
    merged = lesion_wise_scores(piece_a, gt_DHW, 1.0, dilation_iters=3)
    assert (merged["num_gt_lesions"], merged["tp"], merged["fp"]) == (1, 1, 0)
    assert merged["lesion_dice"] == pytest.approx(2 / 3, rel=1e-6)
    # 1 step: a reaches D = 8, b D = 10; D = 9 keeps them apart. a scores 1, b (not reached by piece_a,
    # which ends at D = 7) is missed: (1 + 0) / 2.
    apart = lesion_wise_scores(piece_a, gt_DHW, 1.0, dilation_iters=1)
    assert (apart["num_gt_lesions"], apart["tp"], apart["fn"], apart["fp"]) == (2, 1, 1, 0)
    assert apart["lesion_dice"] == pytest.approx(0.5, rel=1e-6)


def test_one_component_spanning_two_lesions_matches_both():
    shape = (32, 32, 32)
    gt_DHW = _cube(shape, (4, 4, 4), 4) | _cube(shape, (20, 4, 4), 4)
    bar_DHW = _cube(shape, (4, 4, 4), (20, 4, 4))  # 320 voxels covering both
    scores = lesion_wise_scores(bar_DHW, gt_DHW, 1.0)
    assert (scores["tp"], scores["fn"], scores["fp"], scores["num_pred_lesions"]) == (2, 0, 0, 1)
    # each lesion: 2 * 64 / (320 + 64) = 1 / 3
    assert scores["lesion_dice"] == pytest.approx(1 / 3, rel=1e-6)


def test_small_gt_lesions_are_dropped_but_their_match_is_no_false_positive():
    shape = (32, 32, 32)
    big, small = _cube(shape, (4, 4, 4), 4), _cube(shape, (20, 20, 20), 2)  # 64 and 8 voxels
    pred_DHW = big | small
    kept = lesion_wise_scores(pred_DHW, big | small, 1.0, min_lesion_voxels=7)  # 8 > 7: scored
    assert (kept["num_gt_lesions"], kept["tp"], kept["fp"], kept["lesion_dice"]) == (2, 2, 0, 1.0)
    # The script drops volumes <= threshold: 8 <= 8. The small prediction matched it, so it is no FP: 1 / 1.
    dropped = lesion_wise_scores(pred_DHW, big | small, 1.0, min_lesion_voxels=8)
    assert (dropped["num_gt_lesions"], dropped["num_dropped_gt_lesions"], dropped["fp"]) == (1, 1, 0)
    assert (dropped["lesion_dice"], dropped["lesion_hd95"]) == (1.0, 0.0)
    # A dropped lesion that is missed costs nothing either.
    missed_small = lesion_wise_scores(big, big | small, 1.0, min_lesion_voxels=8)
    assert (missed_small["fn"], missed_small["lesion_dice"]) == (0, 1.0)


def test_lesion_wise_empty_conventions():
    empty = np.zeros((16, 16, 16), bool)
    both = lesion_wise_scores(empty, empty, 1.0)
    assert (both["lesion_dice"], both["lesion_hd95"]) == (1.0, 0.0)
    assert all(both[k] == 0 for k in ("num_gt_lesions", "num_pred_lesions", "tp", "fn", "fp"))
    # Two predicted blobs and no GT: two false positives, (0 + 0) / 2 and (P + P) / 2.
    blobs = _cube(empty.shape, (1, 1, 1), 2) | _cube(empty.shape, (10, 10, 10), 2)
    only_pred = lesion_wise_scores(blobs, empty, 1.0, penalty_hd95=374.0)
    assert (only_pred["lesion_dice"], only_pred["lesion_hd95"], only_pred["fp"]) == (0.0, 374.0, 2)
    only_true = lesion_wise_scores(empty, blobs, 1.0)
    assert (only_true["lesion_dice"], only_true["lesion_hd95"], only_true["fn"]) == (0.0, PENALTY, 2)


def test_score_case_keys_and_values():
    shape = (32, 32, 32)
    label_DHW = np.zeros(shape, np.int64)
    label_DHW[4:12, 4:12, 4:12] = 2  # oedema
    label_DHW[6:10, 6:10, 6:10] = 3  # enhancing tumour inside it
    true_RDHW = regions_from_labels(label_DHW, BRATS_2023_REGIONS)
    pred_RDHW = true_RDHW.copy()
    pred_RDHW[2] = _cube(shape, (6, 6, 7), 4)  # ET shifted 1 along W: Dice 0.75, HD95 1 mm
    scores = score_case(pred_RDHW, true_RDHW, list(BRATS_2023_REGIONS), (1.0, 1.0, 1.0))
    metrics = ("Dice", "HD95", "LesionDice", "LesionHD95", "LesionTP", "LesionFN", "LesionFP")
    assert set(scores) == {f"{m}_{r}" for m in metrics for r in ("WT", "TC", "ET")}
    assert (scores["Dice_WT"], scores["HD95_WT"], scores["LesionDice_WT"]) == (1.0, 0.0, 1.0)
    for key, value in (("Dice_ET", 0.75), ("HD95_ET", 1.0), ("LesionDice_ET", 0.75), ("LesionHD95_ET", 1.0)):
        assert scores[key] == pytest.approx(value, rel=1e-6), key
    with pytest.raises(ValueError, match="region names"):
        score_case(pred_RDHW, true_RDHW, ["WT"], 1.0)


def _random_masks(rng, shape, densities):
    return np.stack([rng.random(shape) < p for p in densities])


def test_dice_matches_a_voxel_loop():
    rng = np.random.default_rng(0)
    densities = (0.0, 0.05, 0.3, 0.7)  # includes empty rows: empty/empty, empty/non-empty both ways
    for _ in range(3):
        pred_RDHW = _random_masks(rng, (6, 7, 8), rng.permutation(densities))
        true_RDHW = _random_masks(rng, (6, 7, 8), rng.permutation(densities))
        expected = []
        for pred_DHW, true_DHW in zip(pred_RDHW, true_RDHW, strict=True):
            both = size_p = size_t = 0
            for p, t in zip(pred_DHW.ravel().tolist(), true_DHW.ravel().tolist(), strict=True):
                both, size_p, size_t = both + (p and t), size_p + p, size_t + t
            expected.append(1.0 if size_p + size_t == 0 else 2.0 * both / (size_p + size_t))
        np.testing.assert_allclose(dice_per_region(pred_RDHW, true_RDHW), expected, rtol=1e-6)


def test_swapping_prediction_and_truth_keeps_dice_and_hd95():
    rng = np.random.default_rng(1)
    pred_RDHW = _random_masks(rng, (12, 12, 12), (0.1, 0.4, 0.0))
    true_RDHW = _random_masks(rng, (12, 12, 12), (0.3, 0.2, 0.1))
    spacing = (1.5, 1.0, 0.8)
    np.testing.assert_allclose(
        dice_per_region(pred_RDHW, true_RDHW), dice_per_region(true_RDHW, pred_RDHW), rtol=1e-12
    )
    np.testing.assert_allclose(
        hd95_per_region(pred_RDHW, true_RDHW, spacing),
        hd95_per_region(true_RDHW, pred_RDHW, spacing),
        rtol=1e-12,
    )


def _jittered_boxes(rng, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, truth) 32³ masks of random 2-4 voxel boxes in [3, 29): the prediction copies the
    truth's boxes moved by up to 1 voxel, skips every third (a miss) and adds every third of its own (a false
    alarm)."""
    pred_DHW, true_DHW = np.zeros((32, 32, 32), bool), np.zeros((32, 32, 32), bool)
    for k in range(count):
        corner, size, jitter = rng.integers(4, 25, 3), rng.integers(2, 5, 3), rng.integers(-1, 2, 3)
        if k % 3 != 2:
            true_DHW[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = True
        if k % 3 != 1:
            pred_DHW[tuple(slice(c, c + s) for c, s in zip(corner + jitter, size, strict=True))] = True
    return pred_DHW, true_DHW


def test_translating_both_masks_keeps_every_score():
    rng = np.random.default_rng(1)
    (pred_a, true_a), (pred_b, true_b) = _jittered_boxes(rng, 6), _jittered_boxes(rng, 6)
    pred_RDHW, true_RDHW = np.stack([pred_a, pred_b]), np.stack([true_a, true_b])
    spacing, names = (1.2, 0.9, 2.0), ["A", "B"]
    before = score_case(pred_RDHW, true_RDHW, names, spacing, dilation_iters=1)
    # Not a trivial case: both regions have matched, missed and false-positive lesions.
    assert all(before[f"Lesion{c}_{r}"] > 0 for c in ("TP", "FN", "FP") for r in names)
    # Boxes lie in [3, 29), so this shift moves nothing across the border (np.roll would wrap it).
    shift, axes = (3, -3, 2), (1, 2, 3)
    after = score_case(
        np.roll(pred_RDHW, shift, axes), np.roll(true_RDHW, shift, axes), names, spacing, dilation_iters=1
    )
    assert before.keys() == after.keys()
    for key in before:
        assert after[key] == pytest.approx(before[key], rel=1e-6), key
