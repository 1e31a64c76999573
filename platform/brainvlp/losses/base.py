"""The contract every loss follows, and the math several share.

A loss is a ``Loss`` built as ``SomeLoss(config, rank=..., world_size=..., gather=...)`` whose forward takes
the model's output dict and returns a dict: keys ending in ``_loss`` are summed into the training objective,
everything else is logged. What it reads (``inputs``) and how retrieval scores its pairs (``scoring``) come
from its config (``brainvlp.losses.config``). ``gather`` is the only way a loss sees other workers'
features (it is ``brainvlp.distributed.gather_features`` under data parallelism, the identity on one
worker), so the loss math itself stays single-device and testable without a process group.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Gather = Callable[[torch.Tensor], torch.Tensor]


def no_gather(features: torch.Tensor) -> torch.Tensor:
    return features


class Loss(nn.Module):
    """Base of every loss: its config and its place among data-parallel workers.

    ``single_process()`` computes on this process's batch alone for a while (rank 0 of 1, no gather): dev
    evaluation runs the training loss on every worker over the whole dev split, where gathering would
    only repeat the same batch.
    """

    def __init__(
        self, config: Any, *, rank: int = 0, world_size: int = 1, gather: Gather = no_gather
    ) -> None:
        super().__init__()
        self.config = config
        self._placement = (rank, world_size, gather)
        self._alone = False

    @property
    def rank(self) -> int:
        return 0 if self._alone else self._placement[0]

    @property
    def world_size(self) -> int:
        return 1 if self._alone else self._placement[1]

    def gather(self, features: torch.Tensor) -> torch.Tensor:
        return features if self._alone else self._placement[2](features)

    @property
    def inputs(self) -> frozenset[str]:
        return self.config.inputs

    @property
    def scoring(self) -> str:
        return self.config.scoring

    @contextlib.contextmanager
    def single_process(self) -> Iterator[None]:
        alone, self._alone = self._alone, True
        try:
            yield
        finally:
            self._alone = alone


class LogitScale(nn.Module):
    """CLIP's learnable logit scale exp(t), t starting at log(1 / temperature), clamped at ``max_scale``."""

    def __init__(self, temperature: float, *, learnable: bool = True, max_scale: float = 100.0) -> None:
        super().__init__()
        self.max_log_scale = math.log(max_scale)
        # Shape (1,), not a scalar: DeepSpeed's ZeRO flattening cannot view 0-dim parameters.
        self.log_scale = nn.Parameter(torch.full((1,), math.log(1.0 / temperature)), requires_grad=learnable)

    def forward(self) -> torch.Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp().squeeze(0)


def symmetric_infonce(
    scale: torch.Tensor, sim_i2t_BG: torch.Tensor, sim_t2i_BG: torch.Tensor, *, rank: int
) -> torch.Tensor:
    """(CE(image -> text) + CE(text -> image)) / 2, each local query's match at ``rank * B + b``."""
    labels_B = torch.arange(sim_i2t_BG.shape[0], device=sim_i2t_BG.device) + rank * sim_i2t_BG.shape[0]
    return (F.cross_entropy(scale * sim_i2t_BG, labels_B) + F.cross_entropy(scale * sim_t2i_BG, labels_B)) / 2


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
