"""Image-text retrieval metrics in the layout of brat Table 2 (METHODS 4).

Item ``i``'s image is the one correct match of item ``i``'s report and vice versa. Both directions are scored:
``text_to_image`` (each report queries all images) and ``image_to_text`` (each image queries all reports).

Conventions, chosen so that numbers are reproducible and comparable across runs:

- Similarity is cosine: embeddings are L2-normalised here, so callers may pass raw projections.
- Ties are optimistic: a query's rank is ``1 + (number of candidates strictly more similar than its match)``.
  A degenerate model that maps everything to one vector therefore scores R@1 = 1; the chance row of the
  report and the collapse diagnostics are what expose it, not a pessimistic rank.
- The top-k *set* used by the finding metrics breaks ties the same way (match first, then lower candidate
  index), so "the match is in the top-5 set" holds exactly when ``rank <= 5``.
- MdR is the usual median (mean of the two middle ranks for an even count), MnR the mean rank.
- Finding metrics (P@5(F), R@5(F)) follow brat: studies without a positive finding are dropped from the
  evaluation entirely, i.e. both as queries *and* as candidates, because a negative report fits every
  negative image. R@k, MdR and MnR always use every item.
- P@5(F) averages, over queries, the fraction of the ``min(5, pool)`` retrieved items that share at least one
  positive finding with the query's match; R@5(F) is the fraction of queries whose top-5 holds an item whose
  finding set equals the match's exactly (the match itself counts, so R@5(F) >= R@5 on that subset).

Shape legend: Q queries, N candidates (Q == N here), D embedding width, C queries in one chunk,
K retrieved items per query, L distinct finding labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = ("text_to_image", "image_to_text")
FINDING_K = 5
# Similarity chunks hold about this many entries (~64 MiB in float32), so N = 10k needs ~1.7k query rows per
# chunk and memory stays bounded whatever N is.
_CHUNK_ENTRIES = 1 << 24


def retrieval_metrics(
    image_emb_ND: torch.Tensor | np.ndarray,
    text_emb_ND: torch.Tensor | np.ndarray,
    *,
    finding_sets: Sequence[frozenset[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """Retrieval metrics for both directions, keyed ``"text_to_image"`` and ``"image_to_text"``.

    Each direction holds ``R@k`` for every k in ``ks``, ``MdR``, ``MnR``, ``num_queries``, ``num_candidates``
    and, when ``finding_sets`` (one per item, e.g. from ``brainvlp.findings.positive_findings``) is given,
    ``P@5(F)``, ``R@5(F)`` and ``num_finding_queries`` (NaN metrics when no study has a finding).
    """
    image_ND, text_ND = _unit_pair(image_emb_ND, text_emb_ND)
    pairs = {"text_to_image": _Pairwise(text_ND, image_ND), "image_to_text": _Pairwise(image_ND, text_ND)}
    return _summarise(pairs, finding_sets, ks)


def retrieval_metrics_from_scores(
    sim_image_text_NN: torch.Tensor | np.ndarray,
    *,
    finding_sets: Sequence[frozenset[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, dict[str, float]]:
    """The same metrics from a precomputed image-by-report score matrix (row i: image i against every
    report), for models whose image-report score is not a dot product (brat's PVA, ColBERT, max over
    Q-Former queries)."""
    sim_NN = torch.as_tensor(sim_image_text_NN).detach().cpu()
    if sim_NN.ndim != 2 or sim_NN.shape[0] != sim_NN.shape[1] or sim_NN.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty square image x report matrix, got shape {tuple(sim_NN.shape)}"
        )
    if not torch.isfinite(sim_NN).all():
        raise ValueError("the score matrix contains NaN or infinite values")
    pairs = {"text_to_image": _Pairwise(matrix=sim_NN.T), "image_to_text": _Pairwise(matrix=sim_NN)}
    return _summarise(pairs, finding_sets, ks)


def _summarise(
    pairs: dict[str, _Pairwise], finding_sets: Sequence[frozenset[str]] | None, ks: Sequence[int]
) -> dict[str, dict[str, float]]:
    if any(int(k) != k or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks}")
    num_items = pairs["image_to_text"].num_queries
    if finding_sets is not None and len(finding_sets) != num_items:
        raise ValueError(f"{len(finding_sets)} finding sets for {num_items} items")
    results = {}
    for direction in DIRECTIONS:
        rank_Q = _optimistic_ranks(pairs[direction])
        summary: dict[str, float] = {f"R@{k}": (rank_Q <= k).double().mean().item() for k in ks}
        summary["MdR"] = float(np.median(rank_Q.numpy()))
        summary["MnR"] = rank_Q.double().mean().item()
        summary["num_queries"] = num_items
        summary["num_candidates"] = num_items
        if finding_sets is not None:
            summary.update(_finding_metrics(pairs[direction], finding_sets))
        results[direction] = summary
    return results


def retrieval_ranks(
    image_emb_ND: torch.Tensor | np.ndarray, text_emb_ND: torch.Tensor | np.ndarray
) -> dict[str, torch.Tensor]:
    """Optimistic 1-based rank of every query's match, per direction (int64, shape Q).

    ``retrieval_metrics`` summarises these; the report draws its recall@k curve for k = 1..N from them.
    """
    image_ND, text_ND = _unit_pair(image_emb_ND, text_emb_ND)
    return {
        "text_to_image": _optimistic_ranks(_Pairwise(text_ND, image_ND)),
        "image_to_text": _optimistic_ranks(_Pairwise(image_ND, text_ND)),
    }


def retrieval_ranks_from_scores(sim_image_text_NN: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
    """``retrieval_ranks`` from a precomputed image-by-report score matrix."""
    sim_NN = torch.as_tensor(sim_image_text_NN).detach().cpu()
    return {
        "text_to_image": _optimistic_ranks(_Pairwise(matrix=sim_NN.T)),
        "image_to_text": _optimistic_ranks(_Pairwise(matrix=sim_NN)),
    }


def chance_levels(
    num_candidates: int,
    finding_sets: Sequence[frozenset[str]] | None = None,
    *,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Expected metric values under a uniformly random ranking, computed exactly (no sampling).

    The same for both directions. R@k = min(k, N)/N, MnR = (N+1)/2 and MdR is given as (N+1)/2, the centre of
    the rank distribution (the median of Q uniform ranks concentrates there). For the finding metrics the
    top-5 of a random ranking is a uniform random subset of the finding pool (N_F studies with a finding):
    P@5(F) = mean over matches m of (pool items sharing a finding with m) / N_F, since every retrieved slot is
    marginally uniform; R@5(F) = mean over m of 1 - C(N_F - c_m, K) / C(N_F, K), where c_m counts pool items
    whose finding set equals m's (m included) and K = min(5, N_F).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
    n = num_candidates
    chance: dict[str, float] = {f"R@{k}": min(k, n) / n for k in ks}
    chance["MdR"] = chance["MnR"] = (n + 1) / 2
    chance["num_candidates"] = n
    if finding_sets is None:
        return chance
    if len(finding_sets) != n:
        raise ValueError(f"{len(finding_sets)} finding sets for {n} candidates")
    pool = [labels for labels in finding_sets if labels]
    chance["num_finding_queries"] = len(pool)
    if not pool:
        chance["P@5(F)"] = chance["R@5(F)"] = math.nan
        return chance
    hot_NL, set_id_N = _encode_findings(pool)
    num_sharing_N = torch.cat(
        [(overlap_CN > 0).sum(1) for _, overlap_CN in _Pairwise(hot_NL, hot_NL).blocks()]
    )
    num_same_N = torch.bincount(set_id_N)[set_id_N]
    pool_size, k = len(pool), min(FINDING_K, len(pool))
    miss_prob = [math.comb(pool_size - c, k) / math.comb(pool_size, k) for c in num_same_N.tolist()]
    chance["P@5(F)"] = num_sharing_N.double().mean().item() / pool_size
    chance["R@5(F)"] = 1.0 - sum(miss_prob) / pool_size
    return chance


def _unit_pair(
    image_emb_ND: torch.Tensor | np.ndarray, text_emb_ND: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    image_ND, text_ND = _unit_rows(image_emb_ND, "image_emb_ND"), _unit_rows(text_emb_ND, "text_emb_ND")
    if image_ND.shape != text_ND.shape:
        raise ValueError(f"image and text embeddings differ in shape: {image_ND.shape} vs {text_ND.shape}")
    if image_ND.dtype != text_ND.dtype:  # mixed precision would make the two directions disagree on ties
        image_ND, text_ND = image_ND.double(), text_ND.double()
    return image_ND, text_ND


def _unit_rows(emb_ND: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    """L2-normalised float copy on CPU; float64 stays float64 so tests can compare against exact math."""
    emb_ND = torch.as_tensor(emb_ND).detach().cpu()
    if emb_ND.ndim != 2 or emb_ND.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty 2-D (items x width) array, got shape {tuple(emb_ND.shape)}"
        )
    if emb_ND.dtype != torch.float64:
        emb_ND = emb_ND.float()  # half precision matmuls are slow on CPU and make spurious ties
    if not torch.isfinite(emb_ND).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return F.normalize(emb_ND, dim=1)


class _Pairwise:
    """Query-by-candidate similarities: from embeddings, computed in chunks so that no Q x N matrix is ever
    held whole, or from a precomputed matrix."""

    def __init__(
        self,
        query_QD: torch.Tensor | None = None,
        cand_ND: torch.Tensor | None = None,
        *,
        matrix: torch.Tensor | None = None,
    ) -> None:
        self.query_QD, self.cand_ND, self.matrix_QN = query_QD, cand_ND, matrix
        source = matrix if matrix is not None else query_QD
        self.num_queries = source.shape[0]
        self.num_candidates = matrix.shape[1] if matrix is not None else cand_ND.shape[0]

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(first query row, sim_CN)`` blocks."""
        rows = max(1, _CHUNK_ENTRIES // self.num_candidates)
        for start in range(0, self.num_queries, rows):
            if self.matrix_QN is not None:
                yield start, self.matrix_QN[start : start + rows]
            else:
                yield start, self.query_QD[start : start + rows] @ self.cand_ND.T

    def subset(self, keep: list[int]) -> _Pairwise:
        """The same items, restricted to ``keep`` on both sides (item i's match stays at position i)."""
        if self.matrix_QN is not None:
            return _Pairwise(matrix=self.matrix_QN[keep][:, keep])
        return _Pairwise(self.query_QD[keep], self.cand_ND[keep])


def _optimistic_ranks(pairs: _Pairwise) -> torch.Tensor:
    ranks = []
    for start, sim_CN in pairs.blocks():
        match_C1 = torch.arange(start, start + sim_CN.shape[0]).unsqueeze(1)
        # The match's score is read from the same matrix, never recomputed, so exact ties stay exact.
        match_sim_C1 = sim_CN.gather(1, match_C1)
        ranks.append(1 + (sim_CN > match_sim_C1).sum(1))
    return torch.cat(ranks)


def _top_k_sets(pairs: _Pairwise, k: int) -> torch.Tensor:
    """Indices of each query's top-k candidates (as a set: order within it is not meaningful).

    The set is every candidate strictly above the k-th largest similarity plus, from those tied with it,
    the match first and then the lowest indices. An integer priority encodes that, and because priorities
    are distinct inside the tied group, ``topk`` on them is deterministic (``topk`` on floats is not).
    """
    num_cand = pairs.num_candidates
    tops = []
    for start, sim_CN in pairs.blocks():
        kth_C1 = sim_CN.topk(k, dim=1).values[:, -1:]
        tie_order_CN = torch.arange(1, num_cand + 1).expand_as(sim_CN).clone()
        tie_order_CN.scatter_(1, torch.arange(start, start + sim_CN.shape[0]).unsqueeze(1), 0)
        priority_CN = torch.where(sim_CN == kth_C1, num_cand - tie_order_CN, -1)
        priority_CN = torch.where(sim_CN > kth_C1, 2 * num_cand, priority_CN)
        tops.append(priority_CN.topk(k, dim=1).indices)
    return torch.cat(tops)


def _encode_findings(finding_sets: Sequence[frozenset[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-hot labels (hot_NL, float so overlaps are one matmul) and an id per distinct finding set."""
    labels = sorted(set().union(*finding_sets))
    column = {label: i for i, label in enumerate(labels)}
    hot_NL = torch.zeros(len(finding_sets), len(labels))
    set_ids: dict[frozenset[str], int] = {}
    for row, finding_set in enumerate(finding_sets):
        hot_NL[row, [column[label] for label in finding_set]] = 1.0
        set_ids.setdefault(finding_set, len(set_ids))
    return hot_NL, torch.tensor([set_ids[s] for s in finding_sets])


def _finding_metrics(pairs: _Pairwise, finding_sets: Sequence[frozenset[str]]) -> dict[str, float]:
    keep = [i for i, labels in enumerate(finding_sets) if labels]
    if not keep:
        return {"P@5(F)": math.nan, "R@5(F)": math.nan, "num_finding_queries": 0}
    # Items without findings leave both sides; position j of the pool is query j's match.
    hot_NL, set_id_N = _encode_findings([finding_sets[i] for i in keep])
    top_QK = _top_k_sets(pairs.subset(keep), min(FINDING_K, len(keep)))
    shares_QK = torch.einsum("ql,qkl->qk", hot_NL, hot_NL[top_QK]) > 0
    same_QK = set_id_N[top_QK] == set_id_N.unsqueeze(1)
    return {
        "P@5(F)": shares_QK.double().mean().item(),
        "R@5(F)": same_QK.any(1).double().mean().item(),
        "num_finding_queries": len(keep),
    }
