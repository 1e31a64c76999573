"""Losses, one family per file, each registered by name in ``LOSSES``."""

from brainvlp.losses import brat, clip, convirt, convirt_sections, qformer_itc, selip, triplet
from brainvlp.losses.base import LOSSES, LossConfig, total_loss

__all__ = [
    "LOSSES",
    "LossConfig",
    "brat",
    "clip",
    "convirt",
    "convirt_sections",
    "qformer_itc",
    "selip",
    "total_loss",
    "triplet",
]
