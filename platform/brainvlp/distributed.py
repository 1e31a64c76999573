"""The one place where loss features cross workers (open_clip's ``gather_features``).

Losses receive ``functools.partial(gather_features, world_size=...)`` and stay free of
``torch.distributed`` themselves.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def gather_features(features: torch.Tensor, *, world_size: int) -> torch.Tensor:
    """Concatenate every worker's ``features`` in rank order, keeping gradients to all of them."""
    if world_size == 1:
        return features
    if not dist.is_initialized() or dist.get_world_size() != world_size:
        raise RuntimeError(f"gather_features needs an initialised process group of size {world_size}")
    return torch.cat(dist_fn.all_gather(features.contiguous()), dim=0)
