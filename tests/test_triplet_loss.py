"""Location-weighted triplet loss (pLGG Eq. 1) vs a float64 loop reference; sampling, gradients, order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainvlp.losses import LOSSES
from brainvlp.losses.triplet import TripletLossConfig, candidate_mask
from brainvlp.spec import SpecError, parse

N, D = 6, 5


def reference_direction(anchor, other, candidates, location, margin, weight_same, use_location) -> float:
    """Mean over anchors of ReLU(d(a, p) - w d(a, n) + m), the negative the nearest candidate (loops)."""
    total = 0.0
    for j in range(anchor.shape[0]):
        dist = [1 - float(F.cosine_similarity(anchor[j], other[g], dim=0)) for g in range(other.shape[0])]
        negative = min((g for g in range(other.shape[0]) if candidates[j, g]), key=lambda g: dist[g])
        same = use_location and location[j] >= 0 and location[negative] == location[j]
        total += max(0.0, dist[j] - (weight_same if same else 1.0) * dist[negative] + margin)
    return total / anchor.shape[0]


def data(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image_emb": torch.randn(N, D, generator=gen, dtype=torch.float64),
        "text_emb": torch.randn(N, D, generator=gen, dtype=torch.float64),
        "location": torch.tensor([0, 1, 1, 2, -1, 0]),
    }


@pytest.mark.parametrize(("k", "use_location"), [(2, True), (2, False), (N - 1, True), (3, True)])
def test_matches_reference(k: int, use_location: bool) -> None:
    batch = data(k)
    config = TripletLossConfig(candidates=k, location_weight=use_location)
    loss = LOSSES.build(config)
    loss.generator = torch.Generator().manual_seed(7)
    got = loss(batch)
    draws = torch.Generator().manual_seed(7)  # the same two draws, image anchors first
    match = torch.arange(N)
    masks = [candidate_mask(match, N, k, draws), candidate_mask(match, N, k, draws)]
    image, text, location = batch["image_emb"], batch["text_emb"], batch["location"]
    expected = reference_direction(image, text, masks[0], location, 0.25, 0.5, use_location)
    expected += reference_direction(text, image, masks[1], location, 0.25, 0.5, use_location)
    assert got["triplet_loss"].item() == pytest.approx(expected, rel=1e-9)


def test_candidates_are_k_random_non_matches() -> None:
    match = torch.arange(8)
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([candidate_mask(match, 8, 2, gen) for _ in range(200)])
    assert (masks.sum(-1) == 2).all() and not masks[:, match, match].any()
    assert (masks.float().mean(0) + torch.eye(8) > 0.1).all()  # every non-match gets drawn
    assert candidate_mask(match, 8, 100).sum(-1).eq(7).all()  # k >= G - 1: every negative (hard)


def test_gradients_reach_both_towers_and_the_order_of_the_batch_does_not_matter() -> None:
    batch = {k: v.requires_grad_(v.is_floating_point()) for k, v in data(1).items()}
    loss = LOSSES.build(TripletLossConfig(candidates=N - 1))  # deterministic: hard negatives
    value = loss(batch)["triplet_loss"]
    value.backward()
    assert batch["image_emb"].grad.abs().sum() > 0 and batch["text_emb"].grad.abs().sum() > 0
    perm = torch.randperm(N)
    permuted = loss({k: v.detach()[perm] for k, v in batch.items()})["triplet_loss"]
    torch.testing.assert_close(permuted, value.detach())


def test_same_location_negatives_are_weighted_by_c() -> None:
    batch = data(2)
    batch["location"] = torch.zeros(N, dtype=torch.long)  # every negative shares the anchor's location
    weighted = LOSSES.build(TripletLossConfig(candidates=N - 1, same_location_coefficient=0.5))(batch)
    plain = LOSSES.build(TripletLossConfig(candidates=N - 1, location_weight=False))(batch)
    assert weighted["triplet_loss"] > plain["triplet_loss"]  # a halved negative distance is harder to beat


def test_config_errors_name_the_field() -> None:
    with pytest.raises(SpecError, match=r"loss\.same_location_coefficient: must be in \(0, 1\]"):
        parse(TripletLossConfig, {"name": "triplet", "same_location_coefficient": 0}, "loss")
