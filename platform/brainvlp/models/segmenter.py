"""Tumour segmentation (brat Tables 8-9): any registered vision backbone as the encoder of a U-Net, and
MONAI's DynUNet (the nnU-Net architecture) trained from scratch as the baseline.

Design:

- ``stage_features`` taps a backbone's stages with forward hooks while its own ``forward`` runs, so every
  backbone computes exactly what it computes in pretraining (activation checkpointing, ResNet + attention's
  attention block included) and no backbone file needs changing. The taps, finest first: ResNet's stem
  (before the max-pool) and layers 1-3, then the last layer (after the attention block for
  ``resnet_attention``); DenseNet's input to each downsampling (``pool0``, the transitions), then the final
  norm + ReLU; every level of the U-Net encoder; ViT's hidden states after evenly spaced blocks (UNETR's
  z3, z6, z9 for 12 blocks) and its final normed tokens, each reshaped to the patch grid.
- ``MultiScaleEncoder`` holds the backbone and, for a ViT, UNETR's pyramid: transposed convolutions take
  the patch-grid taps to strides 2, 4, ..., patch/2. Channels and strides per level come from one dry run at
  build time (eval mode, no gradients: batch-norm statistics stay as they are).
- ``UNetSegmenter``'s decoder is MONAI's nnU-Net blocks: ``UnetUpBlock`` (transposed convolution, concat with
  the skip, two conv + instance norm + LeakyReLU) per level, ``UnetOutBlock`` (1x1x1) for the R region logits
  (independent sigmoids). A backbone whose finest stage is strided (all but the U-Net encoder) gets a
  full-resolution skip from a ``UnetResBlock`` on the input, as UNETR's ``encoder1``. Decoder widths are the
  skips' widths capped at 320 (nnU-Net's 3D cap); a wider skip is projected by a 1x1x1 convolution first.
- ``feature_size`` (UNETR's 16) is the width of the full-resolution skip; the ViT pyramid's levels are
  2, 4, 8 times it.
- Shapes: the input is zero-padded at the end of each axis up to a multiple of the backbone's total stride
  and the logits are cropped back, so the output has exactly the input's D x H x W. Padding (not resizing)
  keeps every voxel's logit on its own voxel; zero is the background of skull-stripped, normalised MRI.
- ``freeze_stages`` = k freezes the first k stages as downstream classification counts them
  (``classifier.backbone_stages``): no gradients, and ``train()`` keeps them in eval mode so their batch
  norms neither normalise with batch statistics nor update their running ones. ViT's pyramid is decoder.

Shape legend: B batch, C input channels, R regions, D/H/W volume axes, d/h/w a stage's grid, P = d*h*w
positions, F a stage's channels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.models.classifier import backbone_stages
from brainvlp.models.classifier import freeze_stages as freeze_backbone_stages
from brainvlp.models.config import VISION, VisionConfig
from brainvlp.models.densenet import DenseNetBackbone
from brainvlp.models.resnet import ResNetBackbone
from brainvlp.models.resnet_attention import ResNetAttentionBackbone
from brainvlp.models.unet_encoder import UNetEncoderBackbone
from brainvlp.models.vit import ViTBackbone, patch_grid

NORM = "instance"
MAX_DECODER_CHANNELS = 320  # nnU-Net's cap on 3D widths


def stage_features(backbone: nn.Module, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
    """The backbone's stage outputs ``B x F x d x h x w``, finest first, the last being its own output
    (un-flattened). A ViT's all lie on its patch grid; ``MultiScaleEncoder`` makes them a pyramid."""
    taps = _TAPS.get(type(backbone))
    if taps is None:
        raise ValueError(f"no stage taps for {type(backbone).__name__}: add them to segmenter._TAPS")
    return taps[0](backbone, volume_BCDHW)


def total_stride(backbone: nn.Module) -> tuple[int, int, int]:
    """Per-axis downsampling of the backbone's last stage: an input multiple of it gives exact grids."""
    if type(backbone) not in _TAPS:
        raise ValueError(f"no stage taps for {type(backbone).__name__}: add them to segmenter._TAPS")
    return _TAPS[type(backbone)][1](backbone)


