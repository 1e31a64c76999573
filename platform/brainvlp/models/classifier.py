"""Downstream classifier: a vision backbone, the pooling its pretraining used, and a linear head; and the
maps that explain its decisions (METHODS 4, pLGG).

Explanations come from the backbone's own self-attention where it has one (``resnet_attention``: the
attention each position receives), and from Grad-CAM on the last feature map otherwise: the class score's
gradient averaged over positions weighs the feature channels, and the weighted sum, clipped at zero, marks
where the evidence for the class lies.

Shape legend: B batch, C channels, D/H/W volume axes, d/h/w the last feature map's grid, P = d*h*w
positions, F backbone width, K outputs (1 for binary tasks).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from brainvlp.models.config import VISION, VisionConfig


class Classifier(nn.Module):
    def __init__(
        self,
        vision: VisionConfig,
        *,
        in_channels: int,
        volume_shape: Sequence[int],
        num_outputs: int,
        image_pool: Literal["mean", "flatten"] = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.backbone = VISION.build(vision, in_channels=in_channels)
        self.image_pool = image_pool
        # Eval mode: a batch of one must not trip batch norm (a 1 x 1 x 1 last grid) nor move its statistics.
        self.backbone.eval()
        with torch.no_grad():
            num_positions = self.backbone(torch.zeros(1, in_channels, *volume_shape)).shape[1]
        self.backbone.train()
        depth_averaged = bool(getattr(self.backbone, "average_depth", False))
        self.grid_dhw = token_grid(volume_shape, num_positions, depth_averaged=depth_averaged)
        in_dim = self.backbone.out_dim * (num_positions if image_pool == "flatten" else 1)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_outputs))

    def pool(self, tokens_BPF: torch.Tensor) -> torch.Tensor:
        return tokens_BPF.flatten(1) if self.image_pool == "flatten" else tokens_BPF.mean(1)

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.backbone(volume_BCDHW)))  # logits_BK

    def explain(self, volume_BCDHW: torch.Tensor, target_B: torch.Tensor) -> torch.Tensor:
        """Explanation ``B x P`` for each study's ``target`` output: self-attention if the backbone has it,
        else Grad-CAM. Runs with gradients on, whatever the caller's grad mode, and leaves no grads behind."""
        with torch.enable_grad():
            tokens_BPF = self.backbone(volume_BCDHW)
            attention_BPP = getattr(self.backbone, "last_attention_BPP", None)
            if attention_BPP is not None:
                return attention_BPP.mean(1).detach()  # attention each position receives
            return grad_cam(tokens_BPF, self.head(self.pool(tokens_BPF)), target_B)


def grad_cam(tokens_BPF: torch.Tensor, logits_BK: torch.Tensor, target_B: torch.Tensor) -> torch.Tensor:
    """Grad-CAM ``B x P`` over the token map for logit ``target_B`` of each row (Selvaraju et al. 2017)."""
    chosen = logits_BK.gather(1, target_B.view(-1, 1).long()).sum()
    (grad_BPF,) = torch.autograd.grad(chosen, tokens_BPF)
    weight_BF = grad_BPF.mean(1)
    return torch.relu((tokens_BPF * weight_BF[:, None, :]).sum(-1)).detach()


def token_grid(
    volume_shape: Sequence[int], num_positions: int, *, depth_averaged: bool | None = None
) -> tuple[int, int, int]:
    """The (d, h, w) grid that a backbone's P tokens flatten (row-major), found as the volume downsampled by
    one stride on every axis (ceil division, as strided convolutions and patching do). ``depth_averaged``
    (DenseNet's ``average_depth``) makes d = 1; None tries full grids first, then depth-averaged ones."""
    strides = sorted({2**k for k in range(9)} | {4 * k for k in range(1, 9)})
    flags = (False, True) if depth_averaged is None else (depth_averaged,)
    for averaged in flags:
        for stride in strides:
            grid = tuple(math.ceil(size / stride) for size in volume_shape)
            candidate = (1, *grid[1:]) if averaged else grid
            if math.prod(candidate) == num_positions:
                return candidate
    raise ValueError(f"cannot place {num_positions} tokens on a grid over a {tuple(volume_shape)} volume")


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages in input-to-output order, for freezing the first k (pLGG fine-tunes the last
    stages only): a ResNet's stem and four layers (then the self-attention block), a DenseNet's stem and
    dense blocks with their transitions, and otherwise the entries of the backbone's block lists."""
    inner = getattr(backbone, "resnet", None)
    if inner is not None:  # resnet_attention: the ResNet's stages, then the attention block
        return [*backbone_stages(inner), nn.ModuleList([backbone.norm, backbone.attention])]
    net = getattr(backbone, "net", None)
    if net is not None and hasattr(net, "layer4"):
        return [nn.ModuleList([net.conv1, net.bn1]), net.layer1, net.layer2, net.layer3, net.layer4]
    bounds = getattr(backbone, "stage_bounds", None)
    if bounds is not None:
        return [backbone.features[start:end] for start, end in bounds]
    stages = []
    for child in backbone.children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            stages.extend(child)
        else:
            stages.append(child)
    return stages


def freeze_stages(backbone: nn.Module, count: int) -> int:
    """Freeze the parameters of the first ``count`` stages; returns how many parameters were frozen."""
    stages = backbone_stages(backbone)
    if count > len(stages):
        raise ValueError(f"cannot freeze {count} stages: this backbone has {len(stages)}")
    frozen = 0
    for parameter in itertools.chain.from_iterable(s.parameters() for s in stages[:count]):
        parameter.requires_grad_(False)
        frozen += parameter.numel()
    return frozen
