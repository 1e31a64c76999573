"""The loss registry and the contract every loss follows.

A loss is an ``nn.Module`` built as ``Loss(config, rank=..., world_size=..., gather=...)`` whose forward takes
the model's output dict and returns a dict: keys ending in ``_loss`` are summed into the training objective,
everything else is logged. ``gather`` is the only way a loss sees other workers' features (it is
``brainvlp.distributed.gather_features`` under data parallelism, the identity on one worker), so the loss
math itself stays single-device and testable without a process group.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from brainvlp.registry import Registry

Gather = Callable[[torch.Tensor], torch.Tensor]

LOSSES: Registry = Registry("loss")


@dataclass
class LossConfig:
    """Base of every loss config; ``name`` selects the registered loss."""

    registry: ClassVar[Registry] = LOSSES
    name: str


def no_gather(features: torch.Tensor) -> torch.Tensor:
    return features


def cross_modal_similarities(
    image_BD: torch.Tensor, text_BD: torch.Tensor, *, rank: int, gather: Gather
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cosine similarities of this worker's B queries against all G gathered candidates, both ways.

    Returns ``sim_i2t_BG``, ``sim_t2i_BG`` and the index of each query's match among the candidates (the
    local batch sits at offset ``rank * B`` of the gathered one).
    """
    image_BD, text_BD = F.normalize(image_BD, dim=-1), F.normalize(text_BD, dim=-1)
    image_GD, text_GD = gather(image_BD), gather(text_BD)
    labels_B = torch.arange(image_BD.shape[0], device=image_BD.device) + rank * image_BD.shape[0]
    return image_BD @ text_GD.T, text_BD @ image_GD.T, labels_B


def total_loss(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the entries whose key ends in ``_loss`` (open_clip's convention)."""
    terms = [value for key, value in outputs.items() if key.endswith("_loss")]
    if not terms:
        raise ValueError(f"loss returned no '*_loss' entry, only {sorted(outputs)}")
    return torch.stack(terms).sum()
