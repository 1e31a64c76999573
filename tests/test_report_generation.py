"""The report-generation job end to end on tiny phantom shards: Ray Train + DeepSpeed runs per model and
seed, dev selection, test reports, Table 4's scores, the report, a rerun that skips finished runs, and a
run resumed from its epoch checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from brainvlp.pipeline import load_spec
from brainvlp.reportgen import loop
from brainvlp.runner import run
from conftest import ingest_tiny

TINY_VISION = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False}


@pytest.fixture(scope="module")
def shards(local_ray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ingest_tiny(tmp_path_factory.mktemp("reportgen"))


def _spec(shards: Path, out: Path, **train) -> dict:
    return {
        "kind": "report_generation",
        "run_name": "rg",
        "output_root": str(out),
        "shards": str(shards),
        "models": [{"name": "scratch", "init": "scratch", "vision": TINY_VISION}],
        "generator": {
            "bridge_hidden": 32,
            "language_model": {
                "vocab_size": 300,
                "hidden_size": 32,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 64,
                "max_positions": 256,
                "finetune": "lora",
                "lora_rank": 4,
                "lora_targets": ["q_proj", "v_proj"],
            },
            "decoding": {"max_new_tokens": 16, "num_beams": 2, "no_repeat_ngram_size": 3},
        },
        "train": {
            "batch_size": 4,
            "epochs": 2,
            "lr": 3e-3,
            "cpus_per_worker": 0.5,
            "select": "BLEU-4",
            "max_report_tokens": 64,
            **train,
        },
        "deepspeed": {"zero_stage": 2},
        "seeds": 2,
        "scoring": {"extractor": "phantom", "bootstrap": {"resamples": 50}},
    }


def _run(spec: dict, tmp_path: Path, capsys) -> tuple[Path, str]:
    spec_file = tmp_path / "rg.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run(load_spec(spec_file))
    return tmp_path / "rg", capsys.readouterr().out


@pytest.mark.slow
def test_report_generation_trains_scores_reports_and_skips_finished_runs(shards, tmp_path, capsys) -> None:
    run_dir, out = _run(_spec(shards, tmp_path), tmp_path, capsys)
    results = json.loads((run_dir / "metrics.json").read_text())
    metrics = results["models"]["scratch"]["metrics"]
    for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "false_findings", "missing_findings"):
        point, low, high = metrics[name]
        assert low <= point <= high, name
    index = json.loads((shards / "index.json").read_text())
    for seed in (0, 1):
        table = pq.read_table(run_dir / "scratch" / f"seed{seed}" / "test.parquet")
        assert table.num_rows == index["splits"]["test"]
        history = [
            json.loads(line) for line in (run_dir / "scratch" / f"seed{seed}" / "history.jsonl").open()
        ]
        assert [h["epoch"] for h in history] == [1, 2] and all("dev_BLEU-4" in h for h in history)
    report = (run_dir / "report.md").read_text()
    assert "| scratch |" in report and "BLEU-4" in report and (run_dir / "report.html").exists()
    # Report text stays in the run's data: not in the metrics, not in a report that did not opt in.
    reference = table.column("reference")[0].as_py()
    assert reference not in report and reference not in json.dumps(results)
    assert "run 2/2 (scratch, seed 1) done" in out

    _, again = _run(_spec(shards, tmp_path), tmp_path, capsys)
    assert (
        "run 1/2 (scratch, seed 0) already done" in again
        and "run 2/2 (scratch, seed 1) already done" in again
    )


@pytest.mark.slow
def test_a_run_resumes_from_its_last_epoch_checkpoint(shards, tmp_path, capsys) -> None:
    spec = {**_spec(shards, tmp_path, epochs=1, select="dev_loss"), "seeds": 1}
    run_dir, _ = _run(spec, tmp_path, capsys)
    first = [json.loads(line) for line in (run_dir / "scratch" / "seed0" / "history.jsonl").open()]
    # As if the job had stopped after epoch 1 of 2: the run is unfinished, its checkpoint is there.
    (run_dir / "scratch" / "seed0" / "test.parquet").unlink()
    shutil.rmtree(run_dir / "report.md", ignore_errors=True)
    run_dir, _ = _run({**spec, "train": {**spec["train"], "epochs": 2}}, tmp_path, capsys)
    history = [json.loads(line) for line in (run_dir / "scratch" / "seed0" / "history.jsonl").open()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 came from the checkpoint, not from training again
    assert history[1]["step"] == 2 * first[0]["step"]


class _Shard:
    """Stands in for Ray Train's unsplit dataset shard: numpy batches of ``rows`` rows."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def iter_batches(self, batch_size: int, batch_format: str):
        for start in range(0, self.rows, batch_size):
            ids = np.arange(start, min(start + batch_size, self.rows))
            yield {"study_id": ids.astype(str), "x": ids}


@pytest.mark.parametrize("rows", [1, 5, 8, 9, 13])
def test_every_rank_runs_as_many_evaluation_batches(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    """Under ZeRO-3 each forward pass is a collective: a rank with fewer batches would hang the others."""
    monkeypatch.setattr(loop.ray.train, "get_dataset_shard", lambda split: _Shard(rows))
    world = 3
    per_rank = [
        list(loop._own_rows("dev", 2, lambda batch, device: dict(batch), None, rank, world))
        for rank in range(world)
    ]
    assert len({len(batches) for batches in per_rank}) == 1
    real = sorted(int(i) for batches in per_rank for b in batches if not b["pad"] for i in b["x"])
    assert real == list(range(rows))  # every study once, the pads dropped
