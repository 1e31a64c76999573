"""The run plan every downstream task shares (classification and segmentation): every (model, fraction,
seed, fold) run with its rows, each run a Ray task with its own torch thread count, and the gathering of
their results with progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from brainvlp.console import Progress
from brainvlp.downstream.config import DownstreamSpec
from brainvlp.downstream.folds import label_fraction


@dataclass
class Run:
    model: str
    fraction: float
    seed: int
    fold: int


def plan_runs(
    spec: DownstreamSpec, y: np.ndarray, folds_N: np.ndarray
) -> list[tuple[Run, dict[str, np.ndarray]]]:
    """Every (model, fraction, seed, fold) run with its train, test and explained rows."""
    planned = []
    for fold in range(spec.protocol.folds):
        train_rows = np.flatnonzero((folds_N != fold) & (folds_N >= 0))
        test_rows, external_rows = np.flatnonzero(folds_N == fold), np.flatnonzero(folds_N < 0)
        for seed in range(spec.protocol.seeds):
            for fraction in spec.protocol.fractions:
                train = label_fraction(train_rows, y, fraction, seed * 1000 + fold)
                rows = {"train": train, "test": test_rows, "external": external_rows}
                for entry in spec.models:
                    planned.append((Run(entry.name, fraction, seed, fold), rows))
    return planned


@ray.remote
def in_worker(threads: int, work: Callable[..., Any], *args: Any) -> Any:
    """``work(*args)`` in a Ray worker with the run's torch thread count (Ray's default is one per CPU)."""
    torch.set_num_threads(threads)
    return work(*args)


def gather_runs(pending: dict[Any, Run]) -> list[tuple[Run, Any]]:
    results, progress = [], Progress("downstream", len(pending), "runs")
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            results.append((pending.pop(ref), ray.get(ref)))
        progress.update(len(results))
    progress.close()
    return results
