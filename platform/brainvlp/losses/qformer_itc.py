"""Q-Former image-text contrastive loss (METHODS 3 ``qformer_itc``; BLIP-2 ITC, brat's "Q-Former" row).

Shape legend: B local batch, G global batch (B x world_size), Q views, D embedding width.

The score of image b and report g is the best of b's Q views against g's report embedding; the CLIP loss
on those scores, both directions, negatives from every worker. ``diversity: dpp`` gives brat's
"Q-Former w/ QD" ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import Gather, LogitScale, Loss, no_gather, symmetric_infonce
from brainvlp.losses.brat import diversity_terms
from brainvlp.losses.config import QFormerItcLossConfig
from brainvlp.losses.scoring import pair_scores


class QFormerItcLoss(Loss):
    def __init__(
        self, config: QFormerItcLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.scale = LogitScale(config.temperature, learnable=config.learnable_temperature)

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        views_BQD = F.normalize(outputs["views"].float(), dim=-1)
        text_BD = F.normalize(outputs["text_emb"].float(), dim=-1)
        views_GQD, text_GD = self.gather(views_BQD), self.gather(text_BD)
        sim_i2t_BG = pair_scores(self.scoring, {"views": views_BQD}, {"text_emb": text_GD})
        sim_t2i_GB = pair_scores(self.scoring, {"views": views_GQD}, {"text_emb": text_BD})
        scale = self.scale()
        result = {
            "contrastive_loss": symmetric_infonce(scale, sim_i2t_BG, sim_t2i_GB.T, rank=self.rank),
            "logit_scale": scale.detach(),
        }
        config = self.config
        views = {**outputs, "views": views_BQD}
        return result | diversity_terms(config.diversity, config.diversity_weight, views, config.dpp_eps)
