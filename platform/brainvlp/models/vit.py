"""3D Vision Transformer as a token-map backbone (brat's ViT baseline: patch 16, sin-cos positions).

The blocks are MONAI's (``TransformerBlock``, the same ``build_sincos_position_embedding`` table that
``monai.networks.nets.ViT(pos_embed_type="sincos")`` holds), and the state dict matches MONAI's ``ViT``
apart from ``patch_embedding.`` prefixes and its fixed position table. Unlike MONAI's ``ViT`` the image
size is not fixed at build time: sin-cos positions have no weights, so the table is made for whatever patch
grid the input has. The model spec therefore need not repeat the volume shape, which comes from the data.

Shape legend: B batch, C channels, D/H/W volume axes, d/h/w patch grid (D/pD, ...), P = d*h*w patches,
F hidden size.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from brainvlp.models.config import ViTConfig


@functools.lru_cache(maxsize=8)
def sincos_positions(
    grid_dhw: tuple[int, int, int], width: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """MONAI's fixed 3D sin-cos table ``1 x P x F`` for a patch grid, built once per grid and device."""
    from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding  # lazy: MONAI is slow

    with warnings.catch_warnings():  # MONAI calls torch.meshgrid without `indexing` (it means "ij")
        warnings.filterwarnings("ignore", message="torch.meshgrid")
        table = build_sincos_position_embedding(list(grid_dhw), width, spatial_dims=3)
    return table.detach().to(device=device, dtype=dtype)


def patch_grid(shape_dhw: tuple[int, ...], patch_dhw: tuple[int, int, int]) -> tuple[int, int, int]:
    """Patches per axis; a volume the patches do not tile is a config error, not a silent crop."""
    if any(size % patch for size, patch in zip(shape_dhw, patch_dhw, strict=True)):
        raise ValueError(
            f"vision.patch_size {patch_dhw} does not divide the volume shape {tuple(shape_dhw)} (D, H, W); "
            "choose a patch size that divides every axis or resize the volumes"
        )
    return tuple(size // patch for size, patch in zip(shape_dhw, patch_dhw, strict=True))


class ViTBackbone(nn.Module):
    """Patch tokens after the final norm (no CLS token: pooling is the owning model's job)."""

    def __init__(self, config: ViTConfig, *, in_channels: int) -> None:
        super().__init__()
        from monai.networks.blocks import TransformerBlock  # lazy: importing MONAI costs seconds

        self.patch_dhw = config.patch_dhw
        self.out_dim = config.hidden_size
        # Non-overlapping patches as one strided convolution (MONAI's proj_type="conv").
        self.patch_embeddings = nn.Conv3d(
            in_channels, config.hidden_size, kernel_size=self.patch_dhw, stride=self.patch_dhw
        )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                config.hidden_size, config.mlp_dim, config.num_heads, config.dropout, config.qkv_bias
            )
            for _ in range(config.num_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size)

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        grid_dhw = patch_grid(volume_BCDHW.shape[2:], self.patch_dhw)
        tokens_BPF = self.patch_embeddings(volume_BCDHW).flatten(2).transpose(1, 2)
        positions_1PF = sincos_positions(grid_dhw, self.out_dim, tokens_BPF.device, tokens_BPF.dtype)
        tokens_BPF = self.dropout(tokens_BPF + positions_1PF)
        for block in self.blocks:
            tokens_BPF = block(tokens_BPF)
        return self.norm(tokens_BPF)
