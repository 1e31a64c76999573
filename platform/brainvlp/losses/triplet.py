"""Tumour-location-weighted triplet loss (METHODS 3 ``triplet``; pLGG paper, seeds 000, Eq. 1).

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

Each image is an anchor with its report as the positive, and each report an anchor with its image; the
negative is the nearest of ``candidates`` random non-matching items of the global batch ("semi-hard"
sampling, k = 2 in the paper; k >= G - 1 takes the hardest). With cosine distance d = 1 - cos,

    loss = ReLU(d(a, p) - w d(a, n) + m),  w = c if n's tumour location equals a's, else 1,

m = 0.25 and c = 0.5; ``location_weight: false`` sets w = 1, as the authors' released code does. The loss is
the mean over anchors of each direction, summed over the two directions (Eq. 1 sums over the batch; the
mean keeps the scale independent of the batch size). Locations are integer ids (``location``, -1 unknown,
which matches nothing). The paper's local cross-attention term (Eq. 2) is not implemented yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.losses.base import LOSSES, Gather, LossConfig, no_gather
from brainvlp.spec import SpecError


@dataclass
class TripletLossConfig(LossConfig):
    name: str = "triplet"
    margin: float = 0.25
    candidates: int = 2  # random negatives per anchor, the nearest kept; >= G - 1: hard negatives
    location_weight: bool = True  # Eq. 1; false reproduces the reference code (w = 1)
    same_location_coefficient: float = 0.5  # the paper's c

    def validate(self, path: str) -> None:
        if self.candidates < 1:
            raise SpecError(f"{path}.candidates", f"must be >= 1, found {self.candidates}")
        if not 0 < self.same_location_coefficient <= 1:
            raise SpecError(
                f"{path}.same_location_coefficient",
                f"must be in (0, 1], found {self.same_location_coefficient}",
            )
        if self.margin < 0:
            raise SpecError(f"{path}.margin", f"must be >= 0, found {self.margin}")


def candidate_mask(
    match_B: torch.Tensor, num_candidates: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Bool ``B x G``: k random candidates per row among the G - 1 that are not the row's match."""
    keys_BG = torch.rand(match_B.shape[0], num_candidates, generator=generator, device=match_B.device)
    keys_BG.scatter_(1, match_B[:, None], float("inf"))  # the match is never a candidate
    k = min(k, num_candidates - 1)
    chosen_BK = keys_BG.topk(k, dim=1, largest=False).indices
    return torch.zeros_like(keys_BG, dtype=torch.bool).scatter_(1, chosen_BK, True)


@LOSSES.register("triplet", config=TripletLossConfig)
class TripletLoss(nn.Module):
    scoring = "dot"
    inputs = frozenset({"global", "location"})

    def __init__(
        self, config: TripletLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__()
        self.config, self.rank, self.gather = config, rank, gather
        self.generator: torch.Generator | None = (
            None  # tests fix the candidate draw; training uses torch's RNG
        )

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_BD = F.normalize(outputs["image_emb"], dim=-1)
        text_BD = F.normalize(outputs["text_emb"], dim=-1)
        location_B = outputs["location"]
        image_GD, text_GD = self.gather(image_BD), self.gather(text_BD)
        location_G = self.gather(location_B.to(image_BD.dtype)).round().long()
        match_B = torch.arange(image_BD.shape[0], device=image_BD.device) + self.rank * image_BD.shape[0]
        image_anchor = self._direction(1 - image_BD @ text_GD.T, match_B, location_B, location_G)
        text_anchor = self._direction(1 - text_BD @ image_GD.T, match_B, location_B, location_G)
        return {
            "triplet_loss": image_anchor + text_anchor,
            "image_anchor": image_anchor.detach(),
            "text_anchor": text_anchor.detach(),
        }

    def _direction(
        self, dist_BG: torch.Tensor, match_B: torch.Tensor, location_B: torch.Tensor, location_G: torch.Tensor
    ) -> torch.Tensor:
        config = self.config
        candidates_BG = candidate_mask(match_B, dist_BG.shape[1], config.candidates, self.generator)
        negative_B = dist_BG.detach().masked_fill(~candidates_BG, float("inf")).argmin(dim=1)
        positive_dist_B = dist_BG.gather(1, match_B[:, None]).squeeze(1)
        negative_dist_B = dist_BG.gather(1, negative_B[:, None]).squeeze(1)
        weight_B = torch.ones_like(negative_dist_B)
        if config.location_weight:
            same_B = (location_G[negative_B] == location_B) & (location_B >= 0)
            weight_B = torch.where(same_B, config.same_location_coefficient, weight_B)
        return F.relu(positive_dist_B - weight_B * negative_dist_B + config.margin).mean()
