"""SeLIP: clause similarity and the loss against float64 loop references on tiny batches; gradients,
permutation invariance, studies without clauses, and the padding limits."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch

from brainvlp.data.clauses import clause_words, encode_clauses
from brainvlp.findings import NORMAL_CLAUSE, clause_text
from brainvlp.losses.config import LOSSES, SelipLossConfig
from brainvlp.losses.selip import clause_similarity

LESION = {"modality": "FLAIR", "side": "left", "site": "frontal lobe", "appearance": "non-enhancing lesion"}
WMD = {"modality": "FLAIR", "side": "bilateral", "site": "white matter", "appearance": "white matter spots"}
STUDIES = [
    [LESION],
    [LESION, WMD],
    [dict(NORMAL_CLAUSE)],
    [{**LESION, "side": "right", "appearance": "enhancing mass"}, WMD],
    [],  # no clauses: no target
    [dict(NORMAL_CLAUSE)],
]


def reference_similarity(a: list[dict], b: list[dict]) -> float:
    """Eq. 8-10 with Python multisets."""
    if not a or not b:
        return 0.0
    total = 0.0
    for x in a:
        for y in b:
            wx, wy = Counter(clause_words(clause_text(x))), Counter(clause_words(clause_text(y)))
            dice = 2 * sum((wx & wy).values()) / (sum(wx.values()) + sum(wy.values()))
            total += 0.5 * dice * ((x["site"] == y["site"]) + (x["appearance"] == y["appearance"]))
    return total / (len(a) * len(b))


def batch_of(studies: list[list[dict]], seed: int = 0) -> dict[str, torch.Tensor]:
    findings = [json.dumps({"clauses": clauses}) if clauses else "" for clauses in studies]
    encoded = encode_clauses(findings, [f"s{i}" for i in range(len(studies))])
    gen = torch.Generator().manual_seed(seed)
    return {
        "image_emb": torch.randn(len(studies), 4, generator=gen, dtype=torch.float64),
        "text_emb": torch.randn(len(studies), 4, generator=gen, dtype=torch.float64),
        **{key: torch.from_numpy(value) for key, value in encoded.items()},
    }


def test_clause_similarity_matches_multiset_reference() -> None:
    batch = batch_of(STUDIES)
    keys = ("clause_words", "clause_site", "clause_appearance", "clause_mask")
    tensors = [batch[key] for key in keys]
    got = clause_similarity(*tensors, *tensors)
    expected = torch.tensor(
        [[reference_similarity(a, b) for b in STUDIES] for a in STUDIES], dtype=torch.float64
    )
    torch.testing.assert_close(got, expected)
    assert "white" in clause_words(clause_text(WMD)) and got[1, 3] > 0  # repeated words counted as a multiset


def reference_loss(batch: dict, tau: float, alpha: float, beta: float) -> float:
    image = torch.nn.functional.normalize(batch["image_emb"], dim=-1)
    text = torch.nn.functional.normalize(batch["text_emb"], dim=-1)
    n = image.shape[0]
    sims = [[reference_similarity(STUDIES[i], STUDIES[j]) for j in range(n)] for i in range(n)]
    clip, kl, rows = 0.0, 0.0, 0
    for i in range(n):
        for queries, candidates in ((image, text), (text, image)):
            logits = [float(queries[i] @ candidates[j]) / tau for j in range(n)]
            log_z = math.log(sum(math.exp(v) for v in logits))
            clip += (log_z - logits[i]) / 2
            total = sum(sims[i])
            if total > 0:
                target = [s / total for s in sims[i]]
                kl += (
                    sum(t * (math.log(t) - (v - log_z)) for t, v in zip(target, logits, strict=True) if t > 0)
                    / 2
                )
        rows += sum(sims[i]) > 0
    return alpha * clip / n + beta * kl / rows


@pytest.mark.parametrize(("tau", "alpha", "beta"), [(0.07, 1.0, 1.0), (0.5, 0.3, 2.0), (0.2, 0.0, 1.0)])
def test_loss_matches_reference_float64(tau: float, alpha: float, beta: float) -> None:
    batch = batch_of(STUDIES)
    config = SelipLossConfig(temperature=tau, clip_weight=alpha, similarity_weight=beta)
    out = LOSSES.build(config).double()(batch)
    torch.testing.assert_close(out["contrastive_loss"] + out["similarity_loss"], torch.tensor(
        reference_loss(batch, tau, alpha, beta), dtype=torch.float64))  # fmt: skip


def test_gradients_flow_and_batch_order_does_not_matter() -> None:
    batch = batch_of(STUDIES, seed=1)
    loss = LOSSES.build(SelipLossConfig()).double()

    def value(data: dict, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        out = loss({**data, "image_emb": image, "text_emb": text})
        return out["contrastive_loss"] + out["similarity_loss"]

    inputs = (batch["image_emb"].requires_grad_(True), batch["text_emb"].requires_grad_(True))
    assert torch.autograd.gradcheck(lambda image, text: value(batch, image, text), inputs)
    value(batch, *inputs).backward()
    assert loss.scale.log_scale.grad is not None and loss.scale.log_scale.grad != 0
    perm = torch.randperm(len(STUDIES))
    permuted = {k: v.detach()[perm] for k, v in batch.items()}
    torch.testing.assert_close(
        value(permuted, permuted["image_emb"], permuted["text_emb"]).detach(),
        value(batch, *inputs).detach(),
    )


def test_matching_the_soft_target_beats_one_hot_alignment() -> None:
    """With two identical normal reports, a model that scores both images equally against them pays less
    similarity loss than one that separates them."""
    batch = batch_of([[dict(NORMAL_CLAUSE)], [dict(NORMAL_CLAUSE)]])
    loss = LOSSES.build(SelipLossConfig(temperature=0.1))
    batch["image_emb"] = batch["text_emb"] = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    separated = loss(batch)["similarity_loss"]
    batch["image_emb"] = batch["text_emb"] = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    assert loss(batch)["similarity_loss"] < separated


def test_too_many_clauses_names_the_setting() -> None:
    batch = batch_of([[LESION, WMD, LESION], [LESION]])
    with pytest.raises(ValueError, match=r"3 clauses but loss\.max_clauses is 2"):
        LOSSES.build(SelipLossConfig(max_clauses=2)).double()(batch)


def test_malformed_clauses_name_the_study() -> None:
    with pytest.raises(ValueError, match=r"study s1: findings clauses: clause 0: missing field 'site'"):
        encode_clauses(["", json.dumps({"clauses": [{"modality": "T1", "side": "left", "appearance": "x"}]})],
                       ["s0", "s1"])  # fmt: skip
