"""Tracking: TensorBoard event files and MLflow runs hold the finite scalars and the spec, nothing else."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from brainvlp.errors import UserError
from brainvlp.spec import SpecError, parse
from brainvlp.train.tracking import MAX_PARAM_CHARS, NullTracker, Tracker, TrackingConfig

# Everything a caller might pass: only loss, lr and dev_R@5 are finite plain numbers.
METRICS = {
    "loss": 1.5,
    "lr": 1e-3,
    "dev_R@5": 0.25,
    "diverged": math.nan,
    "overflow": math.inf,
    "report": "no acute infarct",
    "study_id": "sub-007",
    "flag": True,
    "tensor": torch.tensor(2.0),
}
PARAMS = {"run_name": "t", "train": {"lr": 0.001, "select": "best_dev_R@5"}, "note": "x" * 2000}


def read_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_finite_scalars_under_their_own_names(tmp_path: Path) -> None:
    tracker = Tracker(TrackingConfig(), tmp_path, run_name="t", params=PARAMS)
    tracker.log(METRICS, step=1)
    tracker.log({"loss": 1.0, "dev_R@5": 0.5}, step=2)
    tracker.close()
    tracker.close()
    scalars = read_scalars(tmp_path)
    assert sorted(scalars) == ["dev_R@5", "loss", "lr"]
    assert [step for step, _ in scalars["loss"]] == [1, 2]
    assert [value for _, value in scalars["loss"]] == pytest.approx([1.5, 1.0])
    assert scalars["lr"][0][1] == pytest.approx(1e-3)
    assert scalars["dev_R@5"][1] == (2, 0.5)


def test_null_tracker_and_disabled_tracker_write_nothing(tmp_path: Path) -> None:
    for tracker in (NullTracker(), Tracker(TrackingConfig(tensorboard=False), tmp_path, "t", PARAMS)):
        tracker.log(METRICS, step=1)
        tracker.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_mlflow_records_params_and_metric_history(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    if backend == "file":  # MLflow 3 refuses file stores without this opt-in
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
        uri = (tmp_path / "mlruns").as_uri()
    else:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrackingConfig(tensorboard=False, mlflow_uri=uri, mlflow_experiment="exp")
    tracker = Tracker(config, tmp_path / "run", run_name="tiny-run", params=PARAMS)
    tracker.log(METRICS, step=1)
    tracker.log({"loss": 1.0, "dev_R@5": 0.5}, step=2)
    tracker.close()

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("exp").experiment_id])
    assert run.info.run_name == "tiny-run"
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.lr"] == "0.001"
    assert params["train.select"] == "best_dev_R@5"
    assert params["note"] == "x" * MAX_PARAM_CHARS
    assert sorted(run.data.metrics) == ["dev_R_at_5", "loss", "lr"]
    history = client.get_metric_history(run.info.run_id, "dev_R_at_5")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.5)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert not (tmp_path / "run").exists()  # TensorBoard off: no event files


def test_missing_mlflow_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("mlflow", "mlflow.entities", "mlflow.tracking"):
        monkeypatch.setitem(sys.modules, module, None)  # makes `import` raise ImportError
    config = TrackingConfig(tensorboard=False, mlflow_uri="http://localhost:5000")
    with pytest.raises(UserError, match="mlflow-skinny"):
        Tracker(config, tmp_path, "t", PARAMS)


@pytest.mark.parametrize("uri", ["localhost:5000", "mlruns", "", "/abs/mlruns", "http//host"])
def test_malformed_mlflow_uri_is_a_spec_error(uri: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(TrackingConfig, {"mlflow_uri": uri}, "pretrain.tracking")
    assert info.value.path == "pretrain.tracking.mlflow_uri"


@pytest.mark.parametrize(
    "uri", ["file:///tmp/mlruns", "sqlite:////tmp/mlflow.db", "http://host:5000", "https://h", "databricks"]
)
def test_tracking_uris_are_accepted(uri: str) -> None:
    assert parse(TrackingConfig, {"mlflow_uri": uri}, "pretrain.tracking").mlflow_uri == uri
