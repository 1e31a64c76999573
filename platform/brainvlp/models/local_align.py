"""Local image-report alignment of the pLGG paper (seeds 000, "Local CL loss function", Eq. 2).

Shape legend: B batch, P image positions, F backbone width, T tokens, H text width, E local width.

Local image features (the backbone's token map) and local text features (the encoder's token states,
special tokens excluded) are projected to a common width E. Two cross-attention modules then give each
modality a weighted counterpart built from the other: image positions attend to the report's tokens
(the "report-based-weighted local image representation") and tokens attend to the image positions. The
triplet loss pulls each local representation towards its own weighted counterpart
(``brainvlp.losses.triplet``). The attention maps are returned for explainability.

The paper takes its local image features from ResNet's third stage; here they are the backbone's output
token map, the same features every other method reads.
"""

from __future__ import annotations

import torch
from torch import nn

from brainvlp.models.config import LocalAlignConfig


class LocalAlignment(nn.Module):
    def __init__(self, config: LocalAlignConfig, *, image_dim: int, text_dim: int) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, config.dim)
        self.text_proj = nn.Linear(text_dim, config.dim)
        self.image_attends_text = nn.MultiheadAttention(
            config.dim, config.num_heads, dropout=config.dropout, batch_first=True
        )
        self.text_attends_image = nn.MultiheadAttention(
            config.dim, config.num_heads, dropout=config.dropout, batch_first=True
        )

    def forward(
        self, tokens_BPF: torch.Tensor, hidden_BTH: torch.Tensor, content_BT: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Local features, their weighted counterparts and attention maps. ``content_BT`` is True on the
        report's content tokens; the text outputs are zero elsewhere."""
        image_BPE = self.image_proj(tokens_BPF)
        text_BTE = self.text_proj(hidden_BTH) * content_BT.unsqueeze(-1)
        image_weighted_BPE, image_attn_BPT = self.image_attends_text(
            image_BPE, text_BTE, text_BTE, key_padding_mask=~content_BT
        )
        text_weighted_BTE, text_attn_BTP = self.text_attends_image(text_BTE, image_BPE, image_BPE)
        return {
            "image_local": image_BPE,
            "image_weighted": image_weighted_BPE,
            "text_local": text_BTE,
            "text_weighted": text_weighted_BTE * content_BT.unsqueeze(-1),
            "text_mask": content_BT,
            "image_attn": image_attn_BPT,
            "text_attn": text_attn_BTP,
        }
