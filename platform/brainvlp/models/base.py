"""The vision-backbone registry and the contract backbones follow.

Shape legend: B batch, C input channels (sequences), D/H/W volume axes, P spatial positions of the last
feature map, F feature width.

A backbone maps ``volume_BCDHW`` to a token map ``tokens_BPF`` (its last feature map, flattened) and
exposes ``out_dim`` (F). Pooling and projection happen in the model that owns the backbone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from brainvlp.registry import Registry

VISION: Registry = Registry("vision backbone")


@dataclass
class VisionConfig:
    """Base of every vision-backbone config; ``name`` selects the registered backbone."""

    registry: ClassVar[Registry] = VISION
    name: str
