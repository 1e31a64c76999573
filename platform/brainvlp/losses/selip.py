"""SeLIP loss (METHODS 3 ``selip``; seeds/004 Eq. 4-13): CLIP plus a KL term to a soft report-similarity
target built from the reports' structured clauses.

Shape legend: B local batch, G global batch (B x world_size), D embedding width, C clauses per study,
W words per clause (both padded to ``max_clauses`` / ``max_words`` so that every worker gathers one shape).

Clause similarity (Eq. 8-10): for clauses t_i, t_j with word multisets, TDC = 2 |t_i n t_j| / (|t_i| + |t_j|),
s~_ij = TDC (w_site + w_appearance) / 2 with w = 1 where the field matches, and s(A, B) the mean of s~ over
all clause pairs of reports A and B. S is symmetric, so column b of the column-normalised F(S) is row b of
S divided by its sum: the target distribution over the G candidates for query b, image or report.

L = alpha L_clip + beta L_se, L_se = (L_se-v2t + L_se-t2v) / 2, each the mean over queries of a KL
divergence between the row softmax of the (scaled) similarities and that target. Direction: the paper
writes KL(P || F(S)), which is infinite wherever S is 0 (two reports sharing no site, appearance or word)
and P is not; we compute KL(F(S) || P) = sum_g t_g (log t_g - log p_g) with 0 log 0 = 0, the finite reading
(and what ``torch.nn.functional.kl_div(log P, F(S))`` computes). Queries whose report has no clauses have
no target and only train L_clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import (
    Gather,
    LogitScale,
    Loss,
    cross_modal_similarities,
    no_gather,
    symmetric_infonce,
)
from brainvlp.losses.config import SelipLossConfig

CLAUSE_KEYS = ("clause_words", "clause_site", "clause_appearance", "clause_mask")


def clause_similarity(
    words_BCW: torch.Tensor,
    site_BC: torch.Tensor,
    appearance_BC: torch.Tensor,
    mask_BC: torch.Tensor,
    words_GCW: torch.Tensor,
    site_GC: torch.Tensor,
    appearance_GC: torch.Tensor,
    mask_GC: torch.Tensor,
) -> torch.Tensor:
    """s(A, B) of Eq. 10 for every local report A against every gathered report B, float64 ``B x G``.

    Words are non-zero hashes, 0 is padding. The multiset intersection counts word w of t_i once per
    occurrence that t_j can match: the k-th occurrence of w in t_i is shared when t_j holds w at least
    k times.
    """
    valid_BCW, valid_GCW = words_BCW != 0, words_GCW != 0
    W = words_BCW.shape[-1]
    earlier_WW = torch.ones(W, W, dtype=torch.bool, device=words_BCW.device).tril(-1)
    occurrence_BCW = ((words_BCW[..., :, None] == words_BCW[..., None, :]) & earlier_WW).sum(-1)
    equal_BCWGCW = words_BCW[:, :, :, None, None, None] == words_GCW[None, None, None]
    count_BCWGC = (equal_BCWGCW & valid_GCW[None, None, None]).sum(-1)
    shared_BCWGC = (count_BCWGC > occurrence_BCW[..., None, None]) & valid_BCW[..., None, None]
    shared_BCGC = shared_BCWGC.sum(2).double()
    lengths_BCGC = valid_BCW.sum(-1)[:, :, None, None] + valid_GCW.sum(-1)[None, None]
    dice_BCGC = 2 * shared_BCGC / lengths_BCGC.clamp(min=1)
    same_site_BCGC = site_BC[:, :, None, None] == site_GC[None, None]
    same_look_BCGC = appearance_BC[:, :, None, None] == appearance_GC[None, None]
    pair_BCGC = 0.5 * dice_BCGC * (same_site_BCGC.double() + same_look_BCGC.double())
    pairs_BCGC = mask_BC[:, :, None, None] & mask_GC[None, None]
    return (pair_BCGC * pairs_BCGC).sum((1, 3)) / pairs_BCGC.sum((1, 3)).clamp(min=1)


def _pad(tensor: torch.Tensor, sizes: tuple[int, ...], fields: tuple[str, ...]) -> torch.Tensor:
    """Zero-pad dims 1.. to ``sizes``; more than allowed is an error naming the loss setting to raise."""
    for have, want, field in zip(tensor.shape[1:], sizes, fields, strict=True):
        if have > want:
            raise ValueError(f"a report has {have} {field} but loss.max_{field} is {want}; raise it")
    padded = tensor.new_zeros((tensor.shape[0], *sizes))
    padded[(slice(None), *(slice(0, n) for n in tensor.shape[1:]))] = tensor
    return padded


def _extent(used: torch.Tensor) -> int:
    """One past the last True of a 1-D mask (at least 1)."""
    return int(used.nonzero().max()) + 1 if used.any() else 1


class SelipLoss(Loss):
    def __init__(
        self, config: SelipLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.scale = LogitScale(config.temperature)

    def gathered_clauses(self, outputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], ...]:
        """Local and gathered clause tensors. Every worker pads to the configured sizes for the gather
        (hashes travel as float64, which holds them exactly); then the padding no report uses is trimmed
        again, since the word comparison costs B x C x W x G x C x W."""
        C, W = self.config.max_clauses, self.config.max_words
        local = [
            _pad(outputs["clause_words"], (C, W), ("clauses", "words")),
            *(_pad(outputs[key], (C,), ("clauses",)) for key in CLAUSE_KEYS[1:]),
        ]
        gathered = [self.gather(t.double()).to(t.dtype) for t in local]
        used_C = _extent(gathered[3].any(0))
        used_W = _extent((gathered[0] != 0).any(0).any(0))
        return tuple([t[:, :used_C, :used_W] if t.dim() == 3 else t[:, :used_C] for t in group]
                     for group in (local, gathered))  # fmt: skip

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sim_i2t_BG, sim_t2i_BG, _ = cross_modal_similarities(
            outputs["image_emb"], outputs["text_emb"], rank=self.rank, gather=self.gather
        )
        scale = self.scale()
        clip = symmetric_infonce(scale, sim_i2t_BG, sim_t2i_BG, rank=self.rank)
        local, gathered = self.gathered_clauses(outputs)
        similarity_BG = clause_similarity(*local, *gathered)
        totals_B1 = similarity_BG.sum(1, keepdim=True)
        has_target_B = totals_B1.squeeze(1) > 0
        target_BG = (similarity_BG / totals_B1.clamp(min=torch.finfo(similarity_BG.dtype).tiny)).to(
            sim_i2t_BG.dtype
        )
        # Normalised by the global count of queries with a target, so the workers' mean is the global one.
        count = self.gather(has_target_B.to(sim_i2t_BG.dtype)[:, None]).sum().clamp(min=1)
        kl_terms = []
        for sim_BG in (sim_i2t_BG, sim_t2i_BG):
            log_p_BG = F.log_softmax(scale * sim_BG, dim=1)
            kl_B = (torch.xlogy(target_BG, target_BG) - target_BG * log_p_BG).sum(1)
            kl_terms.append((kl_B * has_target_B).sum() * self.world_size / count)
        similarity = (kl_terms[0] + kl_terms[1]) / 2
        return {
            "contrastive_loss": self.config.clip_weight * clip,
            "similarity_loss": self.config.similarity_weight * similarity,
            "temperature": 1.0 / scale.detach(),
        }
