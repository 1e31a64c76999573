"""Image and report encoders with projection heads into one L2-normalised space (CLIP / ConVIRT shape),
and optionally a Q-Former whose views meet the report's sentences there (brat, BLIP-2).

Shape legend: B batch, C channels, D/H/W volume axes, P positions, F backbone width, H text width,
E embedding width, T tokens, Q views, S sentences.

Activation checkpointing (``activation_checkpointing: true``) trades compute for memory: in training, the
backbone keeps only each stage's input for backward (DenseNet: stem and dense blocks; ResNet: stem and
layers; other backbones: each block of their block lists), the Q-Former and a trainable text encoder each
layer's, and backward recomputes the rest: about one more forward pass of them. Losses and gradients are
unchanged.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from brainvlp.models.config import VISION, ModelConfig
from brainvlp.models.local_align import LocalAlignment
from brainvlp.models.qformer import QFormer, enable_layer_checkpointing
from brainvlp.models.resnet import checkpointed
from brainvlp.models.text import TextEncoder


def projection(in_dim: int, hidden: int | None, out_dim: int, dropout: float) -> nn.Module:
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
    )


def checkpoint_blocks(backbone: nn.Module) -> None:
    """Checkpoint each block of a backbone's block lists (ViT's transformer blocks, the U-Net encoder's
    levels), or else its whole forward, for backbones without checkpointed stages of their own.

    Each block's ``forward`` is replaced on the instance, so parameter names (and exports) stay the same.
    """
    containers = [c for c in backbone.children() if isinstance(c, nn.Sequential | nn.ModuleList)]
    for block in [block for container in containers for block in container] or [backbone]:
        block.forward = types.MethodType(_checkpointed_forward, block)


def _checkpointed_forward(self: nn.Module, *args: Any) -> Any:
    """The class's own forward, checkpointed in training with gradients on."""
    run = functools.partial(type(self).forward, self)
    if self.training and torch.is_grad_enabled():
        return checkpointed(self, *args, run=run)
    return run(*args)


class DualEncoder(nn.Module):
    def __init__(self, config: ModelConfig, *, in_channels: int, volume_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.vision = VISION.build(config.vision, in_channels=in_channels)
        self.text = TextEncoder(config.text)
        self.image_pool = config.image_pool
        with torch.no_grad():  # the flattened head needs P, which depends on the backbone's strides
            num_positions = self.vision(torch.zeros(1, in_channels, *volume_shape)).shape[1]
        image_dim = self.vision.out_dim * (num_positions if config.image_pool == "flatten" else 1)
        self.image_proj = projection(image_dim, config.proj_hidden, config.embed_dim, config.image_dropout)
        self.text_proj = projection(
            self.text.out_dim, config.proj_hidden, config.embed_dim, config.text_dropout
        )
        self.qformer = None
        if config.qformer is not None:
            self.qformer = QFormer(config.qformer, self.text.model, image_dim=self.vision.out_dim)
            self.view_proj = projection(
                self.text.out_dim, config.proj_hidden, config.embed_dim, config.image_dropout
            )

        self.local_align = None
        if config.local is not None:
            self.local_align = LocalAlignment(
                config.local, image_dim=self.vision.out_dim, text_dim=self.text.out_dim
            )
        if config.activation_checkpointing:
            self.enable_activation_checkpointing()

    def enable_activation_checkpointing(self) -> None:
        """Backbone per stage (its own checkpointing where it has one), Q-Former and a trainable text
        encoder per layer (the text encoder keeps about as much for backward as the Q-Former)."""
        staged = [m for m in self.vision.modules() if hasattr(m, "activation_checkpointing")]
        for module in staged:
            module.activation_checkpointing = True
        if not staged:
            checkpoint_blocks(self.vision)
        if self.qformer is not None:
            self.qformer.enable_activation_checkpointing()
        if not self.text.frozen and getattr(self.text.model, "supports_gradient_checkpointing", False):
            enable_layer_checkpointing(self.text.model)

    def encode_image(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        return self.image_embedding(self.vision(volume_BCDHW))

    def image_embedding(self, tokens_BPF: torch.Tensor) -> torch.Tensor:
        """The global image embedding ``B x E`` (normalised) from the backbone's token map."""
        pooled = tokens_BPF.flatten(1) if self.image_pool == "flatten" else tokens_BPF.mean(1)
        return F.normalize(self.image_proj(pooled), dim=-1)

    def encode_views(self, tokens_BPF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Q-Former views ``B x Q x E`` (normalised) and their cross-attention maps ``B x Q x P``, from the
        backbone's token map."""
        if self.qformer is None:
            raise ValueError("this model has no Q-Former: set model.qformer for view-based losses")
        views_BQH, attn_BQP = self.qformer(tokens_BPF)
        return F.normalize(self.view_proj(views_BQH), dim=-1), attn_BQP

    def text_features(
        self,
        input_ids_BT: torch.Tensor,
        attention_mask_BT: torch.Tensor,
        spans_BS2: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder outputs before projection, report ``B x H`` and (given spans) sentences ``B x S x H``:
        what a frozen encoder lets us cache per study."""
        return self.text.encode(input_ids_BT, attention_mask_BT, spans_BS2)

    def project_text(self, features_BH: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(features_BH), dim=-1)

    def project_sentences(self, sentences_BSH: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(sentences_BSH), dim=-1)

    def encode_text(self, input_ids_BT: torch.Tensor, attention_mask_BT: torch.Tensor) -> torch.Tensor:
        return self.project_text(self.text_features(input_ids_BT, attention_mask_BT)[0])
