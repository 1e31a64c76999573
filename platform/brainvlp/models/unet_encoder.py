"""The contracting path of a 3D U-Net as a token-map backbone (brain-pathology paper's image encoder).

Built from MONAI ``BasicUNet``'s own encoder blocks (``TwoConv``, then ``Down`` = max-pool + ``TwoConv``,
each convolution 3x3x3 + instance norm + LeakyReLU) under BasicUNet's names (``conv_0``, ``down_1``, ...),
so a trained BasicUNet's encoder weights load into ``encoder``. The decoder is never built: unused
parameters would also trip distributed data parallel.

Shape legend: B batch, C channels, D/H/W volume axes, d/h/w bottleneck grid (D / 2**(L-1), ...) for L
levels, P = d*h*w positions, F the last level's channels.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from brainvlp.models.config import UNetEncoderConfig

# BasicUNet's defaults.
ACT = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True})
NORM = ("instance", {"affine": True})


class UNetEncoderBackbone(nn.Module):
    def __init__(self, config: UNetEncoderConfig, *, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets.basic_unet import Down, TwoConv  # lazy: MONAI costs seconds

        widths = config.channels
        levels = [("conv_0", TwoConv(3, in_channels, widths[0], ACT, NORM, True, config.dropout))]
        levels += [
            (f"down_{i}", Down(3, widths[i - 1], widths[i], ACT, NORM, True, config.dropout))
            for i in range(1, len(widths))
        ]
        self.encoder = nn.Sequential(OrderedDict(levels))
        self.downsampling = 2 ** (len(widths) - 1)
        self.out_dim = widths[-1]

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        shape_dhw = tuple(volume_BCDHW.shape[2:])
        # Max-pooling must not empty an axis, and instance norm needs more than one bottleneck position.
        grid_dhw = [size // self.downsampling for size in shape_dhw]
        if min(grid_dhw) < 1 or math.prod(grid_dhw) < 2:
            raise ValueError(
                f"vision.channels has {len(self.encoder)} levels, which downsample {self.downsampling}x: "
                f"too deep for the volume shape {shape_dhw} (D, H, W); use fewer levels"
            )
        fmap_BFdhw = self.encoder(volume_BCDHW)
        return fmap_BFdhw.flatten(2).transpose(1, 2)  # tokens_BPF
