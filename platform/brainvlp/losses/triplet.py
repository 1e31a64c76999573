"""Tumour-location-weighted triplet loss (METHODS 3 ``triplet``; pLGG paper, seeds 000, Eq. 1).

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

Each image is an anchor with its report as the positive, and each report an anchor with its image; the
negative is the nearest of ``candidates`` random non-matching items of the global batch ("semi-hard"
sampling, k = 2 in the paper; k >= G - 1 takes the hardest). With cosine distance d = 1 - cos,

    loss = ReLU(d(a, p) - w d(a, n) + m),  w = c if n's tumour location equals a's, else 1,

m = 0.25 and c = 0.5; ``location_weight: false`` sets w = 1, as the authors' released code does. The loss is
the mean over anchors of each direction, summed over the two directions (Eq. 1 sums over the batch; the
mean keeps the scale independent of the batch size). Locations are integer ids (``location``, -1 unknown,
which matches nothing).

Local term (Eq. 2), on when ``local_weight`` (beta) > 0: for each modality, the local representation of
item j (image positions or report tokens, flattened into one vector; ``brainvlp.models.local_align``) and
its cross-attention-weighted counterpart form a positive pair; as anchors in turn, each meets a negative
drawn the same semi-hard way among the other items' counterparts (resp. local representations), without
location weighting, margin 0.4 as in the reference code. The four terms' means are summed. Report tokens
are padded to ``max_tokens`` before flattening, so that every worker gathers one shape; zero padding
changes no cosine. Total = alpha global + beta local (Eq. 3); the paper trains alpha and beta without
saying what keeps them from collapsing to 0, so here they are fixed weights (searchable with tune).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import Gather, Loss, no_gather
from brainvlp.losses.config import TripletLossConfig


def candidate_mask(
    match_B: torch.Tensor, num_candidates: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool ``B x G``: k random candidates per row among the G - 1 that are not the row's match."""
    keys_BG = torch.rand(match_B.shape[0], num_candidates, generator=generator, device=match_B.device)
    keys_BG.scatter_(1, match_B[:, None], float("inf"))  # the match is never a candidate
    k = min(k, num_candidates - 1)
    chosen_BK = keys_BG.topk(k, dim=1, largest=False).indices
    return torch.zeros_like(keys_BG, dtype=torch.bool).scatter_(1, chosen_BK, True)


def semi_hard_triplet(
    dist_BG: torch.Tensor,
    match_B: torch.Tensor,
    candidates: int,
    margin: float,
    generator: torch.Generator | None,
    weight_BG: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over anchors of ReLU(d(a, p) - w d(a, n) + m): p the anchor's match, n the nearest of
    ``candidates`` random non-matching candidates (chosen without gradient), w the chosen negative's entry
    of ``weight_BG`` (1 without it)."""
    candidates_BG = candidate_mask(match_B, dist_BG.shape[1], candidates, generator)
    negative_B1 = dist_BG.detach().masked_fill(~candidates_BG, float("inf")).argmin(dim=1, keepdim=True)
    positive_dist_B = dist_BG.gather(1, match_B[:, None]).squeeze(1)
    negative_dist_B = dist_BG.gather(1, negative_B1).squeeze(1)
    weight_B = 1.0 if weight_BG is None else weight_BG.gather(1, negative_B1).squeeze(1)
    return F.relu(positive_dist_B - weight_B * negative_dist_B + margin).mean()


class TripletLoss(Loss):
    def __init__(
        self, config: TripletLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.generator: torch.Generator | None = None  # tests fix the candidate draw; training uses torch's

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        config = self.config
        image_BD = F.normalize(outputs["image_emb"], dim=-1)
        text_BD = F.normalize(outputs["text_emb"], dim=-1)
        location_B = outputs["location"]
        image_GD, text_GD = self.gather(image_BD), self.gather(text_BD)
        location_G = self.gather(location_B.to(image_BD.dtype)).round().long()
        match_B = torch.arange(image_BD.shape[0], device=image_BD.device) + self.rank * image_BD.shape[0]
        image_anchor = self._global(1 - image_BD @ text_GD.T, match_B, location_B, location_G)
        text_anchor = self._global(1 - text_BD @ image_GD.T, match_B, location_B, location_G)
        out = {"image_anchor": image_anchor.detach(), "text_anchor": text_anchor.detach()}
        total = config.global_weight * (image_anchor + text_anchor)
        if config.local_weight > 0:
            out["local"] = self._local(outputs, match_B)
            total = total + config.local_weight * out["local"]
            out["local"] = out["local"].detach()
        return {"triplet_loss": total, **out}

    def _global(
        self, dist_BG: torch.Tensor, match_B: torch.Tensor, location_B: torch.Tensor, location_G: torch.Tensor
    ) -> torch.Tensor:
        config = self.config
        weight_BG = None
        if config.location_weight:  # Eq. 1: c where a candidate shares the anchor's (known) location
            same_BG = (location_G[None, :] == location_B[:, None]) & (location_B[:, None] >= 0)
            weight_BG = torch.where(same_BG, config.same_location_coefficient, 1.0).to(dist_BG.dtype)
        return semi_hard_triplet(
            dist_BG, match_B, config.candidates, config.margin, self.generator, weight_BG
        )

    def _local(self, outputs: dict[str, torch.Tensor], match_B: torch.Tensor) -> torch.Tensor:
        """Eq. 2: four semi-hard triplet terms between local representations and weighted counterparts."""
        config = self.config
        pairs = [
            (outputs["image_local"].flatten(1), outputs["image_weighted"].flatten(1)),
            (_pad_tokens(outputs["text_local"], config.max_tokens).flatten(1),
             _pad_tokens(outputs["text_weighted"], config.max_tokens).flatten(1)),
        ]  # fmt: skip
        total = outputs["image_local"].new_zeros(())
        for local_BX, weighted_BX in pairs:
            local_BX, weighted_BX = F.normalize(local_BX, dim=-1), F.normalize(weighted_BX, dim=-1)
            local_GX, weighted_GX = self.gather(local_BX), self.gather(weighted_BX)
            for anchor_BX, candidates_GX in ((local_BX, weighted_GX), (weighted_BX, local_GX)):
                dist_BG = 1 - anchor_BX @ candidates_GX.T
                total = total + semi_hard_triplet(
                    dist_BG, match_B, config.candidates, config.local_margin, self.generator
                )
        return total


def _pad_tokens(tokens_BTE: torch.Tensor, width: int) -> torch.Tensor:
    if tokens_BTE.shape[1] > width:
        raise ValueError(
            f"a report has {tokens_BTE.shape[1]} tokens but loss.max_tokens is {width}; raise it"
        )
    padded = tokens_BTE.new_zeros(tokens_BTE.shape[0], width, tokens_BTE.shape[2])
    padded[:, : tokens_BTE.shape[1]] = tokens_BTE
    return padded
