"""The pretraining task: batch -> augmented volumes and reports -> model -> loss dict.

This is the module DeepSpeed wraps, so the loss's own parameters (a learnable temperature) train with the
model. It is ``brainvlp.embed.Embedder`` with augmentation of the volumes in training mode and the loss:
it computes the representations the loss reads (``loss.inputs``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from brainvlp.embed import Embedder
from brainvlp.losses.base import Loss, total_loss
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.train.config import AugmentConfig

if TYPE_CHECKING:  # MONAI costs ~2.3 s to import, which `brainvlp validate` must not pay
    from monai import transforms as mt


def build_augment(config: AugmentConfig, seed: int) -> mt.Compose | None:
    if not config.enabled:
        return None
    from monai import transforms as mt

    angle = np.deg2rad(config.rotate_degrees)
    augment = mt.Compose(
        [
            mt.RandAffine(
                prob=1.0,
                rotate_range=(angle, angle, angle),
                scale_range=(config.scale,) * 3,
                translate_range=(config.translate_voxels,) * 3,
                padding_mode="zeros",
            ),
            mt.RandBiasField(prob=0.5, coeff_range=(0.0, config.bias_field)),
            mt.RandAdjustContrast(prob=0.5, gamma=config.gamma),
            mt.RandGaussianNoise(prob=0.5, std=config.noise_std),
        ]
    )
    augment.set_random_state(seed)
    return augment


class PretrainTask(Embedder):
    def __init__(
        self, model: DualEncoder, loss: Loss, *, scale_max: float, augment: mt.Compose | None
    ) -> None:
        super().__init__(model, scale_max=scale_max)
        self.loss = loss
        self.augment = augment

    def prepare_volume(self, volume_BCDHW: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        volume = super().prepare_volume(volume_BCDHW, torch.float32)
        if self.training and self.augment is not None:
            volume = torch.stack([torch.as_tensor(self.augment(v)).clamp_(min=0) for v in volume])
        return volume.to(dtype)

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        represented = self.represent(batch, self.loss.inputs)
        # Loss math in float32 whatever the training precision (bf16 logits make poor softmaxes).
        outputs = self.loss({k: v.float() if v.is_floating_point() else v for k, v in represented.items()})
        outputs["loss"] = total_loss(outputs)
        return outputs
