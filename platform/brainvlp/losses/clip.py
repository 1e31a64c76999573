"""CLIP / InfoNCE loss (METHODS 3 ``clip``), negatives gathered across data-parallel workers.

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

Each worker scores its own B queries against all G candidates (open_clip's ``local_loss``); with gradients
flowing through the gather and DeepSpeed averaging gradients over workers, the update equals the one of the
loss over the whole global batch.
"""

from __future__ import annotations

import torch

from brainvlp.losses.base import (
    Gather,
    LogitScale,
    Loss,
    cross_modal_similarities,
    no_gather,
    symmetric_infonce,
)
from brainvlp.losses.config import ClipLossConfig


class ClipLoss(Loss):
    def __init__(
        self, config: ClipLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.scale = LogitScale(
            config.temperature, learnable=config.learnable_temperature, max_scale=config.max_logit_scale
        )

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sim_i2t_BG, sim_t2i_BG, _ = cross_modal_similarities(
            outputs["image_emb"], outputs["text_emb"], rank=self.rank, gather=self.gather
        )
        scale = self.scale()
        loss = symmetric_infonce(scale, sim_i2t_BG, sim_t2i_BG, rank=self.rank)
        return {"contrastive_loss": loss, "logit_scale": scale.detach()}
