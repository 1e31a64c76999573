"""Report generation from a volume (brat section 5, Table 4; Li et al.'s BLIP-2 prefix design).

The image encoder's features (the backbone's token map ``B x P x F``, or a brat export's Q-Former views
``B x Q x H``) pass through a bridging MLP into the language model's embedding width and become ``N`` soft
tokens; the prompt's token embeddings follow, then the report's. The LM is trained with next-token
cross-entropy on the report tokens only: the soft tokens, the prompt and the padding carry label -100
(ignored by Hugging Face's loss), so the model is never asked to predict the image or the prompt.
Generation feeds the soft tokens and the prompt as ``inputs_embeds`` to ``generate()``, which returns only
the new tokens.

A pretrained image encoder is frozen (``freeze_encoder``: eval mode, no gradients, its batch-norm
statistics kept); ``init: scratch`` trains it with the rest (Table 4's "None" row).

Shape legend: B batch, C channels, D/H/W volume axes, N soft tokens (P positions or Q views), F encoder
width, L the LM's hidden width, K prompt tokens, T report tokens.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from brainvlp.models.config import DecodingConfig

IGNORE = -100  # Hugging Face's ignored label


class TokenMap(nn.Module):
    """A vision backbone's token map ``B x P x F``."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone, self.out_dim = backbone, backbone.out_dim

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        return self.backbone(volume_BCDHW)


class QFormerViews(nn.Module):
    """A dual encoder's Q-Former views ``B x Q x H`` before their projection (brat's multi-view input)."""

    def __init__(self, dual_encoder: nn.Module) -> None:
        super().__init__()
        if dual_encoder.qformer is None:
            raise ValueError("inputs: views needs an export with a Q-Former (brat, qformer_itc)")
        self.encoder, self.out_dim = dual_encoder, dual_encoder.text.out_dim

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        views_BQH, _ = self.encoder.qformer(self.encoder.vision(volume_BCDHW))
        return views_BQH


def bridge(in_dim: int, hidden: int | None, out_dim: int) -> nn.Module:
    if hidden is None:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class ReportGenerator(nn.Module):
    def __init__(
        self,
        image_encoder: nn.Module,
        language_model: nn.Module,
        prompt_ids: list[int],
        *,
        bridge_hidden: int | None,
        freeze_encoder: bool,
    ) -> None:
        super().__init__()
        self.image_encoder, self.language_model = image_encoder, language_model
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            image_encoder.requires_grad_(False)
        width = language_model.get_input_embeddings().embedding_dim
        self.bridge = bridge(image_encoder.out_dim, bridge_hidden, width)
        self.register_buffer("prompt_ids_K", torch.tensor(prompt_ids, dtype=torch.long), persistent=False)

    def train(self, mode: bool = True) -> ReportGenerator:
        super().train(mode)
        if self.freeze_encoder:  # a frozen encoder's batch norm keeps its pretrained statistics
            self.image_encoder.eval()
        return self

    def prefix(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        """Soft tokens then prompt embeddings, ``B x (N + K) x L``."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            features_BNF = self.image_encoder(volume_BCDHW)
        soft_BNL = self.bridge(features_BNF)
        embed = self.language_model.get_input_embeddings()
        prompt_BKL = embed(self.prompt_ids_K).to(soft_BNL.dtype).expand(soft_BNL.shape[0], -1, -1)
        return torch.cat([soft_BNL, prompt_BKL], dim=1)

    def forward(
        self, volume_BCDHW: torch.Tensor, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        prefix_BXL = self.prefix(volume_BCDHW)  # X = N + K
        tokens_BTL = self.language_model.get_input_embeddings()(input_ids_BT).to(prefix_BXL.dtype)
        batch, width = prefix_BXL.shape[:2]
        mask_BX = torch.ones(batch, width, dtype=attention_mask_BT.dtype, device=attention_mask_BT.device)
        labels_BT = input_ids_BT.masked_fill(attention_mask_BT == 0, IGNORE)
        out = self.language_model(
            inputs_embeds=torch.cat([prefix_BXL, tokens_BTL], dim=1),
            attention_mask=torch.cat([mask_BX, attention_mask_BT], dim=1),
            labels=torch.cat([torch.full_like(mask_BX, IGNORE), labels_BT], dim=1),
        )
        return {"loss": out.loss, "logits": out.logits}

    @torch.no_grad()
    def generate(self, volume_BCDHW: torch.Tensor, decoding: DecodingConfig, **special: Any) -> torch.Tensor:
        """Report token ids ``B x T'`` (new tokens only, padded after EOS); ``special``: ``eos_token_id``,
        ``pad_token_id``."""
        prefix_BXL = self.prefix(volume_BCDHW)
        mask_BX = torch.ones(prefix_BXL.shape[:2], dtype=torch.long, device=prefix_BXL.device)
        return self.language_model.generate(
            inputs_embeds=prefix_BXL,
            attention_mask=mask_BX,
            max_new_tokens=decoding.max_new_tokens,
            num_beams=decoding.num_beams,
            repetition_penalty=decoding.repetition_penalty,
            no_repeat_ngram_size=decoding.no_repeat_ngram_size,
            do_sample=False,
            **special,
        )
