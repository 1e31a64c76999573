"""Checkpoints of a pretraining run and exact resume from them, through ``ray.train.report``.

A checkpoint directory, merged by Ray from every worker's part:

- ``deepspeed/``: the engine's model, optimizer and scheduler state (each rank writes its ZeRO shard);
- ``run_state.json`` (rank 0): step, epoch, batches consumed in that epoch, the metric history and the
  best dev score so far;
- ``best.safetensors`` (rank 0, when selecting by a dev metric): the best weights so far, so that a restart
  cannot lose them;
- in the final checkpoint also ``export/`` and ``history.jsonl``.

Resume is exact without saving random states: every step reseeds torch and the augmentation from
(seed, rank, step) (``seed_step``), and the data position is restored by skipping the batches the
interrupted epoch had already consumed (``data.deterministic`` makes that order reproducible). Ray Train
hands the latest checkpoint to restarted workers (``train.max_failures``) and to a re-run of the same spec
under the same run name (its checkpoint manager reloads from the run's storage).
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import torch
from safetensors.torch import load_file, save_file

from brainvlp.train.engine import Engine

RUN_STATE, BEST = "run_state.json", "best.safetensors"


@dataclass
class RunState:
    """Where a run is; rank 0's copy travels in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of ``epoch`` already trained on
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_step: int = 0


class BestWeights:
    """The weights with the best dev metric so far (a CPU copy), when the spec selects by one
    (``train.select``: ``best_dev_R@5`` the highest, ``best_dev_loss`` the lowest)."""

    def __init__(self, select: str) -> None:
        self.enabled = select.startswith("best_")
        self.metric = select.removeprefix("best_")
        self.sign = -1.0 if self.metric.endswith("loss") else 1.0  # scores: higher is better
        self.score, self.step, self.state = -math.inf, 0, None

    @property
    def label(self) -> str:
        return f"best {self.metric.replace('_', ' ')} {self.sign * self.score:.4f} at step {self.step}"

    def update(self, metrics: dict[str, float], step: int, engine: Engine) -> None:
        # Every rank sees the same unsplit dev set and the same weights, so all take this branch together
        # (full_state_dict is a collective under ZeRO-3).
        score = self.sign * metrics[self.metric] if self.enabled else -math.inf
        if self.enabled and score > self.score:
            state = engine.full_state_dict()
            self.score, self.step = score, step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def seed_step(seed: int, rank: int, step: int, augment: Any | None) -> None:
    """Seed everything random in a training step from (seed, rank, step) alone: dropout, negative sampling
    and augmentation then replay identically after a resume."""
    step_seed = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    torch.manual_seed(step_seed)
    if augment is not None:
        augment.set_random_state(step_seed)


def save_checkpoint(
    engine: Engine,
    run: RunState,
    best: BestWeights,
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Collective: every rank saves its engine state and reports; rank 0 adds the run state, the best
    weights and ``extra`` files (name -> bytes or a callable writing into the directory)."""
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        engine.save_checkpoint(directory / "deepspeed")
        if rank == 0:
            run.best_score, run.best_step = best.score, best.step
            (directory / RUN_STATE).write_text(json.dumps(asdict(run)))
            if best.state is not None:
                save_file({k: v.contiguous() for k, v in best.state.items()}, str(directory / BEST))
            for write in (extra or {}).values():
                write(directory)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def restore(engine: Engine, best: BestWeights) -> RunState:
    """The run state of the latest checkpoint, with engine and best weights loaded; a fresh state when
    the run starts from scratch."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return RunState()
    with checkpoint.as_directory() as path:
        directory = Path(path)
        engine.load_checkpoint(directory / "deepspeed")
        run = RunState(**json.loads((directory / RUN_STATE).read_text()))
        if (directory / BEST).exists():
            best.state = load_file(str(directory / BEST))
            best.score, best.step = run.best_score, run.best_step
    return run
