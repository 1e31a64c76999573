"""Experiment tracking: scalar metrics to TensorBoard files by default, and to MLflow when a URI is set.

Only rank 0 tracks (the others get a ``NullTracker``), and only two things ever leave the process: finite
scalar metrics (loss, lr, samples/s, dev R@5, ...) and the job spec as parameters. Report text, study or
patient identifiers are never logged: ``log`` drops anything that is not a plain number.

Names. TensorBoard accepts any string as a scalar tag, so keys are kept as they are (``dev_R@5``). MLflow
names may only hold letters, digits, ``_ - . / :`` and spaces, so for MLflow ``@`` becomes ``_at_``
(``dev_R_at_5``) and any other character outside that set becomes ``_``. MLflow parameters are the spec
flattened to dotted keys (``train.lr``), values as strings cut to 500 characters: the limit of older
MLflow servers (3.x allows 6000), so one spec logs the same against any server.

MLflow backends: ``sqlite:///abs/path/mlflow.db`` for a local store, ``http://host:5000`` for a server.
MLflow 3 refuses ``file://`` stores unless ``MLFLOW_ALLOW_FILE_STORE=true`` is set in the environment.
"""

from __future__ import annotations

import math
import numbers
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from brainvlp.errors import UserError
from brainvlp.spec import SpecError

MAX_PARAM_CHARS = 500
_MAX_NAME_CHARS = 250  # MLflow's key length limit
_MLFLOW_BAD_CHARS = re.compile(r"[^\w./\- :]")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*|databricks")


@dataclass
class TrackingConfig:
    tensorboard: bool = True  # event files under <run>/tensorboard
    mlflow_uri: str | None = None  # e.g. sqlite:///abs/path/mlflow.db or http://host:5000; None: no MLflow
    mlflow_experiment: str = "brainvlp"

    def validate(self, path: str) -> None:
        if self.mlflow_uri is not None and not _URI.fullmatch(self.mlflow_uri):
            raise SpecError(
                f"{path}.mlflow_uri",
                f"{self.mlflow_uri!r} is not a tracking URI; write scheme://..., "
                "e.g. sqlite:///abs/path/mlflow.db or http://host:5000",
            )
        if not self.mlflow_experiment:
            raise SpecError(f"{path}.mlflow_experiment", "must not be empty")


def mlflow_name(key: str) -> str:
    """``key`` as a name MLflow accepts: it refuses ``dev_R@5``, so ``@`` reads as ``_at_``."""
    return _MLFLOW_BAD_CHARS.sub("_", key.replace("@", "_at_"))[:_MAX_NAME_CHARS]


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested spec data -> ``{"train.lr": "0.001"}``: MLflow params are flat strings of bounded length."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite real numbers among ``metrics``: no bools, tensors, strings or NaN/inf reach a tracker."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    }


class NullTracker:
    """What ranks other than 0 get: the same calls, nothing written."""

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class Tracker:
    """Writes the scalars of each ``log`` call to TensorBoard and/or MLflow, as configured."""

    def __init__(self, config: TrackingConfig, log_dir: Path, run_name: str, params: Mapping[str, Any]):
        self._writer = None
        self._mlflow = None
        self._run_id = ""
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(Path(log_dir) / "tensorboard"))
        if config.mlflow_uri is not None:
            self._start_mlflow(config, run_name, params)

    def _start_mlflow(self, config: TrackingConfig, run_name: str, params: Mapping[str, Any]) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as err:
            raise UserError(
                f"tracking.mlflow_uri is set ({config.mlflow_uri}) but mlflow is not installed: "
                "pip install 'brainvlp[mlflow]' (or pip install mlflow-skinny)"
            ) from err
        # A client of its own rather than mlflow's global tracking URI and active run.
        client = MlflowClient(tracking_uri=config.mlflow_uri)
        experiment = client.get_experiment_by_name(config.mlflow_experiment)
        if experiment is None:
            experiment_id = client.create_experiment(config.mlflow_experiment)
        else:
            experiment_id = experiment.experiment_id
        self._run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
        self._mlflow = client
        flat = {mlflow_name(k): v for k, v in flatten_params(params).items()}
        client.log_batch(self._run_id, params=[Param(k, v) for k, v in flat.items()])

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        scalars = _scalars(metrics)
        if self._writer is not None:
            for key, value in scalars.items():
                self._writer.add_scalar(key, value, global_step=step)
        if self._mlflow is not None and scalars:
            from mlflow.entities import Metric

            now_ms = int(time.time() * 1000)
            batch = [Metric(mlflow_name(k), v, now_ms, step) for k, v in scalars.items()]
            self._mlflow.log_batch(self._run_id, metrics=batch)

    def close(self) -> None:
        """Flush the event file and mark the MLflow run finished; safe to call twice."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._mlflow is not None:
            self._mlflow.set_terminated(self._run_id, status="FINISHED")
            self._mlflow = None
