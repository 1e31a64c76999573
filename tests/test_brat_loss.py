"""brat and qformer_itc losses vs float64 loop references (PVA / ColBERT / max-over-views scores, DPP,
repulsion, ITG); gradients and batch-permutation invariance. The 2-process gather test is in
test_contrastive_losses.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from brainvlp.losses.config import LOSSES, BratLossConfig, QFormerItcLossConfig
from brainvlp.spec import SpecError, parse
from test_matching import reference_colbert, reference_dpp, reference_pva_all, reference_repulsion

B, Q, S, D, P, T, V = 5, 4, 3, 6, 7, 5, 11


def reference_symmetric_ce(scores_BB: torch.Tensor, scale: float) -> float:
    """(CE over rows + CE over columns) / 2 with the match on the diagonal, term by term."""
    n = scores_BB.shape[0]
    total = 0.0
    for i in range(n):
        rows = [math.exp(scale * float(scores_BB[i, k])) for k in range(n)]
        cols = [math.exp(scale * float(scores_BB[k, i])) for k in range(n)]
        total += -math.log(rows[i] / sum(rows)) - math.log(cols[i] / sum(cols))
    return total / (2 * n)


def reference_itg(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    terms = []
    for b in range(logits_BTV.shape[0]):
        for t in range(1, logits_BTV.shape[1]):
            if mask_BT[b, t]:
                row = [math.exp(float(x)) for x in logits_BTV[b, t - 1]]
                terms.append(-math.log(row[int(ids_BT[b, t])] / sum(row)))
    return sum(terms) / len(terms)


def batch(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, S, generator=gen) < 0.7
    mask[:, 0] = True  # every report keeps at least one sentence, as ingest guarantees
    attention = torch.ones(B, T, dtype=torch.long)
    attention[0, 3:] = 0
    return {
        "views": torch.randn(B, Q, D, generator=gen, dtype=torch.float64),
        "attn": torch.softmax(torch.randn(B, Q, P, generator=gen, dtype=torch.float64), -1),
        "sentences": torch.randn(B, S, D, generator=gen, dtype=torch.float64),
        "sentence_mask": mask,
        "text_emb": torch.randn(B, D, generator=gen, dtype=torch.float64),
        "itg_logits": torch.randn(B, T, V, generator=gen, dtype=torch.float64),
        "input_ids": torch.randint(0, V, (B, T), generator=gen),
        "attention_mask": attention,
    }


def view_sentence_sims(data: dict[str, torch.Tensor]) -> torch.Tensor:
    views, sentences = F.normalize(data["views"], dim=-1), F.normalize(data["sentences"], dim=-1)
    return torch.einsum("bqd,gsd->bgqs", views, sentences)


def brat(**overrides) -> torch.nn.Module:
    config = {"temperature": 0.1, "diversity": "none", "itg_weight": 0.0, "max_sentences": S} | overrides
    return LOSSES.build(BratLossConfig(**config))


@pytest.mark.parametrize("matching", ["pva", "colbert"])
def test_brat_contrastive_matches_reference(matching: str) -> None:
    data = batch(0)
    sims = view_sentence_sims(data)
    if matching == "pva":
        scores = reference_pva_all(sims, data["sentence_mask"])[0]
    else:
        scores = reference_colbert(sims, data["sentence_mask"])
    got = brat(matching=matching)(data)
    assert set(got) == {"contrastive_loss", "logit_scale"}
    assert got["contrastive_loss"].item() == pytest.approx(reference_symmetric_ce(scores, 10.0), rel=1e-5)


def test_brat_adds_weighted_dpp_and_itg_terms() -> None:
    data = batch(1)
    got = brat(diversity="dpp", diversity_weight=0.5, itg_weight=2.0)(data)
    assert got["dpp_loss"].item() == pytest.approx(0.5 * reference_dpp(data["attn"], 1e-6), rel=1e-4)
    expected = reference_itg(data["itg_logits"], data["input_ids"], data["attention_mask"])
    assert got["itg_loss"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_brat_repulsion_term() -> None:
    data = batch(2)
    got = brat(diversity="repulsion")(data)
    assert got["repulsion_loss"].item() == pytest.approx(reference_repulsion(data["views"]), rel=1e-5)


def test_brat_declares_what_it_reads_and_how_retrieval_scores() -> None:
    assert brat().inputs == {"views", "sentences"} and brat().scoring == "pva"
    assert brat(itg_weight=1.0).inputs == {"views", "sentences", "itg"}
    assert brat(matching="colbert").scoring == "colbert"
    with pytest.raises(SpecError, match=r"loss\.diversity: 'qd' is not one of"):
        parse(BratLossConfig, {"name": "brat", "diversity": "qd"}, "loss")


def test_brat_gradients_and_batch_permutation_invariance() -> None:
    data = {k: v.requires_grad_(True) if v.is_floating_point() else v for k, v in batch(3).items()}
    loss = brat(diversity="dpp", itg_weight=1.0)
    outputs = loss(data)
    sum(v for k, v in outputs.items() if k.endswith("_loss")).backward()
    for key in ("views", "sentences", "attn", "itg_logits"):
        assert data[key].grad.abs().sum() > 0, key
    assert loss.scale.log_scale.grad != 0
    perm = torch.randperm(B)
    permuted = brat()({k: v.detach()[perm] for k, v in data.items()})["contrastive_loss"]
    torch.testing.assert_close(permuted, brat()({k: v.detach() for k, v in data.items()})["contrastive_loss"])


def test_qformer_itc_scores_the_best_view_against_the_report() -> None:
    data = batch(4)
    views, text = F.normalize(data["views"], dim=-1), F.normalize(data["text_emb"], dim=-1)
    scores = torch.tensor(
        [[max(float(views[b, q] @ text[g]) for q in range(Q)) for g in range(B)] for b in range(B)]
    )
    loss = LOSSES.build(QFormerItcLossConfig(temperature=0.1))
    assert loss.scoring == "max_query" and loss.inputs == {"views", "report"}
    got = loss(data)["contrastive_loss"].item()
    assert got == pytest.approx(reference_symmetric_ce(scores, 10.0), rel=1e-5)
    with_qd = LOSSES.build(QFormerItcLossConfig(diversity="dpp"))(data)
    assert with_qd["dpp_loss"].item() == pytest.approx(reference_dpp(data["attn"], 1e-6), rel=1e-4)
