"""CLIP / InfoNCE loss (METHODS 3 ``clip``), negatives gathered across data-parallel workers.

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

Each worker scores its own B queries against all G candidates (open_clip's ``local_loss``); with gradients
flowing through the gather and DeepSpeed averaging gradients over workers, the update equals the one of the
loss over the whole global batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.losses.base import LOSSES, Gather, LossConfig, cross_modal_similarities, no_gather


@dataclass
class ClipLossConfig(LossConfig):
    name: str = "clip"
    temperature: float = 0.07  # initial; CLIP 0.07, brat reference and ConVIRT 0.1
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0  # CLIP clamps exp(t) at 100 for stability

    def validate(self, path: str) -> None:
        from brainvlp.spec import SpecError

        if not 0 < self.temperature < 10:
            raise SpecError(f"{path}.temperature", f"must be in (0, 10), found {self.temperature}")


@LOSSES.register("clip", config=ClipLossConfig)
class ClipLoss(nn.Module):
    def __init__(
        self, config: ClipLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__()
        self.rank, self.world_size, self.gather = rank, world_size, gather
        self.max_log_scale = math.log(config.max_logit_scale)
        # Shape (1,), not a scalar: DeepSpeed's ZeRO flattening cannot view 0-dim parameters.
        log_scale = torch.full((1,), math.log(1.0 / config.temperature))
        self.log_scale = nn.Parameter(log_scale, requires_grad=config.learnable_temperature)

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sim_i2t_BG, sim_t2i_BG, labels_B = cross_modal_similarities(
            outputs["image_emb"], outputs["text_emb"], rank=self.rank, gather=self.gather
        )
        scale = self.log_scale.clamp(max=self.max_log_scale).exp().squeeze(0)
        loss = (
            F.cross_entropy(scale * sim_i2t_BG, labels_B) + F.cross_entropy(scale * sim_t2i_BG, labels_B)
        ) / 2
        return {"contrastive_loss": loss, "logit_scale": scale.detach()}
