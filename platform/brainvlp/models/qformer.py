"""Q-Former (BLIP-2, brat): learnable queries that read the image tokens through cross-attention.

Shape legend: B batch, Q queries (views), P image positions, F image feature width, H Q-Former width (the
text encoder's), T report tokens, V vocabulary.

Built from transformers' ``Blip2QFormerModel`` (cross-attention to the layer-normed image tokens in every
``cross_attention_every``-th layer, separate feed-forward weights for queries and text) rather than a
copied BERT. Like BLIP-2 and brat, its self-attention and feed-forward weights start from the text
encoder's (BiomedBERT on a cluster); cross-attention starts random.

Two modes share the weights:
- ``forward``: queries only -> view embeddings ``B x Q x H`` and the last cross-attention layer's maps
  ``B x Q x P`` (mean over heads), which the DPP quality-diversity loss reads;
- ``itg_logits``: [queries; report tokens] with a mask where queries see only queries and each token sees
  the queries and earlier tokens (image-grounded text generation, a causal LM over the report).

Attention dropout defaults to 0: with dropout the returned maps are no longer distributions over P.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from brainvlp.models.config import QFormerConfig

if TYPE_CHECKING:  # imported where used: transformers costs most of a second to import
    from transformers import PreTrainedModel


_BERT_TO_QFORMER = (
    (r"embeddings\.word_embeddings\.(.*)", ("word_embeddings.{}",)),
    (r"embeddings\.position_embeddings\.(.*)", ("position_embeddings.{}",)),
    (r"embeddings\.LayerNorm\.(.*)", ("qformer.layernorm.{}",)),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(.*)", ("qformer.encoder.layer.{}.attention.attention.{}",)),
    (r"encoder\.layer\.(\d+)\.attention\.output\.(.*)", ("qformer.encoder.layer.{}.attention.output.{}",)),
    (
        r"encoder\.layer\.(\d+)\.intermediate\.(.*)",
        ("qformer.encoder.layer.{}.intermediate.{}", "qformer.encoder.layer.{}.intermediate_query.{}"),
    ),
    (
        r"encoder\.layer\.(\d+)\.output\.(.*)",
        ("qformer.encoder.layer.{}.output.{}", "qformer.encoder.layer.{}.output_query.{}"),
    ),
)


def enable_layer_checkpointing(model: PreTrainedModel) -> None:
    """transformers' own per-layer activation checkpointing, non-reentrant (no inputs need gradients, and
    outputs returned on the side, like attention maps, keep theirs); active in training mode only."""
    if getattr(model.config, "use_cache", False):  # encoders cache nothing; it would warn it turns it off
        model.config.use_cache = False
    # transformers 5 renamed gradient_checkpointing_enable (now deprecated); both take the kwargs first.
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


class QFormer(nn.Module):
    def __init__(self, config: QFormerConfig, text_model: PreTrainedModel, image_dim: int) -> None:
        super().__init__()
        from transformers import Blip2QFormerConfig, Blip2QFormerModel

        text = text_model.config
        num_layers = config.num_layers or text.num_hidden_layers
        if config.init_from_text and num_layers > text.num_hidden_layers:
            raise ValueError(
                f"qformer.num_layers={num_layers} but the text encoder it starts from has only "
                f"{text.num_hidden_layers}; lower it or set qformer.init_from_text: false"
            )
        qconfig = Blip2QFormerConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=text.num_attention_heads,
            intermediate_size=text.intermediate_size,
            hidden_act=text.hidden_act,
            hidden_dropout_prob=text.hidden_dropout_prob,
            attention_probs_dropout_prob=config.attention_dropout,
            max_position_embeddings=text.max_position_embeddings,
            layer_norm_eps=text.layer_norm_eps,
            cross_attention_frequency=config.cross_attention_every,
            encoder_hidden_size=image_dim,
            use_qformer_text_input=True,  # gives every layer the text feed-forward block that ITG needs
        )
        qconfig._attn_implementation = "eager"  # the only implementation that returns attention maps
        hidden = text.hidden_size
        self.ln_vision = nn.LayerNorm(image_dim)
        self.query_tokens = nn.Parameter(torch.randn(1, config.num_queries, hidden) * 0.02)
        self.qformer = Blip2QFormerModel(qconfig)
        self.word_embeddings = nn.Embedding(text.vocab_size, hidden)
        self.position_embeddings = nn.Embedding(text.max_position_embeddings, hidden)
        self.lm_head = nn.Linear(hidden, text.vocab_size)
        if config.init_from_text:
            self.load_text_weights(text_model)

    def load_text_weights(self, text_model: PreTrainedModel) -> None:
        """Copy a BERT-style encoder's embeddings, self-attention and feed-forward weights (BLIP-2 init)."""
        own = self.state_dict()
        copied = 0
        for key, value in text_model.state_dict().items():
            for pattern, targets in _BERT_TO_QFORMER:
                match = re.fullmatch(pattern, key)
                for target in targets if match else ():
                    name = target.format(*match.groups())
                    if name in own:  # text layers beyond num_layers have no counterpart
                        own[name] = value.clone()
                        copied += 1
        if copied == 0:
            raise ValueError(
                f"qformer.init_from_text: {type(text_model).__name__} has no BERT-style weights to start "
                "from; set qformer.init_from_text: false"
            )
        own["lm_head.weight"] = own["word_embeddings.weight"].clone()  # BERT's LM head shares embeddings
        self.load_state_dict(own)

    def enable_activation_checkpointing(self) -> None:
        """Recompute each Q-Former layer in backward (transformers' per-layer checkpointing, non-reentrant:
        the cross-attention maps the DPP loss reads keep their gradients). Active in training mode only."""
        # The Q-Former reads query embeddings, not token ids: with "input_ids" transformers would look for
        # input embeddings to hook (it has none) and warn.
        self.qformer.main_input_name = "query_embeds"
        enable_layer_checkpointing(self.qformer)

    def forward(self, image_tokens_BPF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View embeddings ``B x Q x H`` and the last cross-attention layer's maps ``B x Q x P``."""
        image_BPF = self.ln_vision(image_tokens_BPF)
        queries_BQH = self.query_tokens.expand(image_BPF.shape[0], -1, -1)
        out = self.qformer(query_embeds=queries_BQH, encoder_hidden_states=image_BPF, output_attentions=True)
        attn_BQP = out.cross_attentions[-1].mean(1)
        return out.last_hidden_state, attn_BQP

    def itg_logits(
        self, image_tokens_BPF: torch.Tensor, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor
    ) -> torch.Tensor:
        """Next-token logits ``B x T x V`` for every report position, conditioned on the image's queries."""
        image_BPF = self.ln_vision(image_tokens_BPF)
        batch, num_tokens = input_ids_BT.shape
        num_queries = self.query_tokens.shape[1]
        positions_T = torch.arange(num_tokens, device=input_ids_BT.device)
        text_BTH = self.word_embeddings(input_ids_BT) + self.position_embeddings(positions_T)
        embeds = torch.cat([self.query_tokens.expand(batch, -1, -1), text_BTH.to(self.query_tokens.dtype)], 1)
        mask = _itg_mask(num_queries, attention_mask_BT, dtype=embeds.dtype)
        out = self.qformer(
            query_embeds=embeds,
            query_length=num_queries,
            attention_mask=mask,
            encoder_hidden_states=image_BPF,
        )
        return self.lm_head(out.last_hidden_state[:, num_queries:])


def _itg_mask(num_queries: int, attention_mask_BT: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``B x 1 x L x L`` mask (L = Q + T): queries see queries; a token sees the queries and the
    non-padding tokens up to itself."""
    batch, num_tokens = attention_mask_BT.shape
    length = num_queries + num_tokens
    device = attention_mask_BT.device
    allowed = torch.zeros(batch, length, length, dtype=torch.bool, device=device)
    allowed[:, :, :num_queries] = True
    causal_TT = torch.tril(torch.ones(num_tokens, num_tokens, dtype=torch.bool, device=device))
    allowed[:, num_queries:, num_queries:] = causal_TT & attention_mask_BT.bool()[:, None, :]
    blocked = torch.zeros(batch, 1, length, length, dtype=dtype, device=device)
    return blocked.masked_fill(~allowed[:, None], torch.finfo(dtype).min)
