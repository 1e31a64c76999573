"""brat's matching and diversity terms (``brainvlp.losses.matching``) vs float64 loop references.

Every reference below is the formula of METHODS 3 ``brat`` written out with Python loops on tiny tensors;
PVA's is brat Algorithm 1 step by step (a list of all pairs sorted by descending similarity, ties in
row-major (q, s) order; take the top, drop every pair sharing its view or sentence, repeat).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainvlp.losses.matching import colbert_scores, dpp_loss, pva_matches, pva_scores, repulsion_loss

# ---------------------------------------------------------------------------------------------- references


def reference_pva(sim_QS: torch.Tensor, valid_S: torch.Tensor) -> tuple[float, set[tuple[int, int]]]:
    """Algorithm 1 on one pair: (mean of the matched entries or 0 without any, the matched (q, s))."""
    Q, S = sim_QS.shape
    # sorted() is stable, so equal similarities keep the row-major order they were listed in.
    remaining = sorted(
        ((float(sim_QS[q, s]), q, s) for q in range(Q) for s in range(S) if valid_S[s]),
        key=lambda pair: -pair[0],
    )
    matched = []
    while remaining:
        _, q, s = remaining[0]
        matched.append((q, s))
        remaining = [pair for pair in remaining if pair[1] != q and pair[2] != s]
    score = sum(float(sim_QS[q, s]) for q, s in matched) / len(matched) if matched else 0.0
    return score, set(matched)


def reference_pva_all(sim_BGQS: torch.Tensor, mask_GS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    B, G, Q, S = sim_BGQS.shape
    scores, matched = torch.zeros(B, G, dtype=torch.float64), torch.zeros(B, G, Q, S, dtype=torch.bool)
    for b in range(B):
        for g in range(G):
            scores[b, g], pairs = reference_pva(sim_BGQS[b, g], mask_GS[g])
            for q, s in pairs:
                matched[b, g, q, s] = True
    return scores, matched


def reference_colbert(sim_BGQS: torch.Tensor, mask_GS: torch.Tensor) -> torch.Tensor:
    B, G, Q, S = sim_BGQS.shape
    scores = torch.zeros(B, G, dtype=torch.float64)
    for b in range(B):
        for g in range(G):
            best = [max(float(sim_BGQS[b, g, q, s]) for q in range(Q)) for s in range(S) if mask_GS[g, s]]
            scores[b, g] = sum(best) / len(best) if best else 0.0
    return scores


def reference_dpp(attn_BQP: torch.Tensor, eps: float) -> float:
    B, Q, P = attn_BQP.shape
    total = 0.0
    for b in range(B):
        c = attn_BQP[b].double()
        h = [
            -sum(float(c[i, k]) * math.log(float(c[i, k])) for k in range(P) if c[i, k] > 0) for i in range(Q)
        ]
        kernel = torch.zeros(Q, Q, dtype=torch.float64)
        for i in range(Q):
            for j in range(Q):
                kernel[i, j] = h[i] * float(c[i] @ c[j]) * h[j]
        total += -math.log(float(torch.det(kernel + eps * torch.eye(Q, dtype=torch.float64))))
    return total / B


def reference_repulsion(views_BQD: torch.Tensor) -> float:
    B, Q, _ = views_BQD.shape
    total = 0.0
    for b in range(B):
        pairs = [
            float(F.cosine_similarity(views_BQD[b, i], views_BQD[b, j], dim=0))
            for i in range(Q)
            for j in range(Q)
            if i != j
        ]
        total += sum(pairs) / len(pairs)
    return total / B


# ------------------------------------------------------------------------------------------------- helpers


def random_mask(G: int, S: int, generator: torch.Generator, min_valid: int = 0) -> torch.Tensor:
    """Random valid-sentence counts, padded at the end for most reports and scattered for the rest."""
    counts = torch.randint(min_valid, S + 1, (G,), generator=generator)
    mask = torch.arange(S)[None, :] < counts[:, None]
    for g in range(0, G, 3):
        mask[g] = mask[g, torch.randperm(S, generator=generator)]
    return mask


def random_pair_inputs(
    B: int, G: int, Q: int, S: int, seed: int, *, ties: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if ties:  # five distinct values: most matrices hold many equal entries
        sim = torch.randint(-2, 3, (B, G, Q, S), generator=generator).double() / 2
    else:
        sim = torch.rand(B, G, Q, S, generator=generator, dtype=torch.float64) * 2 - 1
    return sim, random_mask(G, S, generator)


# --------------------------------------------------------------------------------------------------- PVA


def test_pva_matches_algorithm_1_over_many_seeds() -> None:
    for seed in range(40):
        sim, mask = random_pair_inputs(4, 8, 6, 5, seed)
        want_scores, want_matched = reference_pva_all(sim, mask)
        assert torch.equal(pva_matches(sim, mask), want_matched), f"seed {seed}"
        torch.testing.assert_close(pva_scores(sim, mask), want_scores)


@pytest.mark.parametrize(("Q", "S"), [(3, 7), (7, 3), (5, 5), (1, 4), (4, 1)])
def test_pva_with_more_or_fewer_views_than_sentences(Q: int, S: int) -> None:
    for seed in range(10):
        sim, mask = random_pair_inputs(3, 4, Q, S, seed)
        want_scores, want_matched = reference_pva_all(sim, mask)
        assert torch.equal(pva_matches(sim, mask), want_matched)
        torch.testing.assert_close(pva_scores(sim, mask), want_scores)


def test_pva_ties_break_like_algorithm_1() -> None:
    for seed in range(40):
        sim, mask = random_pair_inputs(4, 8, 6, 5, seed, ties=True)
        want_scores, want_matched = reference_pva_all(sim, mask)
        assert torch.equal(pva_matches(sim, mask), want_matched), f"seed {seed}"
        torch.testing.assert_close(pva_scores(sim, mask), want_scores)
    # All equal: the first row-major entry each time, i.e. the diagonal.
    flat = torch.zeros(1, 1, 3, 4)
    assert torch.equal(pva_matches(flat, torch.ones(1, 4, dtype=torch.bool))[0, 0], torch.eye(3, 4).bool())


def test_pva_matches_each_view_and_valid_sentence_at_most_once() -> None:
    sim, mask = random_pair_inputs(3, 6, 5, 7, seed=11)
    matched = pva_matches(sim, mask)
    assert matched.sum(dim=-1).max() <= 1 and matched.sum(dim=-2).max() <= 1
    assert not (matched & ~mask[None, :, None, :]).any()
    want_counts = mask.sum(dim=-1).clamp(max=5).expand(3, 6)
    assert torch.equal(matched.sum(dim=(-2, -1)), want_counts)


def test_pva_ignores_padded_sentence_values() -> None:
    sim, mask = random_pair_inputs(2, 5, 4, 6, seed=12)
    noisy = sim.masked_fill(~mask[None, :, None, :], 100.0)
    assert torch.equal(pva_matches(noisy, mask), pva_matches(sim, mask))
    torch.testing.assert_close(pva_scores(noisy, mask), pva_scores(sim, mask))


def test_pva_report_without_sentences_scores_zero_without_gradient() -> None:
    sim, mask = random_pair_inputs(2, 3, 4, 5, seed=13)
    mask[1] = False
    sim.requires_grad_(True)
    scores = pva_scores(sim, mask)
    assert torch.equal(scores[:, 1].detach(), torch.zeros(2, dtype=torch.float64))
    scores.sum().backward()
    assert torch.equal(sim.grad[:, 1], torch.zeros_like(sim.grad[:, 1]))
    assert not pva_matches(sim, mask)[:, 1].any()


def test_pva_gradient_reaches_matched_entries_only() -> None:
    sim, mask = random_pair_inputs(3, 4, 5, 4, seed=14)
    sim.requires_grad_(True)
    matched = pva_matches(sim, mask)
    pva_scores(sim, mask).sum().backward()
    # d mean / d entry = 1 / number of matches for a matched entry, 0 elsewhere.
    counts = matched.sum(dim=(-2, -1), keepdim=True).clamp(min=1)
    torch.testing.assert_close(sim.grad, matched.double() / counts)
    # Away from ties the matching is locally constant, so the score is smooth there.
    assert torch.autograd.gradcheck(lambda x: pva_scores(x, mask), (sim,))


def test_pva_and_colbert_are_equivariant_to_candidates_and_invariant_to_views_and_sentences() -> None:
    sim, mask = random_pair_inputs(3, 6, 5, 4, seed=15)
    generator = torch.Generator().manual_seed(15)
    candidates, views, sentences = (torch.randperm(n, generator=generator) for n in (6, 5, 4))
    for score in (pva_scores, colbert_scores):
        base = score(sim, mask)
        torch.testing.assert_close(score(sim[:, candidates], mask[candidates]), base[:, candidates])
        torch.testing.assert_close(score(sim[:, :, views], mask), base)
        torch.testing.assert_close(score(sim[..., sentences], mask[:, sentences]), base)


def test_pva_under_bf16_matches_the_reference_on_the_same_values() -> None:
    sim, mask = random_pair_inputs(2, 4, 6, 5, seed=16)
    sim_bf16 = sim.bfloat16()
    _, want_matched = reference_pva_all(sim_bf16.double(), mask)
    assert torch.equal(pva_matches(sim_bf16, mask), want_matched)
    assert pva_scores(sim_bf16, mask).dtype == torch.bfloat16


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
def test_pva_on_cuda_replays_a_captured_graph_with_the_reference_matches() -> None:
    from brainvlp.losses import matching

    matching._GRAPHS.clear()
    for seed in range(6):  # one shape: captured once, replayed with new values (ties included)
        sim, mask = random_pair_inputs(3, 5, 6, 4, seed, ties=seed % 2 == 1)
        sim = sim.float().double()  # the values the GPU sees
        want_scores, want_matched = reference_pva_all(sim, mask)
        sim_cuda = sim.float().cuda().requires_grad_(True)
        assert torch.equal(pva_matches(sim_cuda, mask.cuda()).cpu(), want_matched), f"seed {seed}"
        scores = pva_scores(sim_cuda, mask.cuda())
        torch.testing.assert_close(scores.cpu().double(), want_scores, rtol=1e-6, atol=1e-6)
        scores.sum().backward()
        assert torch.equal(sim_cuda.grad.cpu() != 0, want_matched)
    assert len(matching._GRAPHS) == 1


@needs_cuda
def test_pva_on_cuda_keeps_few_graphs_and_runs_large_inputs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    from brainvlp.losses import matching

    matching._GRAPHS.clear()
    for Q in range(1, matching._GRAPH_SHAPES + 3):
        sim, mask = random_pair_inputs(2, 3, Q, 5, seed=Q)
        _, want_matched = reference_pva_all(sim, mask)
        assert torch.equal(pva_matches(sim.cuda(), mask.cuda()).cpu(), want_matched)
    assert len(matching._GRAPHS) == matching._GRAPH_SHAPES
    monkeypatch.setattr(matching, "_GRAPH_MAX_BYTES", 0)
    sim, mask = random_pair_inputs(2, 3, 9, 5, seed=0)
    _, want_matched = reference_pva_all(sim, mask)
    assert torch.equal(pva_matches(sim.cuda(), mask.cuda()).cpu(), want_matched)
    assert (tuple(sim.shape), sim.dtype, sim.cuda().device) not in matching._GRAPHS


def test_pair_inputs_are_validated() -> None:
    sim = torch.zeros(2, 3, 4, 5)
    with pytest.raises(ValueError, match="bool"):
        pva_scores(sim, torch.ones(3, 5))
    with pytest.raises(ValueError, match="G x S"):
        pva_scores(sim, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="B x G x Q x S"):
        colbert_scores(sim[0], torch.ones(3, 5, dtype=torch.bool))


# ----------------------------------------------------------------------------------------------- ColBERT


def test_colbert_matches_reference_and_gradcheck() -> None:
    sim, mask = random_pair_inputs(3, 5, 4, 6, seed=17)
    mask[2] = False
    torch.testing.assert_close(colbert_scores(sim, mask), reference_colbert(sim, mask))
    sim.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: colbert_scores(x, mask), (sim,))


def test_colbert_bounds_pva_when_every_sentence_is_matched() -> None:
    """With Q >= S every valid sentence gets a view, never a better one than its best: PVA <= ColBERT."""
    sim, mask = random_pair_inputs(4, 6, 6, 5, seed=18)
    assert (colbert_scores(sim, mask) >= pva_scores(sim, mask) - 1e-12).all()


# --------------------------------------------------------------------------------------------------- DPP


def random_attention(B: int, Q: int, P: int, seed: int, sharpness: float = 2.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, Q, P, generator=generator, dtype=torch.float64)
    return torch.softmax(sharpness * logits, dim=-1)


@pytest.mark.parametrize(("Q", "P", "eps"), [(4, 16, 1e-6), (6, 10, 1e-3), (5, 3, 1e-6)])
def test_dpp_matches_reference(Q: int, P: int, eps: float) -> None:
    attn = random_attention(3, Q, P, seed=Q * P)
    got = dpp_loss(attn, eps=eps)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(reference_dpp(attn, eps), dtype=torch.float64))


def test_dpp_gradcheck_and_query_permutation() -> None:
    logits = torch.randn(2, 4, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: dpp_loss(torch.softmax(x, dim=-1)), (logits,))
    attn = random_attention(2, 5, 12, seed=19)
    torch.testing.assert_close(dpp_loss(attn[:, torch.randperm(5)]), dpp_loss(attn))


def test_dpp_runs_in_float32_under_bf16_inputs_and_autocast() -> None:
    attn = random_attention(4, 8, 64, seed=20).float()
    want = dpp_loss(attn)
    got = dpp_loss(attn.bfloat16())
    assert want.dtype == got.dtype == torch.float32
    # The bf16 input is exactly representable in float32, so only the input rounding differs.
    assert torch.equal(got, dpp_loss(attn.bfloat16().float()))
    torch.testing.assert_close(got, want, rtol=1e-2, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = dpp_loss(attn)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, want)


def test_dpp_prefers_diverse_spread_out_attention() -> None:
    P = 16
    spread = torch.zeros(1, 4, P)  # four disjoint blocks of uniform attention
    for i in range(4):
        spread[0, i, 4 * i : 4 * i + 4] = 0.25
    collapsed = spread[:, :1].expand(1, 4, P)  # every query on the same block
    peaked = torch.eye(4, P)[None]  # disjoint but one position each: entropy 0
    assert dpp_loss(spread) < dpp_loss(collapsed) and dpp_loss(spread) < dpp_loss(peaked)


def test_dpp_collapsed_and_one_hot_maps_stay_finite() -> None:
    """Rank-deficient kernels: L + eps I is singular up to rounding; the loss and its gradient stay finite."""
    eps = 1e-6
    one_map = torch.softmax(torch.randn(1, 1, 32), dim=-1)
    for attn in (one_map.expand(2, 8, 32).clone(), torch.eye(8, 32)[None].repeat(2, 1, 1)):
        attn.requires_grad_(True)
        loss = dpp_loss(attn, eps=eps)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(attn.grad).all()
        # Never above the loss of L = 0, -Q log eps; close to the float64 value of the same kernel.
        assert loss <= -8 * math.log(eps) + 1e-3
        torch.testing.assert_close(loss.double(), dpp_loss(attn.detach().double(), eps=eps), rtol=0.1, atol=0)


def test_dpp_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="eps"):
        dpp_loss(torch.full((1, 2, 4), 0.25), eps=0.0)
    with pytest.raises(ValueError, match="B x Q x P"):
        dpp_loss(torch.full((2, 4), 0.25))


# --------------------------------------------------------------------------------------------- repulsion


def test_repulsion_matches_reference_and_gradcheck() -> None:
    views = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(
        repulsion_loss(views), torch.tensor(reference_repulsion(views.detach()), dtype=torch.float64)
    )
    assert torch.autograd.gradcheck(repulsion_loss, (views,))


def test_repulsion_extremes_and_invariances() -> None:
    orthogonal = torch.eye(4, 6, dtype=torch.float64)[None]
    identical = torch.randn(1, 1, 6, dtype=torch.float64).expand(1, 4, 6)
    torch.testing.assert_close(repulsion_loss(orthogonal), torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(repulsion_loss(identical), torch.tensor(1.0, dtype=torch.float64))
    views = torch.randn(2, 5, 3, dtype=torch.float64)
    scaled = views * torch.rand(2, 5, 1, dtype=torch.float64).add(0.5)
    torch.testing.assert_close(repulsion_loss(scaled), repulsion_loss(views))
    torch.testing.assert_close(repulsion_loss(views[:, torch.randperm(5)]), repulsion_loss(views))
    with pytest.raises(ValueError, match="Q >= 2"):
        repulsion_loss(torch.randn(2, 1, 3))
