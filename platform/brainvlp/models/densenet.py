"""3D DenseNet-121 from MONAI as a token-map backbone (brat's default vision encoder).

Shape legend: B batch, C channels, D/H/W volume axes, P positions, F width (1024 for DenseNet-121).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.nets import DenseNet121
from torch import nn

from brainvlp.models.base import VISION, VisionConfig


@dataclass
class DenseNetConfig(VisionConfig):
    name: str = "densenet121"
    init_features: int = 64
    growth_rate: int = 32
    block_config: tuple[int, int, int, int] = (6, 12, 24, 16)
    # brat's reference averages the last feature map over depth before flattening it into tokens.
    average_depth: bool = False


@VISION.register("densenet121", config=DenseNetConfig)
class DenseNetBackbone(nn.Module):
    def __init__(self, config: DenseNetConfig, *, in_channels: int) -> None:
        super().__init__()
        net = DenseNet121(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=1,
            init_features=config.init_features,
            growth_rate=config.growth_rate,
            block_config=config.block_config,
        )
        self.features = net.features  # the classifier head is not used
        self.average_depth = config.average_depth
        self.out_dim = net.class_layers.out.in_features

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        fmap_BFdhw = F.relu(self.features(volume_BCDHW))
        if self.average_depth:
            fmap_BFdhw = fmap_BFdhw.mean(dim=2, keepdim=True)
        return fmap_BFdhw.flatten(2).transpose(1, 2)  # tokens_BPF
