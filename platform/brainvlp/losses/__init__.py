"""Losses, one family per file, each registered by name in ``LOSSES``."""

from brainvlp.losses import clip, convirt
from brainvlp.losses.base import LOSSES, LossConfig, total_loss

__all__ = ["LOSSES", "LossConfig", "clip", "convirt", "total_loss"]
