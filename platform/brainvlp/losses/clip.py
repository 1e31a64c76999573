"""CLIP / InfoNCE loss (METHODS 3 ``clip``), negatives gathered across data-parallel workers.

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

Each worker scores its own B queries against all G candidates (open_clip's ``local_loss``); with gradients
flowing through the gather and DeepSpeed averaging gradients over workers, the update equals the one of the
loss over the whole global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from brainvlp.losses.base import (
    LOSSES,
    Gather,
    LogitScale,
    LossConfig,
    Temperature,
    cross_modal_similarities,
    no_gather,
    symmetric_infonce,
)
from brainvlp.spec import PositiveFloat


@dataclass
class ClipLossConfig(LossConfig):
    name: str = "clip"
    temperature: Temperature = 0.07  # initial; CLIP 0.07, brat reference and ConVIRT 0.1
    learnable_temperature: bool = True
    max_logit_scale: PositiveFloat = 100.0  # CLIP clamps exp(t) at 100 for stability (its log is taken)


@LOSSES.register("clip", config=ClipLossConfig)
class ClipLoss(nn.Module):
    scoring = "dot"
    inputs = frozenset({"global"})

    def __init__(
        self, config: ClipLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__()
        self.rank, self.world_size, self.gather = rank, world_size, gather
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
