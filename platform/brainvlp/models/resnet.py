"""3D ResNet from MONAI as a token-map backbone (pLGG, brain-pathology baselines; small widths for CPU).

Shape legend: B batch, C channels, D/H/W volume axes, P positions (d*h*w of the last stage), F width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from monai.networks.nets import ResNet
from torch import nn

from brainvlp.models.base import VISION, VisionConfig


@dataclass
class ResNetConfig(VisionConfig):
    name: str = "resnet"
    block: Literal["basic", "bottleneck"] = "basic"
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)  # ResNet-18; ResNet-50 is bottleneck (3, 4, 6, 3)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    stem_stride: int = 2
    max_pool: bool = True


@VISION.register("resnet", config=ResNetConfig)
class ResNetBackbone(nn.Module):
    def __init__(self, config: ResNetConfig, *, in_channels: int) -> None:
        super().__init__()
        self.net = ResNet(
            block=config.block,
            layers=list(config.layers),
            block_inplanes=list(config.widths),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_stride=config.stem_stride,
            no_max_pool=not config.max_pool,
            feed_forward=False,
        )
        expansion = 4 if config.block == "bottleneck" else 1
        self.out_dim = config.widths[-1] * expansion

    def feature_map(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``B x F x d x h x w`` (the attention variant needs its grid)."""
        net = self.net
        x = net.act(net.bn1(net.conv1(volume_BCDHW)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        return self.feature_map(volume_BCDHW).flatten(2).transpose(1, 2)  # tokens_BPF
