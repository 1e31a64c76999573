"""Tune jobs end to end on CPU: an ASHA + Optuna search over a tiny phantom, and resuming a killed driver."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from brainvlp.pipeline import load_spec
from brainvlp.runner import run
from conftest import ingest_tiny, killed_driver

pytestmark = pytest.mark.slow
SPACE = {
    "loss.name": {"choice": ["clip", "triplet"]},
    "loss.temperature": {"loguniform": [0.03, 0.3], "when": {"loss.name": "clip"}},
    "loss.margin": {"uniform": [0.1, 0.5], "when": {"loss.name": "triplet"}},
}


@pytest.fixture(scope="module")
def embedded_ray():
    """Ray as ``brainvlp run`` starts it (with the state API that frees the resources of stopped trials)."""
    import ray

    from brainvlp.runtime import init_ray

    init_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, embedded_ray) -> Path:
    return ingest_tiny(tmp_path_factory.mktemp("tune"))


def tune_spec(
    tmp_path: Path, shards: Path, tiny_pipeline, name: str, num_samples: int, metric: str = "dev_R@5"
) -> Path:
    base = tiny_pipeline(tmp_path, epochs=3)["pretrain"]
    base["data"]["shards"] = os.path.relpath(shards)  # relative, as users write them: trials must find it
    base["train"].update(eval_every=4, log_every=4)
    spec = {
        "kind": "tune",
        "run_name": name,
        "output_root": str(tmp_path / "runs"),
        "base": base,
        "space": SPACE,
        "search": {"num_samples": num_samples, "seed": 0, "metric": metric},
        "asha": {"grace_steps": 4, "reduction_factor": 2},
    }
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    return spec_file


def read_trials(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "trials.csv").open() as file:
        return list(csv.DictReader(file))


def test_asha_search_ranks_trials_and_writes_a_rerunnable_best_spec(
    tmp_path: Path, shards: Path, tiny_pipeline
) -> None:
    # The dev loss: the tiny dev split (2 studies) saturates R@5, which would leave ASHA nothing to rank.
    spec_file = tune_spec(tmp_path, shards, tiny_pipeline, "search", num_samples=4, metric="dev_loss")
    result = run(load_spec(spec_file))
    run_dir = tmp_path / "runs" / "search"
    trials = read_trials(run_dir)
    assert len(trials) == 4 and {t["status"] for t in trials} == {"TERMINATED"}
    for trial in trials:  # each trial's values follow the conditional space
        assert (trial["loss.temperature"] != "") == (trial["loss.name"] == "clip")
        assert (trial["loss.margin"] != "") == (trial["loss.name"] == "triplet")
        reason, steps = trial["stop_reason"], int(trial["steps"])
        assert reason in ("completed", f"stopped early by ASHA at step {steps}")
        assert (run_dir / "trials" / trial["trial_id"] / "spec.resolved.yaml").exists()
    best = trials[0]
    assert result["tune"]["best"] == best["trial_id"]
    assert float(best["best_dev_loss"]) == min(float(t["best_dev_loss"]) for t in trials)
    rerun = load_spec(run_dir / "best.yaml")
    assert rerun.kind == "pretrain" and rerun.loss.name == best["loss.name"]
    report = (run_dir / "report.md").read_text()
    for plot in ("optimization_history", "parallel_coordinate", "learning_curves"):
        assert f"({plot}.png)" in report and (run_dir / f"{plot}.png").stat().st_size > 1000


def test_a_killed_tune_driver_resumes_the_study(tmp_path: Path, shards: Path, tiny_pipeline) -> None:
    spec_file = tune_spec(tmp_path, shards, tiny_pipeline, "resumed", num_samples=3)
    run_dir = tmp_path / "runs" / "resumed"
    with killed_driver(spec_file):
        finished = wait_for_finished_trials(run_dir, count=1)
    assert not (run_dir / "trials.csv").exists()
    exported = {
        trial: (run_dir / "trials" / trial / "export" / "model.json").stat().st_mtime for trial in finished
    }
    result = run(load_spec(spec_file))
    trials = read_trials(run_dir)
    assert len(trials) == 3 and result["tune"]["trials"] == 3
    assert set(finished) <= {t["trial_id"] for t in trials}
    for trial, mtime in exported.items():  # a finished trial was kept, not trained again
        assert (run_dir / "trials" / trial / "export" / "model.json").stat().st_mtime == mtime


def test_a_finished_trial_restored_reports_its_last_objective(tmp_path: Path) -> None:
    from brainvlp.tune.job import last_objective

    history = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "dev_R@5": 0.25}, {"step": 3, "loss": 1.2}]
    history.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert last_objective(history, "dev_R@5") == rows[1]
    with pytest.raises(RuntimeError, match="no row with 'dev_loss'"):
        last_objective(history, "dev_loss")


def wait_for_finished_trials(run_dir: Path, count: int, timeout: float = 420) -> list[str]:
    """Trial ids whose pretrain run has exported, once Tune's saved experiment state lists that many trials
    as finished. Killed earlier, the driver leaves Tune a trial to restart whose run is over, which then
    reports from its run's history (``run_trial``): a finished trial would be copied out again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = sorted(p.parents[1].name for p in (run_dir / "trials").glob("*/export/model.json"))
        if len(done) >= count and terminated_in_state(run_dir) >= count:
            return done
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {count} finished trials in {run_dir} after {timeout} s")


def terminated_in_state(run_dir: Path) -> int:
    """Trials that the newest saved experiment state of the tune run lists as TERMINATED."""
    states = sorted((run_dir / "tune").glob("experiment_state-*.json"))
    return states[-1].read_text().count('\\"status\\": \\"TERMINATED\\"') if states else 0
