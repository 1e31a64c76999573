"""View-sentence matching and view-diversity terms of the brat loss (METHODS 3 ``brat``), as pure functions.

Shape legend: B local batch (images scored on this worker), G candidate reports (the gathered global batch),
Q query views per image, S sentences per report (padded to the longest), P attended image positions,
D embedding width; inside PVA, N = B x G image-report pairs and K = min(Q, S) matching steps.

- ``pva_scores``: Pairwise View Alignment (brat Algorithm 1). For one image-report pair with similarity
  matrix S = V F^T (Q x S), repeatedly take the largest remaining entry, record it and delete its row and
  column, until views or valid sentences run out; the pair's score is the mean of the recorded entries.
  ``pva_matches`` returns which entries were recorded.
- ``colbert_scores``: the ColBERT baseline, mean over valid sentences of the max over views.
- ``dpp_loss``: quality-diversity of the queries' cross-attention maps c_i: with entropies h_i, the DPP
  kernel L_ij = h_i c_i^T c_j h_j and the loss -log det(L + eps I), averaged over images.
- ``repulsion_loss``: the pairwise-repulsion baseline ("w/ PR"), mean cosine similarity of distinct views.

Vectorisation of PVA: the greedy loop runs once for all N pairs together, on one N x S x Q copy of the
similarities in which padded sentences and deleted entries hold -inf. Each of the K steps takes, for every
pair at once, the maximum of each view's row, the first view reaching the pair's maximum and that view's first
sentence reaching it (the first maximum in row-major (q, s) order, which is the tie-break of the greedy
reference), then deletes the view and the sentence. A pair with nothing left (its maximum is -inf) records
nothing more, so K steps serve every pair whatever its number of valid sentences and the loop never asks the
device how far to go. The matching carries no gradient; the score is a masked mean of ``sim_BGQS``, so
gradients reach the matched entries only.

On a GPU those K steps are ~10 small kernels each, so eager PVA is bound by kernel-launch latency, not by
the GPU. Because the loop never synchronises with the host, it is captured once per input shape as a CUDA
graph and replayed (one launch); a few recent shapes are kept (training and evaluation each use one or two),
and inputs whose working copy exceeds ``_GRAPH_MAX_BYTES`` run eagerly, as does a call made during another
capture.

Inputs are assumed finite (cosine similarities, softmax attention): -inf marks what is deleted.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pair_inputs(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> None:
    if sim_BGQS.dim() != 4:
        raise ValueError(f"sim_BGQS must be B x G x Q x S, found shape {tuple(sim_BGQS.shape)}")
    if sentence_mask_GS.dtype != torch.bool:
        raise ValueError(
            f"sentence_mask_GS must be bool (True = real sentence), found {sentence_mask_GS.dtype}"
        )
    if tuple(sentence_mask_GS.shape) != (sim_BGQS.shape[1], sim_BGQS.shape[3]):
        raise ValueError(
            f"sentence_mask_GS must be G x S = {(sim_BGQS.shape[1], sim_BGQS.shape[3])}, "
            f"found {tuple(sentence_mask_GS.shape)}"
        )


def pva_matches(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> Tensor:
    """Bool B x G x Q x S mask of the (view, sentence) pairs PVA records for every image-report pair.

    Each pair records min(Q, its number of valid sentences) entries, one per view and per valid sentence at
    most; a report without valid sentences records none. Ties: first entry in row-major (q, s) order.
    """
    _check_pair_inputs(sim_BGQS, sentence_mask_GS)
    sim_BGQS = sim_BGQS.detach()
    graphable = sim_BGQS.is_cuda and not torch.cuda.is_current_stream_capturing()
    if graphable and sim_BGQS.numel() * sim_BGQS.element_size() <= _GRAPH_MAX_BYTES:
        return _graphed_matches(sim_BGQS, sentence_mask_GS)
    return _greedy_matches(sim_BGQS, sentence_mask_GS)


def _greedy_matches(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> Tensor:
    B, G, Q, S = sim_BGQS.shape
    N, K, device = B * G, min(Q, S), sim_BGQS.device
    # A sentence-major copy, padded sentences at -inf: the per-view maxima then reduce over S with the Q
    # views contiguous, which vectorises (over a contiguous axis of length S it costs ~10x more on CPU).
    padding_GS1 = torch.zeros(G, S, 1, dtype=sim_BGQS.dtype, device=device)
    padding_GS1.masked_fill_(~sentence_mask_GS.unsqueeze(-1), float("-inf"))
    work_NSQ = sim_BGQS.transpose(-2, -1).clone(memory_format=torch.contiguous_format)
    work_NSQ = work_NSQ.add_(padding_GS1).view(N, S, Q)
    # Matched views are -inf here rather than in work_NSQ: one write per pair instead of S.
    view_done_NQ = torch.zeros(N, Q, dtype=sim_BGQS.dtype, device=device)
    pairs_N = torch.arange(N, device=device)
    best_NK = torch.empty(N, K, dtype=sim_BGQS.dtype, device=device)
    view_NK = torch.empty(N, K, dtype=torch.long, device=device)
    sentence_NK = torch.empty(N, K, dtype=torch.long, device=device)
    for step in range(K):
        # The first view reaching the pair's maximum, then its first sentence reaching it: the first maximum
        # in row-major (q, s) order.
        best_NK[:, step], view_NK[:, step] = (work_NSQ.amax(dim=1) + view_done_NQ).max(dim=-1)
        sentence_NK[:, step] = work_NSQ[pairs_N, :, view_NK[:, step]].max(dim=-1).indices
        # scatter_ with a scalar, not an indexed assignment: that copies the scalar from the host, which a
        # CUDA graph capture forbids.
        view_done_NQ.scatter_(1, view_NK[:, step, None], float("-inf"))
        work_NSQ.scatter_(1, sentence_NK[:, step, None, None].expand(N, 1, Q), float("-inf"))
    # A finished pair (nothing left but -inf) recorded view 0 and sentence 0, harmlessly deleting them
    # again; its later steps go to a spare slot, dropped.
    picked_NK = torch.where(best_NK > float("-inf"), view_NK * S + sentence_NK, Q * S)
    matched_NE = torch.zeros(N, Q * S + 1, dtype=torch.bool, device=device)
    matched_NE.scatter_(1, picked_NK, True)
    return matched_NE[:, : Q * S].reshape(B, G, Q, S)


# Captured PVA graphs by input shape, dtype and device, most recently used last: (graph, its static inputs,
# its output). Each holds a private memory pool about twice its input's size.
_GRAPHS: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = OrderedDict()
_GRAPH_SHAPES = 4
_GRAPH_MAX_BYTES = 256 * 2**20


def _graphed_matches(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> Tensor:
    """``_greedy_matches`` replayed from a CUDA graph captured on the first call with this shape."""
    key = (tuple(sim_BGQS.shape), sim_BGQS.dtype, sim_BGQS.device)
    if key not in _GRAPHS:
        static_sim, static_mask = sim_BGQS.clone(), sentence_mask_GS.clone()
        with torch.cuda.device(sim_BGQS.device):
            # Capture needs one eager run first, on a side stream.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                _greedy_matches(static_sim, static_mask)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                matched = _greedy_matches(static_sim, static_mask)
        _GRAPHS[key] = (graph, static_sim, static_mask, matched)
        if len(_GRAPHS) > _GRAPH_SHAPES:
            _GRAPHS.popitem(last=False)
    _GRAPHS.move_to_end(key)
    graph, static_sim, static_mask, matched = _GRAPHS[key]
    static_sim.copy_(sim_BGQS)
    static_mask.copy_(sentence_mask_GS)
    graph.replay()
    return matched.clone()  # the next replay overwrites ``matched``


def pva_scores(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> Tensor:
    """B x G PVA similarities: the mean of the matched entries of each pair's view-sentence matrix.

    ``sim_BGQS[b, g]`` is V_b F_g^T for image b's Q views and report g's S (padded) sentences, both
    L2-normalised; ``sentence_mask_GS`` is True on real sentences. Gradients flow through the matched entries
    only (each gets 1 / number of matches). A report without valid sentences scores 0 against every image,
    with zero gradient, so one empty report in a gathered batch cannot turn the loss into NaN.
    """
    matched_BGQS = pva_matches(sim_BGQS, sentence_mask_GS)
    total_BG = torch.where(matched_BGQS, sim_BGQS, 0).sum(dim=(-2, -1))
    return total_BG / matched_BGQS.sum(dim=(-2, -1)).clamp(min=1)


def colbert_scores(sim_BGQS: Tensor, sentence_mask_GS: Tensor) -> Tensor:
    """B x G ColBERT similarities: mean over valid sentences of the best view's similarity.

    A report without valid sentences scores 0, as in ``pva_scores``. Where several views tie for a
    sentence's maximum, the gradient is split evenly between them (``amax``).
    """
    _check_pair_inputs(sim_BGQS, sentence_mask_GS)
    best_BGS = sim_BGQS.amax(dim=-2)
    total_BG = torch.where(sentence_mask_GS, best_BGS, 0).sum(dim=-1)
    return total_BG / sentence_mask_GS.sum(dim=-1).clamp(min=1)


def dpp_loss(attn_BQP: Tensor, eps: float = 1e-6) -> Tensor:
    """-log det(L + eps I) of the quality-diversity kernel L_ij = h_i c_i^T c_j h_j, averaged over images.

    ``attn_BQP[b, i]`` is query i's cross-attention map over P positions (mean over heads, rows summing to 1);
    h_i is its entropy. The math runs in float32 (float64 stays float64) with autocast off, whatever the input
    dtype, and the result is float32 (float64 for float64 input).

    L is a Gram matrix, so L + eps I is positive definite in exact arithmetic; rounding can still leave its
    smallest eigenvalues at or below zero when attention maps (nearly) coincide, where a Cholesky factor
    fails and slogdet's sign flips. The log-determinant is therefore the sum of log(max(lambda, 0) + eps) over
    L's eigenvalues (``eigvalsh``): numerically non-positive eigenvalues count as the exact zeros they stand
    for, the loss stays finite (at most -Q log eps per image) and they get no gradient.
    """
    if attn_BQP.dim() != 3:
        raise ValueError(f"attn_BQP must be B x Q x P, found shape {tuple(attn_BQP.shape)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps log det finite for collapsed maps), found {eps}")
    dtype = torch.promote_types(attn_BQP.dtype, torch.float32)
    # Under bf16 autocast the Gram product would silently run in bf16 again.
    with torch.autocast(attn_BQP.device.type, enabled=False):
        attn_BQP = attn_BQP.to(dtype)
        # Clamping only inside the log keeps 0 log 0 = 0 with finite gradients at exactly-zero attention.
        log_attn_BQP = attn_BQP.clamp(min=torch.finfo(dtype).tiny).log()
        entropy_BQ = -(attn_BQP * log_attn_BQP).sum(dim=-1)
        weighted_BQP = entropy_BQ.unsqueeze(-1) * attn_BQP
        kernel_BQQ = weighted_BQP @ weighted_BQP.transpose(-2, -1)
        eigenvalues_BQ = torch.linalg.eigvalsh(kernel_BQQ)
        logdet_B = (eigenvalues_BQ.clamp(min=0) + eps).log().sum(dim=-1)
    return -logdet_B.mean()


def repulsion_loss(views_BQD: Tensor) -> Tensor:
    """Mean cosine similarity over the Q (Q - 1) ordered pairs of distinct views, averaged over images."""
    if views_BQD.dim() != 3 or views_BQD.shape[1] < 2:
        raise ValueError(f"views_BQD must be B x Q x D with Q >= 2, found shape {tuple(views_BQD.shape)}")
    Q = views_BQD.shape[1]
    unit_BQD = F.normalize(views_BQD, dim=-1)
    cosine_BQQ = unit_BQD @ unit_BQD.transpose(-2, -1)
    off_diagonal_QQ = ~torch.eye(Q, dtype=torch.bool, device=views_BQD.device)
    return (cosine_BQQ * off_diagonal_QQ).sum(dim=(-2, -1)).mean() / (Q * (Q - 1))
