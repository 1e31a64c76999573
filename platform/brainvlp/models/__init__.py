"""Models: single-device math only (no ray, deepspeed or torch.distributed imports here)."""

from brainvlp.models import densenet, resnet
from brainvlp.models.base import VISION, VisionConfig
from brainvlp.models.dual_encoder import DualEncoder, ModelConfig

__all__ = ["VISION", "DualEncoder", "ModelConfig", "VisionConfig", "densenet", "resnet"]
