"""ConVIRT loss (METHODS 3 ``convirt``; Zhang et al., seeds/003): asymmetric InfoNCE with a fixed temperature.

Shape legend: B local batch, G global batch (B x world_size), D embedding width.

L = lambda * l(image -> text) + (1 - lambda) * l(text -> image), each an InfoNCE term averaged over the
batch, tau = 0.1 and lambda = 0.75 by default. Negatives come from every worker, as in ``clip``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from brainvlp.losses.base import Gather, Loss, cross_modal_similarities, no_gather
from brainvlp.losses.config import ConvirtLossConfig


def convirt_terms(
    image_BD: torch.Tensor, text_BD: torch.Tensor, temperature: float, *, rank: int, gather: Gather
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InfoNCE image -> text and text -> image at a fixed temperature, and the local queries' labels."""
    sim_i2t_BG, sim_t2i_BG, labels_B = cross_modal_similarities(image_BD, text_BD, rank=rank, gather=gather)
    image_to_text = F.cross_entropy(sim_i2t_BG / temperature, labels_B)
    text_to_image = F.cross_entropy(sim_t2i_BG / temperature, labels_B)
    return image_to_text, text_to_image, labels_B


class ConvirtLoss(Loss):
    def __init__(
        self, config: ConvirtLossConfig, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__(config, rank=rank, world_size=world_size, gather=gather)
        self.temperature, self.weight = config.temperature, config.image_to_text_weight

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image_to_text, text_to_image, _ = convirt_terms(
            outputs["image_emb"], outputs["text_emb"], self.temperature, rank=self.rank, gather=self.gather
        )
        loss = self.weight * image_to_text + (1 - self.weight) * text_to_image
        return {
            "contrastive_loss": loss,
            "image_to_text": image_to_text.detach(),
            "text_to_image": text_to_image.detach(),
        }
