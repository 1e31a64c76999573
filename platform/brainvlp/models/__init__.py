"""Models: single-device math only (no ray, deepspeed or torch.distributed imports here)."""

from brainvlp.models import densenet, resnet, resnet_attention, unet_encoder, vit
from brainvlp.models.base import VISION, VisionConfig
from brainvlp.models.dual_encoder import DualEncoder, ModelConfig

__all__ = [
    "VISION",
    "DualEncoder",
    "ModelConfig",
    "VisionConfig",
    "densenet",
    "resnet",
    "resnet_attention",
    "unet_encoder",
    "vit",
]
