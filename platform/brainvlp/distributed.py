"""The one place where loss features cross workers (open_clip's ``gather_features``).

Losses receive ``functools.partial(gather_features, world_size=...)`` and stay free of
``torch.distributed`` themselves.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the gradient contiguous.

    ``all_gather``'s backward on gloo is an all-to-all that reads its gradient tensors as flat memory: a
    non-contiguous gradient (an einsum's backward can produce one) arrives scrambled on the other rank.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def gather_features(features: torch.Tensor, *, world_size: int) -> torch.Tensor:
    """Concatenate every worker's ``features`` in rank order, keeping gradients to all of them."""
    if world_size == 1:
        return features
    if not dist.is_initialized() or dist.get_world_size() != world_size:
        raise RuntimeError(f"gather_features needs an initialised process group of size {world_size}")
    parts = dist_fn.all_gather(features.contiguous())
    return torch.cat([_ContiguousGrad.apply(part) for part in parts], dim=0)