def _capture(
    run: Callable[[], torch.Tensor], taps: Sequence[tuple[nn.Module, bool]]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``run()``'s output and, for each (module, input?) tap, the module's first input or output."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for i, (module, take_input) in enumerate(taps):
        if take_input:
            hook = lambda _m, args, i=i: captured.setdefault(i, args[0])  # noqa: E731
            handles.append(module.register_forward_pre_hook(hook))
        else:
            hook = lambda _m, _args, out, i=i: captured.setdefault(i, out)  # noqa: E731
            handles.append(module.register_forward_hook(hook))
    try:
        out = run()
    finally:  # hooks must not outlive the call: a checkpointed stage re-runs its forward in backward
        for handle in handles:
            handle.remove()
    return out, [captured[i] for i in range(len(taps))]


def _grid(tokens_BPF: torch.Tensor, grid_dhw: Sequence[int]) -> torch.Tensor:
    batch, _, width = tokens_BPF.shape
    return tokens_BPF.transpose(1, 2).reshape(batch, width, *grid_dhw)  # fmap_BFdhw (P is row-major)


def _resnet_taps(net: nn.Module) -> list[tuple[nn.Module, bool]]:
    # net.act is the stem's own activation (each block has its own): its output precedes the max-pool.
    return [(net.act, False), (net.layer1, False), (net.layer2, False), (net.layer3, False)]


def _resnet_features(backbone: ResNetBackbone, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
    fmap_BFdhw, taps = _capture(lambda: backbone.feature_map(volume_BCDHW), _resnet_taps(backbone.net))
    return [*taps, fmap_BFdhw]


def _resnet_attention_features(
    backbone: ResNetAttentionBackbone, volume_BCDHW: torch.Tensor
) -> list[torch.Tensor]:
    tokens_BPF, taps = _capture(lambda: backbone(volume_BCDHW), _resnet_taps(backbone.resnet.net))
    return [*taps, _grid(tokens_BPF, backbone.last_grid_dhw)]


def _densenet_features(backbone: DenseNetBackbone, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
    features = backbone.features
    downsamplings = [module for name, module in features.named_children() if name.startswith("transition")]
    # The final norm's output, not forward's tokens: ``average_depth`` would have pooled the depth away.
    taps = [(module, True) for module in (features.pool0, *downsamplings)] + [(features.norm5, False)]
    _, fmaps = _capture(lambda: backbone(volume_BCDHW), taps)
    return [*fmaps[:-1], F.relu(fmaps[-1])]


def _unet_features(backbone: UNetEncoderBackbone, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
    _, fmaps = _capture(lambda: backbone(volume_BCDHW), [(level, False) for level in backbone.encoder])
    return fmaps


def vit_levels(patch_dhw: Sequence[int]) -> int:
    """Pyramid levels below a ViT's patch grid (strides 2 .. patch/2): UNETR's 3 for 16^3 patches."""
    if any(side & (side - 1) for side in patch_dhw):
        raise ValueError(
            f"a ViT encoder needs power-of-2 patch sides to build its pyramid, found {patch_dhw}"
        )
    return max(int(math.log2(max(patch_dhw))) - 1, 0)


def vit_tap_blocks(num_layers: int, num_taps: int) -> list[int]:
    """1-based blocks whose outputs are tapped, evenly spaced: 3, 6, 9, 12 of 12 for 4 taps (UNETR)."""
    return [math.ceil(num_layers * (i + 1) / num_taps) for i in range(num_taps)]


def _vit_features(backbone: ViTBackbone, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
    grid_dhw = patch_grid(volume_BCDHW.shape[2:], backbone.patch_dhw)
    blocks = vit_tap_blocks(len(backbone.blocks), vit_levels(backbone.patch_dhw) + 1)
    taps = [(backbone.blocks[i - 1], False) for i in blocks[:-1]]
    tokens_BPF, hidden = _capture(lambda: backbone(volume_BCDHW), taps)  # the last tap: the normed output
    return [_grid(t_BPF, grid_dhw) for t_BPF in (*hidden, tokens_BPF)]


def _resnet_stride(net: nn.Module) -> tuple[int, int, int]:
    pool = 1 if net.no_max_pool else 2
    return tuple(stride * pool * 8 for stride in net.conv1.stride)  # layers 2-4 each halve


def _densenet_stride(backbone: DenseNetBackbone) -> tuple[int, int, int]:
    transitions = sum(name.startswith("transition") for name, _ in backbone.features.named_children())
    return (2 ** (2 + transitions),) * 3  # conv0 and pool0 halve, then each transition


# Per backbone class: (stage features, total stride).
_TAPS: dict[type, tuple[Callable[..., list[torch.Tensor]], Callable[..., tuple[int, int, int]]]] = {
    ResNetBackbone: (_resnet_features, lambda b: _resnet_stride(b.net)),
    ResNetAttentionBackbone: (_resnet_attention_features, lambda b: _resnet_stride(b.resnet.net)),
    DenseNetBackbone: (_densenet_features, _densenet_stride),
    UNetEncoderBackbone: (_unet_features, lambda b: (b.downsampling,) * 3),
    ViTBackbone: (_vit_features, lambda b: tuple(b.patch_dhw)),
}


def _upsampler(in_channels: int, out_channels: int, factor_dhw: Sequence[int]) -> nn.Sequential:
    """UNETR's ``UnetrPrUpBlock`` with a factor per axis: a transposed convolution per doubling (an axis
    already at its target stays), a residual conv block after each but the first."""
    from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer  # lazy: MONAI is slow

    layers: list[nn.Module] = []
    remaining = list(factor_dhw)
    while max(remaining) > 1:
        step = tuple(2 if factor > 1 else 1 for factor in remaining)
        remaining = [factor // s for factor, s in zip(remaining, step, strict=True)]
        width = out_channels if layers else in_channels
        up = get_conv_layer(3, width, out_channels, step, step, conv_only=True, is_transposed=True)
        block = UnetResBlock(3, out_channels, out_channels, 3, 1, norm_name=NORM) if layers else None
        layers += [up] if block is None else [up, block]
    return nn.Sequential(*layers)


class MultiScaleEncoder(nn.Module):
    """A backbone's stage features at distinct scales, finest first; ``channels`` and ``strides`` (per
    axis, relative to the input) describe them, ``total_stride`` the deepest."""

    def __init__(self, backbone: nn.Module, *, in_channels: int, feature_size: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.total_stride = total_stride(backbone)
        self.pyramid: nn.ModuleList | None = None
        if isinstance(backbone, ViTBackbone):
            patch_dhw = backbone.patch_dhw
            self.pyramid = nn.ModuleList(
                _upsampler(
                    backbone.out_dim, feature_size * 2**level, [p // min(2**level, p) for p in patch_dhw]
                )
                for level in range(1, vit_levels(patch_dhw) + 1)
            )
        # Twice the total stride: the U-Net encoder refuses a single bottleneck position.
        probe_dhw = [2 * stride for stride in self.total_stride]
        was_training = self.training
        self.eval()
        with torch.no_grad():
            fmaps = self(torch.zeros(1, in_channels, *probe_dhw))
        self.train(was_training)
        self.channels = [fmap.shape[1] for fmap in fmaps]
        self.strides = [tuple(p // s for p, s in zip(probe_dhw, f.shape[2:], strict=True)) for f in fmaps]
        assert self.strides[-1] == self.total_stride, (self.strides, self.total_stride)

    def forward(self, volume_BCDHW: torch.Tensor) -> list[torch.Tensor]:
        fmaps = stage_features(self.backbone, volume_BCDHW)
        if self.pyramid is not None:
            fmaps = [up(fmap) for up, fmap in zip(self.pyramid, fmaps, strict=False)] + [fmaps[-1]]
        return fmaps


def pad_to_multiple(volume_BCDHW: torch.Tensor, multiple_dhw: Sequence[int]) -> torch.Tensor:
    """Zeros after the end of each axis up to a multiple of ``multiple_dhw``."""
    pads: list[int] = []
    for size, multiple in reversed(list(zip(volume_BCDHW.shape[2:], multiple_dhw, strict=True))):
        pads += [0, -size % multiple]  # F.pad lists the last axis first
    return F.pad(volume_BCDHW, pads) if any(pads) else volume_BCDHW


class UNetSegmenter(nn.Module):
    """Backbone encoder + U-Net decoder with a skip from each stage; returns region logits
    ``B x R x D x H x W``."""

    def __init__(
        self,
        backbone: nn.Module,
        *,
        in_channels: int,
        out_channels: int,
        freeze_stages: int = 0,
        feature_size: int = 16,
        max_decoder_channels: int = MAX_DECODER_CHANNELS,
    ) -> None:
        super().__init__()
        from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, UnetUpBlock

        if freeze_stages < 0:  # a negative count would slice stages from the end
            raise ValueError(f"freeze_stages must be 0 or more, found {freeze_stages}")

        self.encoder = MultiScaleEncoder(backbone, in_channels=in_channels, feature_size=feature_size)
        channels, strides = list(self.encoder.channels), list(self.encoder.strides)
        self.stem: nn.Module | None = None
        if strides[0] != (1, 1, 1):  # UNETR's encoder1: a full-resolution skip from the input
            self.stem = UnetResBlock(3, in_channels, feature_size, 3, 1, norm_name=NORM)
            channels, strides = [feature_size, *channels], [(1, 1, 1), *strides]
        widths = [min(width, max_decoder_channels) for width in channels[:-1]]
        # UnetUpBlock concatenates a skip as wide as its output: a wider skip is projected to it.
        self.projections = nn.ModuleList(
            nn.Conv3d(c, w, kernel_size=1) if c != w else nn.Identity()
            for c, w in zip(channels, widths, strict=False)
        )
        deeper = [*widths[1:], channels[-1]]  # what each up block receives from below
        self.ups = nn.ModuleList(
            UnetUpBlock(3, deeper[i], widths[i], 3, 1, _ratio(strides, i), NORM) for i in range(len(widths))
        )
        self.head = UnetOutBlock(3, widths[0] if widths else channels[-1], out_channels)
        self.frozen_stages = freeze_stages
        freeze_backbone_stages(backbone, freeze_stages)
        self.train()  # puts the frozen stages in eval mode

    def train(self, mode: bool = True) -> UNetSegmenter:
        super().train(mode)
        for stage in backbone_stages(self.encoder.backbone)[: self.frozen_stages]:
            stage.eval()  # frozen batch norms keep normalising with, and keeping, their running statistics
        return self

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        shape_dhw = volume_BCDHW.shape[2:]
        padded_BCDHW = pad_to_multiple(volume_BCDHW, self.encoder.total_stride)
        fmaps = self.encoder(padded_BCDHW)
        if self.stem is not None:
            fmaps = [self.stem(padded_BCDHW), *fmaps]
        skips = [project(fmap) for project, fmap in zip(self.projections, fmaps, strict=False)]
        x_BFdhw = fmaps[-1]
        for up, skip_BFdhw in zip(reversed(self.ups), reversed(skips), strict=True):
            x_BFdhw = up(x_BFdhw, skip_BFdhw)
        logits_BRDHW = self.head(x_BFdhw)
        return logits_BRDHW[:, :, : shape_dhw[0], : shape_dhw[1], : shape_dhw[2]]


def _ratio(strides: Sequence[tuple[int, ...]], level: int) -> tuple[int, ...]:
    """Upsampling from ``level + 1`` to ``level``, per axis (1 where two stages share a stride)."""
    return tuple(deep // fine for deep, fine in zip(strides[level + 1], strides[level], strict=True))


def build_segmenter(
    vision_config: VisionConfig,
    in_channels: int,
    out_channels: int,
    freeze_stages: int = 0,
    state_dict: Mapping[str, Any] | None = None,
    **decoder: Any,
) -> UNetSegmenter:
    """The registry's backbone for ``vision_config`` with ``state_dict`` (a pretrained backbone's, loaded
    strictly) as the encoder of a ``UNetSegmenter``; ``decoder`` holds its other keyword arguments."""
    backbone = VISION.build(vision_config, in_channels=in_channels)
    if state_dict is not None:
        backbone.load_state_dict(state_dict, strict=True)
    return UNetSegmenter(
        backbone, in_channels=in_channels, out_channels=out_channels, freeze_stages=freeze_stages, **decoder
    )


class PaddedNet(nn.Module):
    """``net`` on the input zero-padded to a multiple of ``multiple_dhw``, its output cropped back."""

    def __init__(self, net: nn.Module, multiple_dhw: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.multiple_dhw = tuple(multiple_dhw)

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        d, h, w = volume_BCDHW.shape[2:]
        return self.net(pad_to_multiple(volume_BCDHW, self.multiple_dhw))[:, :, :d, :h, :w]


def dynunet_plan(volume_shape: Sequence[int], max_levels: int = 5) -> list[tuple[int, int, int]]:
    """nnU-Net's strides for isotropic voxels: (1, 1, 1) for the input level, then one level per halving,
    an axis halved while it spans >= 8 voxels (so no feature map is under 4), at most ``max_levels``."""
    sizes = [float(size) for size in volume_shape]
    strides = [(1, 1, 1)]
    while len(strides) <= max_levels:
        step = tuple(2 if size >= 8 else 1 for size in sizes)
        if step == (1, 1, 1):
            break
        sizes = [size / s for size, s in zip(sizes, step, strict=True)]
        strides.append(step)
    return strides


def build_dynunet(
    in_channels: int,
    out_channels: int,
    volume_shape: Sequence[int],
    *,
    base_filters: int = 32,
    max_filters: int = MAX_DECODER_CHANNELS,
) -> nn.Module:
    """MONAI's DynUNet from scratch with ``dynunet_plan``'s strides, 3x3x3 kernels at every level, widths
    32, 64, ... capped at 320, instance norm, no deep supervision; any input shape (``PaddedNet``)."""
    from monai.networks.nets import DynUNet

    strides = dynunet_plan(volume_shape)
    if len(strides) < 2:
        raise ValueError(
            f"volume shape {tuple(volume_shape)} is too small for DynUNet: no axis spans 8 voxels"
        )
    net = DynUNet(
        3,
        in_channels,
        out_channels,
        kernel_size=[3] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[min(base_filters * 2**level, max_filters) for level in range(len(strides))],
        deep_supervision=False,
    )
    return PaddedNet(net, [math.prod(axis) for axis in zip(*strides, strict=True)])
