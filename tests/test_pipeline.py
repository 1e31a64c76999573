"""Integration: phantom -> ingest (Ray Data) -> 2-worker Ray Train + DeepSpeed ZeRO-2 -> evaluate, on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from brainvlp.pipeline import load_spec
from brainvlp.runner import run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, local_ray, tiny_pipeline) -> tuple[Path, dict]:
    tmp_path = tmp_path_factory.mktemp("pipeline")
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_pipeline(tmp_path, num_workers=2, epochs=20)))
    results = run(load_spec(spec_file))
    return tmp_path / "runs" / "tiny", results


def test_ingest_quarantines_the_corrupt_study_and_keeps_the_rest(tiny_run) -> None:
    run_dir, _ = tiny_run
    index = json.loads((run_dir / "ingest" / "index.json").read_text())
    rejects = pq.read_table(run_dir / "ingest" / "rejects.parquet").to_pylist()
    assert [r["reason"] for r in rejects] == ["unreadable_file"]
    assert "t1c" in rejects[0]["detail"]
    assert index["input_studies"] == 24
    assert sum(index["splits"].values()) == 23 == 24 - index["rejects"]["count"]


def test_shards_split_by_patient_and_hide_raw_ids(tiny_run) -> None:
    run_dir, _ = tiny_run
    index = json.loads((run_dir / "ingest" / "index.json").read_text())
    rows = [row for s in index["shards"] for row in pq.read_table(run_dir / "ingest" / s["file"]).to_pylist()]
    patients_by_split: dict[str, set[str]] = {}
    for row in rows:
        patients_by_split.setdefault(row["split"], set()).add(row["patient_pid"])
    splits = list(patients_by_split.values())
    assert all(a.isdisjoint(b) for i, a in enumerate(splits) for b in splits[i + 1 :])
    raw_ids = set(pacsv.read_csv(run_dir / "phantom" / "manifest.csv").column("patient_id").to_pylist())
    text_values = {v for row in rows for v in row.values() if isinstance(v, str)}
    assert any(raw.startswith("MRN") for raw in raw_ids)
    assert not any(raw in value for raw in raw_ids for value in text_values)


def test_two_worker_zero2_training_lowers_the_loss(tiny_run) -> None:
    run_dir, _ = tiny_run
    history = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) >= 40
    assert any("dev_R@5" in m for m in history)
    losses = [m["contrastive_loss"] for m in history]
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8  # means: single batches of 4 are noisy
    assert last < first - 0.2, losses
    assert (
        json.loads((run_dir / "pretrain" / "deepspeed.json").read_text())["zero_optimization"]["stage"] == 2
    )


def test_evaluate_writes_metrics_and_report(tiny_run) -> None:
    run_dir, _ = tiny_run
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"text_to_image", "image_to_text"}
    assert metrics["metrics"]["text_to_image"]["num_candidates"] == metrics["details"]["studies"]
    report = (run_dir / "evaluate" / "report.md").read_text()
    assert "R@5" in report and "MdR" in report
    assert (run_dir / "spec.resolved.yaml").exists()
    export_meta = json.loads((run_dir / "pretrain" / "export" / "model.json").read_text())
    assert export_meta["selected"].startswith("best dev R@5")


@pytest.mark.parametrize(
    "loss",
    [{"name": "brat", "itg_weight": 0.5}, {"name": "brat", "matching": "colbert", "diversity": "repulsion"},
     {"name": "qformer_itc", "diversity": "dpp"}, {"name": "triplet", "local_weight": 1.0},
     {"name": "convirt_sections"}, {"name": "selip"}, {"name": "convirt"}],
    ids=["brat", "colbert-repulsion", "qformer_itc-qd", "triplet-local", "convirt_sections", "selip",
         "convirt"],
)  # fmt: skip
def test_every_method_trains_on_two_workers_and_evaluates_with_its_scoring(
    tmp_path: Path, local_ray, tiny_pipeline, loss: dict
) -> None:
    spec = tiny_pipeline(tmp_path, num_workers=2, epochs=1)
    if loss["name"] in ("brat", "qformer_itc"):
        spec["pretrain"]["model"]["qformer"] = {"num_queries": 4}
    if loss["name"] == "triplet":
        spec["pretrain"]["model"]["local"] = {"dim": 16}
    if loss["name"] == "convirt_sections":
        spec["pretrain"]["model"]["text"]["sections"] = ["findings", "impression"]
    if loss["name"] == "selip":  # with its sampler and schedule
        spec["pretrain"]["data"]["unique_reports"] = True
        spec["pretrain"]["train"].update(schedule="poly", warmup_steps=2)
    spec["pretrain"]["loss"] = loss
    spec["pretrain"]["train"]["eval_every"] = 3
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run(load_spec(spec_file))
    run_dir = tmp_path / "runs" / "tiny"
    history = [json.loads(line) for line in (run_dir / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    terms = {k for record in history for k in record if k.endswith("_loss") and not k.startswith("dev_")}
    assert terms == _loss_terms(loss)
    assert all(math.isfinite(record["loss"]) for record in history)
    if loss["name"] == "selip":  # the phantom's clauses reached the loss as soft targets
        assert all(record["similarity_loss"] > 0 for record in history if "similarity_loss" in record)
    scoring = (
        "dot"
        if loss["name"] in DOT_SCORED
        else {"qformer_itc": "max_query"}.get(loss["name"], loss.get("matching", "pva"))
    )
    assert json.loads((run_dir / "pretrain" / "export" / "model.json").read_text())["scoring"] == scoring
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["details"]["scoring"] == scoring


DOT_SCORED = ("triplet", "convirt", "convirt_sections", "selip")


def _loss_terms(loss: dict) -> set[str]:
    if loss["name"] == "triplet":
        return {"triplet_loss"}
    if loss["name"] in ("convirt", "convirt_sections"):
        return {"contrastive_loss"}
    if loss["name"] == "selip":
        return {"contrastive_loss", "similarity_loss"}
    diversity = loss.get("diversity", "dpp" if loss["name"] == "brat" else "none")
    terms = {"contrastive_loss"} | ({f"{diversity}_loss"} if diversity != "none" else set())
    return terms | ({"itg_loss"} if loss["name"] == "brat" else set())


def _run_spec(tmp_path: Path, spec: dict) -> Path:
    spec_file = tmp_path / f"{spec['kind']}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run(load_spec(spec_file))
    return Path(spec["output_root"]) / spec_file.stem


def test_downstream_compares_pretrained_and_scratch_with_intervals(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    vision = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False}
    spec = {
        "kind": "downstream",
        "output_root": str(tmp_path),
        "shards": str(run_dir / "ingest"),
        "task": {"name": "enhancement", "finding": "enhancing_lesion", "type": "binary"},
        "models": [
            {"name": "pretrained", "path": str(run_dir / "pretrain" / "export"), "mode": "linear_probe"},
            {"name": "finetuned", "path": str(run_dir / "pretrain" / "export"), "freeze_stages": 2},
            {"name": "scratch", "init": "scratch", "vision": vision},
        ],
        "protocol": {"folds": 2, "seeds": 2, "fractions": [0.5, 1.0]},
        "fit": {"epochs": 1, "probe_epochs": 5, "batch_size": 4, "explain_studies": 2},
        "bootstrap": {"resamples": 50},
    }
    out = _run_spec(tmp_path, spec)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["runs"]) == 3 * 2 * 2 * 2  # models x folds x seeds x fractions
    studies = 23 - sum(metrics["left_out"].values())  # every study is in the task or counted as left out
    assert len(metrics["runs"]) and all(r["num_samples"] < studies for r in metrics["runs"])
    for model in ("pretrained", "finetuned", "scratch"):
        for fraction in ("0.5", "1.0"):
            auc = metrics["summary"][model][fraction]["auc_mean"]
            assert auc["n"] == 2 and auc["low"] <= auc["estimate"] <= auc["high"]
            assert 0 <= metrics["summary"][model][fraction]["dice_3d"]["estimate"] <= 1
    report = (out / "report.md").read_text()
    assert "| scratch |" in report and "50 % of the training labels" in report
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and 'src="roc.png"' not in html


def test_evaluate_puts_several_models_side_by_side(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    export = str(run_dir / "pretrain" / "export")
    spec = {
        "kind": "evaluate",
        "output_root": str(tmp_path),
        "shards": str(run_dir / "ingest"),
        "models": {"first": export, "second": export},
    }
    out = _run_spec(tmp_path, spec)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"first", "second"}
    assert metrics["models"]["first"]["metrics"] == metrics["models"]["second"]["metrics"]
    report = (out / "report.md").read_text()
    assert "| first |" in report and "| second |" in report and "per finding" in report
    assert (out / "report.html").exists() and (out / "training_curves.png").exists()
