"""Pretraining runs on shards ingested once (2 Ray Train workers, DeepSpeed, CPU): ZeRO stages and
DeepSpeed options, tracking, checkpoints, exact resume and fault tolerance.

- ZeRO 0 with gradient accumulation and activation checkpointing, and ZeRO 1, train, keep the schedule
  in optimizer steps, select weights by dev loss and write TensorBoard files (ZeRO 2 runs in
  test_pipeline, ZeRO 3 below).

- A worker process killed with SIGKILL mid-run: Ray Train restarts the workers from the last checkpoint
  (``train.max_failures``) and the run's whole loss curve equals that of an uninterrupted run.
- The driver killed mid-run: running the same spec under the same run name resumes from the last checkpoint
  instead of starting over.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

from brainvlp.pipeline import load_spec
from brainvlp.runner import run
from conftest import ingest_tiny, killed_driver

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory, local_ray) -> Path:
    return ingest_tiny(tmp_path_factory.mktemp("resume"))


def pretrain_spec(
    tmp_path: Path, shards: Path, tiny_pipeline, name: str, zero_stage: int = 3, epochs: int = 6, **train
) -> Path:
    spec = tiny_pipeline(tmp_path, num_workers=2, epochs=epochs)["pretrain"]
    spec.update(kind="pretrain", run_name=name, output_root=str(tmp_path / "runs"))
    spec["data"].update(shards=str(shards), deterministic=True, shuffle_buffer=0)
    spec["train"].update({"checkpoint_every": 4, "eval_every": None, "select": "last", **train})
    spec["deepspeed"]["zero_stage"] = zero_stage
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return spec_file


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(records: list[dict]) -> list[tuple[int, float]]:
    return [(r["step"], round(r["contrastive_loss"], 5)) for r in records]


def wait_for_checkpoints(run_dir: Path, count: int = 2, timeout: float = 300) -> None:
    """Until ``count`` checkpoints are on storage: a checkpoint directory appears when the first worker
    uploads its part, and is registered only once every worker has; the next one's presence proves it."""
    deadline = time.monotonic() + timeout
    while len(list((run_dir / "train").glob("checkpoint_*"))) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no checkpoint in {run_dir / 'train'} after {timeout} s")
        time.sleep(0.2)


def train_workers(since: float) -> list[psutil.Process]:
    """Ray Train worker processes started after ``since`` (earlier runs' may linger, idle)."""
    return [
        p
        for p in psutil.process_iter(["cmdline", "create_time"])
        if any("RayTrainWorker" in part for part in p.info["cmdline"] or []) and p.info["create_time"] > since
    ]


@pytest.mark.parametrize(("zero_stage", "accumulation"), [(0, 2), (1, 1)])
def test_zero_stage_trains_with_its_options_and_tracks(
    tmp_path: Path, shards: Path, tiny_pipeline, zero_stage: int, accumulation: int
) -> None:
    spec_file = pretrain_spec(
        tmp_path, shards, tiny_pipeline, "zero", zero_stage=zero_stage, epochs=3, checkpoint_every=None,
        eval_every=3, select="best_dev_loss", schedule="cosine",
    )  # fmt: skip
    spec = yaml.safe_load(spec_file.read_text())
    spec["deepspeed"]["gradient_accumulation_steps"] = accumulation
    spec["model"]["activation_checkpointing"] = zero_stage == 0
    spec_file.write_text(yaml.safe_dump(spec))
    run(load_spec(spec_file))
    run_dir = tmp_path / "runs" / "zero"
    ds = json.loads((run_dir / "deepspeed.json").read_text())
    assert (
        ds["zero_optimization"]["stage"] == zero_stage and ds["gradient_accumulation_steps"] == accumulation
    )
    records = history(run_dir)
    assert all(r["loss"] == r["loss"] for r in records)  # finite, not NaN
    assert records[-1]["lr"] < 0.05 * spec["train"]["lr"]  # the cosine reached its end in optimizer steps
    dev = [r["dev_loss"] for r in records if "dev_loss" in r]
    selected = json.loads((run_dir / "export" / "model.json").read_text())["selected"]
    assert selected.startswith(f"best dev loss {min(dev):.4f}")
    last = json.loads((run_dir / "export_last" / "model.json").read_text())
    assert (last["selected"], last["step"]) == ("last step", records[-1]["step"])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_killed_worker_recovers_from_the_last_checkpoint_with_the_same_loss_curve(
    tmp_path: Path, shards: Path, tiny_pipeline, capfd: pytest.CaptureFixture
) -> None:
    run(load_spec(pretrain_spec(tmp_path, shards, tiny_pipeline, "clean")))
    clean = history(tmp_path / "runs" / "clean")

    spec_file = pretrain_spec(tmp_path, shards, tiny_pipeline, "killed", max_failures=1)
    run_dir, killed, started = tmp_path / "runs" / "killed", [], time.time()

    def kill_one_worker() -> None:
        wait_for_checkpoints(run_dir)
        victims = train_workers(since=started)
        if victims:
            victims[-1].send_signal(signal.SIGKILL)
            killed.append(victims[-1].pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    run(load_spec(spec_file))
    killer.join()
    assert killed, "no Ray Train worker process was found to kill"
    # Restarted from a checkpoint, not from scratch (which would give the same curve too: every step's
    # randomness is seeded by its number and the data order is deterministic).
    assert "resuming at step" in capfd.readouterr().out
    assert losses(history(run_dir)) == losses(clean)
    assert [r["step"] for r in clean] == list(range(1, len(clean) + 1))


def test_rerun_after_a_killed_driver_resumes_instead_of_starting_over(
    tmp_path: Path, shards: Path, tiny_pipeline, capfd: pytest.CaptureFixture
) -> None:
    spec_file = pretrain_spec(tmp_path, shards, tiny_pipeline, "driver")
    run_dir = tmp_path / "runs" / "driver"
    with killed_driver(spec_file):
        wait_for_checkpoints(run_dir)
    assert not (run_dir / "metrics.jsonl").exists()
    run(load_spec(spec_file))
    assert "resuming at step" in capfd.readouterr().out
    steps = [r["step"] for r in history(run_dir)]
    assert steps == list(range(1, steps[-1] + 1))  # each step once: the curve continues, nothing repeated
