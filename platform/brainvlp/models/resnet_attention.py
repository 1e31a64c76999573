"""3D ResNet with a self-attention block on its last stage (pLGG's image encoder).

The block is pre-norm with a residual: ``tokens + MultiheadAttention(LayerNorm(tokens))`` over the P
positions of the last feature map, so the ResNet's features pass through unchanged where attention adds
nothing. Its attention map is kept for explainability (METHODS 4: upsampled to the volume, thresholded,
Dice against the tumour mask); see ``ResNetAttentionBackbone``.

Shape legend: B batch, C channels, D/H/W volume axes, d/h/w last-stage grid, P = d*h*w positions,
F width of the last stage.
"""

from __future__ import annotations

import torch
from torch import nn

from brainvlp.models.config import ResNetAttentionConfig
from brainvlp.models.resnet import ResNetBackbone


class ResNetAttentionBackbone(nn.Module):
    """Token map ``B x P x F`` of a ResNet whose last stage is followed by self-attention.

    After every forward pass:

    - ``last_attention_BPP`` (``B x P x P``, detached, mean over heads): row p is how position p spread
      its attention over all positions (rows sum to 1);
    - ``last_grid_dhw``: the last feature map's ``(d, h, w)``, which P flattens in row-major order.

    A saliency volume is thus ``last_attention_BPP.mean(1).view(B, 1, d, h, w)`` (attention each position
    receives), interpolated to ``D x H x W``.
    """

    def __init__(self, config: ResNetAttentionConfig, *, in_channels: int) -> None:
        super().__init__()
        self.resnet = ResNetBackbone(config, in_channels=in_channels)
        self.out_dim = self.resnet.out_dim
        self.norm = nn.LayerNorm(self.out_dim)
        self.attention = nn.MultiheadAttention(self.out_dim, config.num_heads, batch_first=True)
        self.last_attention_BPP: torch.Tensor | None = None
        self.last_grid_dhw: tuple[int, int, int] | None = None

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        fmap_BFdhw = self.resnet.feature_map(volume_BCDHW)
        tokens_BPF = fmap_BFdhw.flatten(2).transpose(1, 2)
        normed_BPF = self.norm(tokens_BPF)
        attended_BPF, attention_BPP = self.attention(
            normed_BPF, normed_BPF, normed_BPF, need_weights=True, average_attn_weights=True
        )
        self.last_attention_BPP = attention_BPP.detach()
        self.last_grid_dhw = tuple(fmap_BFdhw.shape[2:])
        return tokens_BPF + attended_BPF
