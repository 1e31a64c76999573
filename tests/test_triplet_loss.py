"""Location-weighted triplet loss (pLGG Eq. 1) vs a float64 loop reference; sampling, gradients, order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from brainvlp.losses.config import LOSSES, TripletLossConfig
from brainvlp.losses.triplet import candidate_mask
from brainvlp.models.config import LocalAlignConfig
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


def local_data(seed: int) -> dict[str, torch.Tensor]:
    """Local representations as ``LocalAlignment`` gives them: P image positions, T tokens (some padding)."""
    gen = torch.Generator().manual_seed(seed)
    text_mask = torch.arange(4) < torch.tensor([[4], [3], [4], [2], [4], [3]])
    text, text_weighted = (torch.randn(N, 4, 3, generator=gen, dtype=torch.float64) * text_mask[..., None]
                           for _ in range(2))  # fmt: skip
    return {
        **data(seed),
        "image_local": torch.randn(N, 2, 3, generator=gen, dtype=torch.float64),
        "image_weighted": torch.randn(N, 2, 3, generator=gen, dtype=torch.float64),
        "text_local": text,
        "text_weighted": text_weighted,
        "text_mask": text_mask,
    }


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.0, 2.0)])
def test_local_term_matches_reference(alpha: float, beta: float) -> None:
    """Eq. 2-3 with hard negatives (deterministic): every local representation against its weighted
    counterpart and back, per modality, flattened; margin 0.4, no location weight."""
    batch = local_data(3)
    config = TripletLossConfig(candidates=N - 1, global_weight=alpha, local_weight=beta, max_tokens=6)
    got = LOSSES.build(config)(batch)["triplet_loss"]
    every = torch.ones(N, N, dtype=torch.bool) & ~torch.eye(N, dtype=torch.bool)
    location = batch["location"]
    global_term = reference_direction(batch["image_emb"], batch["text_emb"], every, location, 0.25, 0.5, True)
    global_term += reference_direction(
        batch["text_emb"], batch["image_emb"], every, location, 0.25, 0.5, True
    )
    local_term = 0.0
    for local, weighted in (("image_local", "image_weighted"), ("text_local", "text_weighted")):
        a, b = batch[local].flatten(1), batch[weighted].flatten(1)
        local_term += reference_direction(a, b, every, location, 0.4, 1.0, False)
        local_term += reference_direction(b, a, every, location, 0.4, 1.0, False)
    assert got.item() == pytest.approx(alpha * global_term + beta * local_term, rel=1e-9)


def test_local_term_gradients_and_token_limit() -> None:
    batch = local_data(4)
    keys = ("image_local", "image_weighted", "text_local", "text_weighted")
    loss = LOSSES.build(TripletLossConfig(candidates=N - 1, local_weight=1.0, max_tokens=4))
    assert "local" in loss.inputs

    def value(*tensors):
        return loss({**batch, **dict(zip(keys, tensors, strict=True))})["triplet_loss"]

    assert torch.autograd.gradcheck(value, tuple(batch[k].clone().requires_grad_(True) for k in keys))
    with pytest.raises(ValueError, match=r"4 tokens but loss\.max_tokens is 3"):
        LOSSES.build(TripletLossConfig(local_weight=1.0, max_tokens=3))(batch)


def test_local_alignment_module_masks_padding_and_attends_row_stochastically() -> None:
    from brainvlp.models.local_align import LocalAlignment

    torch.manual_seed(0)
    module = LocalAlignment(LocalAlignConfig(dim=8, num_heads=2), image_dim=5, text_dim=7)
    content = torch.tensor([[False, True, True, False], [False, True, False, False]])
    out = module(torch.randn(2, 3, 5), torch.randn(2, 4, 7), content)
    assert out["image_weighted"].shape == (2, 3, 8) and out["text_weighted"].shape == (2, 4, 8)
    assert (out["text_local"][~content] == 0).all() and (out["text_weighted"][~content] == 0).all()
    torch.testing.assert_close(out["image_attn"].sum(-1), torch.ones(2, 3))
    assert (out["image_attn"][~content[:, None, :].expand(2, 3, 4)] == 0).all()  # no attention to padding
