"""3D DenseNet-121 from MONAI as a token-map backbone (brat's default vision encoder).

Shape legend: B batch, C channels, D/H/W volume axes, P positions, F width (1024 for DenseNet-121).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.models.config import DenseNetConfig
from brainvlp.models.resnet import checkpointed


class DenseNetBackbone(nn.Module):
    def __init__(self, config: DenseNetConfig, *, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import DenseNet121  # lazy: importing MONAI costs seconds

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
        self.activation_checkpointing = False  # set by DualEncoder (model.activation_checkpointing)
        # Stages for checkpointing: the stem, then each dense block with the transition (or final norm)
        # after it, so that what a stage keeps for backward is its small, downsampled input.
        names = [name for name, _ in self.features.named_children()]
        starts = [0] + [i for i, name in enumerate(names) if name.startswith("denseblock")] + [len(names)]
        self.stage_bounds = list(itertools.pairwise(starts))

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            fmap_BFdhw = volume_BCDHW
            for start, end in self.stage_bounds:
                fmap_BFdhw = checkpointed(self.features[start:end], fmap_BFdhw)
        else:
            fmap_BFdhw = self.features(volume_BCDHW)
        fmap_BFdhw = F.relu(fmap_BFdhw)
        if self.average_depth:
            fmap_BFdhw = fmap_BFdhw.mean(dim=2, keepdim=True)
        return fmap_BFdhw.flatten(2).transpose(1, 2)  # tokens_BPF
