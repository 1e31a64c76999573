"""The pretraining task: batch -> (augmented) volumes and reports -> model -> loss dict.

Shape legend: B batch, C channels, D/H/W volume axes, T tokens, H text feature width, E embedding width.

This is the module DeepSpeed wraps, so the loss's own parameters (a learnable temperature) train with the
model. A frozen text encoder's pooled features are cached per study: running it every step would cost more
than the whole image step on a CPU (PHANTOM-NOTES.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from torch import nn

from brainvlp.data.shards import decode_volumes, pad_token_ids
from brainvlp.losses import total_loss
from brainvlp.models import DualEncoder
from brainvlp.train.config import AugmentConfig

BATCH_COLUMNS = ["study_id", "volume", "volume_shape", "input_ids"]


def collate(batch: dict[str, np.ndarray], pad_id: int = 0) -> dict[str, Any]:
    """Ray Data numpy batch -> tensors; volumes stay int16 until they reach the training device."""
    input_ids, attention_mask = pad_token_ids(batch["input_ids"], pad_id)
    return {
        "study_id": [str(s) for s in batch["study_id"]],
        "volume": torch.from_numpy(decode_volumes(batch["volume"], batch["volume_shape"])),
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
    }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move a collated batch's tensors to the training device (study ids stay a list)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def build_augment(config: AugmentConfig, seed: int) -> mt.Compose | None:
    if not config.enabled:
        return None
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


class PretrainTask(nn.Module):
    def __init__(self, model: DualEncoder, loss: nn.Module, *, scale_max: float, augment: mt.Compose | None):
        super().__init__()
        self.model, self.loss = model, loss
        self.scale_max = scale_max
        self.augment = augment
        self.text_cache: dict[str, torch.Tensor] = {}

    def prepare_volume(self, volume_BCDHW: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        volume = volume_BCDHW.float() / self.scale_max
        if self.training and self.augment is not None:
            volume = torch.stack([torch.as_tensor(self.augment(v)).clamp_(min=0) for v in volume])
        return volume.to(dtype)

    def text_features(self, batch: dict[str, Any]) -> torch.Tensor:
        if not self.model.text.frozen:
            return self.model.text_features(batch["input_ids"], batch["attention_mask"])
        missing = [i for i, s in enumerate(batch["study_id"]) if s not in self.text_cache]
        if missing:
            with torch.no_grad():
                ids, mask = batch["input_ids"][missing], batch["attention_mask"][missing]
                keep = int(mask.sum(1).max())  # trim shared padding before the encoder sees it
                features_MH = self.model.text_features(ids[:, :keep], mask[:, :keep])
            for i, features_H in zip(missing, features_MH, strict=True):
                self.text_cache[batch["study_id"][i]] = features_H
        return torch.stack([self.text_cache[s] for s in batch["study_id"]])

    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = next(self.model.image_proj.parameters()).dtype
        image_emb_BE = self.model.encode_image(self.prepare_volume(batch["volume"], dtype))
        text_emb_BE = self.model.project_text(self.text_features(batch).to(dtype))
        return image_emb_BE, text_emb_BE

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        image_emb_BE, text_emb_BE = self.embed(batch)
        outputs = self.loss({"image_emb": image_emb_BE.float(), "text_emb": text_emb_BE.float()})
        outputs["loss"] = total_loss(outputs)
        return outputs
