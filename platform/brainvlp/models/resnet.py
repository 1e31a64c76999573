"""3D ResNet from MONAI as a token-map backbone (pLGG, brain-pathology baselines; small widths for CPU).

Also home of ``checkpointed``, the activation-checkpointing call every backbone shares (this module is the
one the others already import).

Shape legend: B batch, C channels, D/H/W volume axes, P positions (d*h*w of the last stage), F width.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from brainvlp.models.config import ResNetConfig


def checkpointed(module: nn.Module, *args: Any, run: Callable[..., Any] | None = None) -> Any:
    """``module(*args)`` (or ``run(*args)``, a forward of it) keeping only its inputs for backward, which
    recomputes the rest: a stage's activations live during its own backward instead of the whole step.

    Batch-norm running statistics move once per step, as without checkpointing: the recomputation would
    otherwise update them a second time and eval-mode outputs would drift from an unchecked run.
    """
    contexts = functools.partial(_recompute_contexts, module)
    return checkpoint(run or module, *args, use_reentrant=False, context_fn=contexts)


def _recompute_contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, ...]:
    return contextlib.nullcontext(), _frozen_norm_statistics(module)


@contextlib.contextmanager
def _frozen_norm_statistics(module: nn.Module) -> Iterator[None]:
    """Batch norms in ``module`` still normalise with batch statistics but leave their running ones as they
    were (momentum 0, and the batch counter restored)."""
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for norm in norms:
        norm.momentum = 0.0
    try:
        yield
    finally:
        for norm, (momentum, count) in zip(norms, saved, strict=True):
            norm.momentum = momentum
            norm.num_batches_tracked.copy_(count)


class ResNetBackbone(nn.Module):
    def __init__(self, config: ResNetConfig, *, in_channels: int) -> None:
        super().__init__()
        from monai.networks.nets import ResNet  # lazy: importing MONAI costs seconds

        self.net = ResNet(
            block=config.block,
            layers=list(config.layers),
            block_inplanes=list(config.widths),
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_stride=config.stem_stride,
            no_max_pool=not config.max_pool,
            feed_forward=False,
        )
        expansion = 4 if config.block == "bottleneck" else 1
        self.out_dim = config.widths[-1] * expansion
        self.activation_checkpointing = False  # set by DualEncoder (model.activation_checkpointing)

    def feature_map(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map ``B x F x d x h x w`` (the attention variant needs its grid).

        Under activation checkpointing each stage (stem, layer1..4) keeps only its input for backward.
        """
        net = self.net
        stem = [net.conv1, net.bn1, net.act] + ([] if net.no_max_pool else [net.maxpool])
        # A fresh Sequential over the same modules: registering it would duplicate the weights' names.
        stages = (nn.Sequential(*stem), net.layer1, net.layer2, net.layer3, net.layer4)
        use_checkpoints = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        x = volume_BCDHW
        for stage in stages:
            x = checkpointed(stage, x) if use_checkpoints else stage(x)
        return x

    def forward(self, volume_BCDHW: torch.Tensor) -> torch.Tensor:
        return self.feature_map(volume_BCDHW).flatten(2).transpose(1, 2)  # tokens_BPF
