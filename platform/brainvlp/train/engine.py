"""The one wrapper that owns DeepSpeed (OpenRLHF's ``DeepspeedStrategy``, reduced to what we use).

The train loop only calls ``engine(batch)``, ``engine.backward(loss)``, ``engine.step()`` and the
checkpoint / export methods; nothing else in the code base imports deepspeed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from brainvlp.train.config import DeepSpeedConfig, TrainConfig


def lr_lambda(
    schedule: str, warmup_steps: int, total_steps: int, poly_power: float = 0.9
) -> Callable[[int], float]:
    """Linear warm-up, then constant, cosine decay or polynomial decay (SeLIP Eq. 15:
    ``(1 - progress) ** poly_power``) to zero at ``total_steps``; progress counts the steps after warm-up.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "poly":
            return (1.0 - progress) ** poly_power
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def deepspeed_config(ds: DeepSpeedConfig, micro_batch: int, on_gpu: bool) -> dict[str, Any]:
    """The DeepSpeed JSON config derived from the spec (saved with the run)."""
    bf16 = ds.precision == "bf16" or (ds.precision == "auto" and on_gpu)
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": bf16},
        # No "optimizer" block: on CPU it would JIT-build fused Adam; a torch optimizer is passed instead.
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def param_groups(module: nn.Module, train: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters by learning rate and weight decay.

    The text encoder's rate may differ (brat: vision 5e-4, text 5e-5); everything else, projections and
    Q-Former included, uses ``train.lr``. Biases, norm scales, embeddings, learned query tokens and the
    logit scale get no weight decay: decaying them towards 0 only fights what they represent (the usual
    exclusions of BERT, CLIP and BLIP-2 training).
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            key = (".text.model." in f".{name}", _decays(name, param))
            groups.setdefault(key, []).append(param)
    text_lr = train.text_lr if train.text_lr is not None else train.lr
    return [
        {
            "params": params,
            "lr": text_lr if is_text else train.lr,
            "weight_decay": train.weight_decay if decays else 0.0,
        }
        for (is_text, decays), params in sorted(groups.items())
    ]


def _decays(name: str, param: nn.Parameter) -> bool:
    no_decay = ("bias", "norm", "embeddings", "query_tokens", "log_scale")
    return param.ndim >= 2 and not any(part in name.lower() for part in no_decay)


class Engine:
    def __init__(
        self,
        module: nn.Module,
        ds: DeepSpeedConfig,
        train: TrainConfig,
        *,
        micro_batch: int,
        total_steps: int,
    ) -> None:
        optimizer = torch.optim.AdamW(param_groups(module, train))
        # The scheduler steps once per optimizer step, i.e. every gradient_accumulation_steps micro-steps.
        optimizer_steps = max(1, total_steps // ds.gradient_accumulation_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(train.schedule, train.warmup_steps, optimizer_steps, train.poly_power)
        )
        self.config = deepspeed_config(ds, micro_batch, torch.cuda.is_available() and train.use_gpu)
        import deepspeed  # imported where used: validating a spec must not pay (or print) DeepSpeed's import

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=self.config
        )
        self.zero_stage = ds.zero_stage

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.engine(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def save_checkpoint(self, directory: str | Path) -> None:
        """Collective: every rank must call it."""
        self.engine.save_checkpoint(str(directory), tag="engine")

    def load_checkpoint(self, directory: str | Path) -> None:
        self.engine.load_checkpoint(str(directory), tag="engine")

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model's weights; under ZeRO-3 gathered from every rank (collective)."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.engine.module.state_dict()
