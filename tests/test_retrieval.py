"""Retrieval metrics against an obviously-correct pure-Python reference, plus their invariances and chance.

Shape legend: N items (queries == candidates), D embedding width.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import numpy as np
import pytest
import torch

from brainvlp.evaluate import retrieval
from brainvlp.evaluate.retrieval import chance_levels, retrieval_metrics, retrieval_metrics_from_scores

LABELS = ("enhancing_lesion", "midline_shift", "side:left", "side:right", "prior_surgery")


def _reference(image_ND, text_ND, finding_sets=None, ks=(1, 5, 10)):
    """Double loops over plain floats; ties broken as documented (match first, then lower index)."""

    def unit(row):
        norm = math.sqrt(sum(x * x for x in row))
        return [x / norm for x in row]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    images, texts = [unit(r) for r in image_ND.tolist()], [unit(r) for r in text_ND.tolist()]
    num = len(images)
    out = {}
    for direction, queries, cands in (("text_to_image", texts, images), ("image_to_text", images, texts)):
        ranks = []
        for q in range(num):
            sims = [cos(queries[q], cands[j]) for j in range(num)]
            ranks.append(1 + sum(s > sims[q] for s in sims))
        res = {f"R@{k}": sum(r <= k for r in ranks) / num for k in ks}
        res.update(MdR=statistics.median(ranks), MnR=sum(ranks) / num, num_queries=num, num_candidates=num)
        if finding_sets is not None:
            pool = [i for i in range(num) if finding_sets[i]]
            precisions, hits = [], []
            for q in pool:
                sims = {j: cos(queries[q], cands[j]) for j in pool}
                top = sorted(pool, key=lambda j, q=q, sims=sims: (-sims[j], j != q, j))[:5]
                precisions.append(sum(bool(finding_sets[j] & finding_sets[q]) for j in top) / len(top))
                hits.append(any(finding_sets[j] == finding_sets[q] for j in top))
            res.update({"P@5(F)": sum(precisions) / len(pool), "R@5(F)": sum(hits) / len(pool)})
            res["num_finding_queries"] = len(pool)
        out[direction] = res
    return out


def _random_findings(rng: random.Random, num: int, empty_share: float = 0.2) -> list[frozenset[str]]:
    return [
        frozenset() if rng.random() < empty_share else frozenset(rng.sample(LABELS, rng.randint(1, 2)))
        for _ in range(num)
    ]


def _noisy_pairs(seed: int, num: int, width: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image_ND = torch.randn(num, width, generator=gen, dtype=torch.float64)
    return image_ND, image_ND + noise * torch.randn(num, width, generator=gen, dtype=torch.float64)


def _assert_metrics_close(actual, expected):
    assert actual.keys() == expected.keys()
    for direction in expected:
        assert actual[direction] == pytest.approx(expected[direction], nan_ok=True), direction


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk_entries", [1 << 24, 7])
def test_matches_reference(seed, chunk_entries, monkeypatch):
    monkeypatch.setattr(retrieval, "_CHUNK_ENTRIES", chunk_entries)  # 7 entries: one query row per chunk
    image_ND, text_ND = _noisy_pairs(seed, num=23, width=6, noise=1.0)
    finding_sets = _random_findings(random.Random(seed), 23)
    ks = (1, 3, 5, 10, 40)
    expected = _reference(image_ND, text_ND, finding_sets, ks)
    _assert_metrics_close(retrieval_metrics(image_ND, text_ND, finding_sets=finding_sets, ks=ks), expected)


@pytest.mark.parametrize("chunk_entries", [1 << 24, 7])
def test_a_precomputed_score_matrix_gives_the_reference_metrics(chunk_entries, monkeypatch):
    monkeypatch.setattr(retrieval, "_CHUNK_ENTRIES", chunk_entries)
    image_ND, text_ND = _noisy_pairs(5, num=23, width=6, noise=1.0)
    finding_sets = _random_findings(random.Random(5), 23)
    ks = (1, 5, 10)
    expected = _reference(image_ND, text_ND, finding_sets, ks)
    # Scores need not be cosines: any monotone map of them ranks the same.
    sim_NN = (
        3 * torch.nn.functional.normalize(image_ND, dim=1) @ torch.nn.functional.normalize(text_ND, dim=1).T
    )
    _assert_metrics_close(retrieval_metrics_from_scores(sim_NN, finding_sets=finding_sets, ks=ks), expected)
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics_from_scores(sim_NN[:5])


def test_numpy_and_float32_inputs_agree_with_torch():
    image_ND, text_ND = _noisy_pairs(0, num=30, width=8, noise=1.0)
    expected = retrieval_metrics(image_ND, text_ND)
    _assert_metrics_close(retrieval_metrics(image_ND.numpy(), text_ND.numpy()), expected)
    _assert_metrics_close(retrieval_metrics(image_ND.float(), text_ND.float()), expected)


def test_perfect_embeddings():
    image_ND, _ = _noisy_pairs(1, num=40, width=16, noise=0.0)
    finding_sets = _random_findings(random.Random(1), 40)
    metrics = retrieval_metrics(image_ND, image_ND.clone(), finding_sets=finding_sets)
    for summary in metrics.values():
        assert summary["R@1"] == summary["R@10"] == 1.0
        assert summary["MdR"] == summary["MnR"] == 1.0
        assert summary["R@5(F)"] == 1.0  # the match itself is in the top-5 and has its own finding set


def test_reversed_order_puts_every_match_last():
    """With image = -text each match is the least similar candidate, so every rank is N."""
    _, text_ND = _noisy_pairs(2, num=25, width=12, noise=1.0)
    metrics = retrieval_metrics(-3.0 * text_ND, text_ND, ks=(1, 5, 10, 24, 25))
    for summary in metrics.values():
        assert summary["R@1"] == summary["R@10"] == summary["R@24"] == 0.0
        assert summary["R@25"] == 1.0
        assert summary["MdR"] == summary["MnR"] == 25.0


def test_invariant_to_common_permutation_and_rescaling():
    image_ND, text_ND = _noisy_pairs(3, num=35, width=8, noise=1.2)
    finding_sets = _random_findings(random.Random(3), 35)
    expected = retrieval_metrics(image_ND, text_ND, finding_sets=finding_sets)

    perm = torch.randperm(35, generator=torch.Generator().manual_seed(0))
    permuted = retrieval_metrics(
        image_ND[perm], text_ND[perm], finding_sets=[finding_sets[i] for i in perm.tolist()]
    )
    scale_N1 = torch.rand(35, 1, dtype=torch.float64) * 10 + 0.1
    rescaled = retrieval_metrics(image_ND * scale_N1, 7.5 * text_ND, finding_sets=finding_sets)
    for direction, summary in expected.items():
        # Tie-breaking by index could differ after permuting, but random embeddings have no ties.
        assert permuted[direction] == pytest.approx(summary)
        assert rescaled[direction] == pytest.approx(summary)


def test_ties_rank_optimistically():
    """One-hot embeddings make similarities exactly 0 or 1, so the ties are exact."""
    e0, e1 = [1.0, 0.0], [0.0, 1.0]
    metrics = retrieval_metrics(torch.tensor([e0, e0, e1]), torch.tensor([e0, e1, e1]), ks=(1, 2))
    for summary in metrics.values():  # both directions give ranks [1, 2, 1]
        assert summary == pytest.approx(
            {"R@1": 2 / 3, "R@2": 1.0, "MdR": 1.0, "MnR": 4 / 3, "num_queries": 3, "num_candidates": 3}
        )

    collapsed_ND = torch.ones(12, 4)  # a collapsed model: every candidate ties with the match
    for summary in retrieval_metrics(collapsed_ND, collapsed_ND).values():
        assert summary["R@1"] == 1.0 and summary["MdR"] == 1.0


def test_ties_in_the_finding_top5_match_the_reference():
    rng = random.Random(5)
    onehot_ND = torch.eye(3, dtype=torch.float64)[[rng.randrange(3) for _ in range(16)]]
    other_ND = torch.eye(3, dtype=torch.float64)[[rng.randrange(3) for _ in range(16)]]
    finding_sets = _random_findings(rng, 16, empty_share=0.25)
    expected = _reference(onehot_ND, other_ND, finding_sets)
    _assert_metrics_close(retrieval_metrics(onehot_ND, other_ND, finding_sets=finding_sets), expected)


def test_studies_without_findings_leave_queries_and_candidates():
    image_ND, text_ND = _noisy_pairs(6, num=30, width=6, noise=1.5)
    finding_sets = _random_findings(random.Random(6), 30, empty_share=0.4)
    keep = [i for i, labels in enumerate(finding_sets) if labels]
    full = retrieval_metrics(image_ND, text_ND, finding_sets=finding_sets)
    subset = retrieval_metrics(image_ND[keep], text_ND[keep], finding_sets=[finding_sets[i] for i in keep])
    for direction in full:
        assert full[direction]["num_finding_queries"] == len(keep) < 30
        assert full[direction]["num_queries"] == 30  # R@k, MdR, MnR keep every item
        for key in ("P@5(F)", "R@5(F)"):
            assert full[direction][key] == pytest.approx(subset[direction][key])

    no_findings = retrieval_metrics(image_ND, text_ND, finding_sets=[frozenset()] * 30)
    assert math.isnan(no_findings["text_to_image"]["P@5(F)"])
    assert no_findings["text_to_image"]["num_finding_queries"] == 0


def test_chance_finding_levels_by_enumerating_every_top5():
    """Under a uniform random ranking the top-5 is a uniform 5-subset of the pool: enumerate all of them."""
    finding_sets = _random_findings(random.Random(7), 9, empty_share=0.2)
    pool = [labels for labels in finding_sets if labels]
    precisions, hits = [], []
    for match in pool:
        for top in itertools.combinations(pool, 5):
            precisions.append(sum(bool(labels & match) for labels in top) / 5)
            hits.append(match in top)
    chance = chance_levels(9, finding_sets)
    assert chance["P@5(F)"] == pytest.approx(sum(precisions) / len(precisions))
    assert chance["R@5(F)"] == pytest.approx(sum(hits) / len(hits))
    assert chance["num_finding_queries"] == len(pool)


def test_chance_levels_match_random_embeddings():
    num, trials = 20, 400
    finding_sets = _random_findings(random.Random(8), num, empty_share=0.1)
    gen = torch.Generator().manual_seed(8)
    runs = [
        retrieval_metrics(
            torch.randn(num, 8, generator=gen), torch.randn(num, 8, generator=gen), finding_sets=finding_sets
        )
        for _ in range(trials)
    ]
    chance = chance_levels(num, finding_sets)
    assert chance["R@1"] == 1 / num and chance["R@10"] == 10 / num and chance["MnR"] == (num + 1) / 2
    tolerance = {
        "R@1": 0.015,
        "R@5": 0.02,
        "R@10": 0.02,
        "P@5(F)": 0.02,
        "R@5(F)": 0.03,
        "MnR": 0.4,
        "MdR": 1.0,
    }
    for direction in retrieval.DIRECTIONS:
        for key, tol in tolerance.items():
            observed = np.mean([run[direction][key] for run in runs])
            assert observed == pytest.approx(chance[key], abs=tol), (direction, key)


def test_chance_recall_saturates_when_k_exceeds_the_pool():
    assert chance_levels(3, ks=(1, 5))["R@5"] == 1.0
    assert chance_levels(3, [frozenset({"a"})] * 3)["R@5(F)"] == 1.0


def test_rejects_bad_inputs():
    image_ND, text_ND = _noisy_pairs(9, num=5, width=4, noise=1.0)
    with pytest.raises(ValueError, match="differ in shape"):
        retrieval_metrics(image_ND, text_ND[:4])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(image_ND, text_ND * float("nan"))
    with pytest.raises(ValueError, match="finding sets"):
        retrieval_metrics(image_ND, text_ND, finding_sets=[frozenset()] * 4)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(image_ND, text_ND, ks=(0,))
