"""The tune report: tables ranked by the objective, best.yaml, Optuna and learning-curve plots, report.md."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from brainvlp.tune.report import TrialRecord, write_tune_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = (
    "optimization_history.png",
    "param_importances.png",
    "parallel_coordinate.png",
    "learning_curves.png",
)
DISTRIBUTIONS = {
    "loss.name": CategoricalDistribution(["clip", "triplet"]),
    "loss.temperature": FloatDistribution(0.01, 1.0, log=True),
    "loss.margin": FloatDistribution(0.1, 1.0),
    "optim.lr": FloatDistribution(1e-5, 1e-2, log=True),
    "data.batch_size": IntDistribution(8, 64),
}
SPEC = "kind: pretrain\nrun_name: best\noptim:\n  lr: 3.0e-05\n"


def _trial(
    index: int, params: dict, values: list[float], *, status: str = "TERMINATED", reason: str = "completed"
):
    history = [(10 * (i + 1), v) for i, v in enumerate(values)]
    return TrialRecord(
        trial_id=f"a1b2c3d4_{index:05d}",
        params=params,
        status=status,
        stop_reason=reason,
        steps=history[-1][0] if history else 0,
        final=values[-1] if values else None,
        best=max(values) if values else None,
        history=history,
    )


def _clip(temperature: float, lr: float, batch: int) -> dict:
    return {"loss.name": "clip", "loss.temperature": temperature, "optim.lr": lr, "data.batch_size": batch}


def _triplet(margin: float, lr: float, batch: int) -> dict:
    return {"loss.name": "triplet", "loss.margin": margin, "optim.lr": lr, "data.batch_size": batch}


@pytest.fixture
def trials() -> list[TrialRecord]:
    return [
        _trial(0, _clip(0.07, 1e-4, 32), [0.20, 0.35, 0.41, 0.45]),
        _trial(1, _triplet(0.3, 3e-5, 16), [0.15, 0.30, 0.52, 0.50]),  # best by max, not by final
        _trial(2, _clip(0.5, 2e-3, 64), [0.05, 0.08], reason="stopped early by ASHA at step 20"),
        _trial(3, _triplet(0.8, 5e-4, 8), [], status="ERROR", reason="error: CUDA out of memory"),
        _trial(4, _clip(0.02, 5e-5, 48), [0.10, 0.25, 0.33, 0.38]),
        _trial(5, _triplet(0.5, 1e-3, 24), [0.12, 0.28, 0.36, 0.40]),
    ]


def _write(out_dir: Path, trials: list[TrialRecord], *, mode: str = "max", spec: str | None = SPEC):
    return write_tune_report(out_dir, trials, DISTRIBUTIONS, "dev_R@5", mode, spec, "tune-demo")


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_csv_is_ranked_best_first_with_one_column_per_dimension(tmp_path: Path, trials: list[TrialRecord]):
    written = _write(tmp_path, trials)
    with written["trials.csv"].open(newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    fixed = ["rank", "trial_id", "status", "stop_reason", "steps", "final_dev_R@5", "best_dev_R@5"]
    assert header == fixed + sorted(DISTRIBUTIONS)

    rows = _csv_rows(written["trials.csv"])
    ids = [row["trial_id"][-1] for row in rows]
    assert ids == ["1", "0", "5", "4", "2", "3"]
    assert [row["rank"] for row in rows] == ["1", "2", "3", "4", "5", ""]
    error = rows[-1]
    assert error["status"] == "ERROR" and error["best_dev_R@5"] == "" and error["steps"] == "0"
    best = rows[0]
    assert best["loss.temperature"] == "" and float(best["loss.margin"]) == 0.3  # conditional params
    assert float(best["optim.lr"]) == 3e-5 and best["data.batch_size"] == "16"
    assert float(best["best_dev_R@5"]) == 0.52 and float(best["final_dev_R@5"]) == 0.50


def test_min_mode_reverses_the_ranking(tmp_path: Path, trials: list[TrialRecord]):
    for trial in trials:  # a loss-like objective: lower is better, best is the minimum
        trial.best = min(v for _, v in trial.history) if trial.history else None
    rows = _csv_rows(_write(tmp_path, trials, mode="min")["trials.csv"])
    assert [row["trial_id"][-1] for row in rows] == ["2", "4", "5", "1", "0", "3"]


def test_markdown_table_bolds_the_best_trial(tmp_path: Path, trials: list[TrialRecord]):
    table = _write(tmp_path, trials)["trials.md"].read_text().splitlines()
    assert table[0].startswith("| rank") and "loss.margin" in table[0]
    assert set(table[1]) <= {"|", "-"}
    best_row = table[2]
    assert "**a1b2c3d4_00001**" in best_row and "**0.5200**" in best_row and "**3.0e-05**" in best_row
    assert "**" not in "".join(table[3:])
    error_cells = [cell.strip() for cell in table[-1].strip("|").split("|")]
    assert error_cells[1] == "a1b2c3d4_00003" and error_cells[0] == "" and error_cells[6] == ""


def test_best_yaml_is_written_as_given_and_only_when_given(tmp_path: Path, trials: list[TrialRecord]):
    written = _write(tmp_path / "with", trials)
    assert written["best.yaml"].read_text() == SPEC
    written = _write(tmp_path / "without", trials, spec=None)
    assert "best.yaml" not in written and not (tmp_path / "without" / "best.yaml").exists()
    assert "brainvlp run best.yaml" not in written["report.md"].read_text()


def test_plots_are_png_files_embedded_in_the_report(tmp_path: Path, trials: list[TrialRecord]):
    written = _write(tmp_path, trials)
    for name in PLOTS:
        data = written[name].read_bytes()
        assert written[name].parent == tmp_path and data.startswith(PNG_MAGIC) and len(data) > 1000, name
    report = written["report.md"].read_text()
    assert report.startswith("# tune-demo")
    for name in PLOTS:
        assert f"]({name})" in report
    assert "`a1b2c3d4_00001`" in report and "`loss.margin = 0.3000`" in report
    assert "5 terminated" in report and "1 error" in report and "1 stopped early" in report
    assert "brainvlp run best.yaml" in report and "**a1b2c3d4_00001**" in report
    assert set(written) == {"trials.csv", "trials.md", "best.yaml", "report.md", *PLOTS}


def test_one_completed_trial_skips_importances_and_says_why(tmp_path: Path, trials: list[TrialRecord]):
    written = _write(tmp_path, [trials[0], trials[3]])
    assert "param_importances.png" not in written and not (tmp_path / "param_importances.png").exists()
    report = written["report.md"].read_text()
    assert (
        "*Parameter importances not drawn: parameter importances need at least 2 completed trials" in report
    )
    for name in ("optimization_history.png", "parallel_coordinate.png", "learning_curves.png"):
        assert written[name].read_bytes().startswith(PNG_MAGIC)


def test_no_metric_at_all_still_writes_tables_and_report(tmp_path: Path, trials: list[TrialRecord]):
    written = _write(tmp_path, [trials[3]], spec=None)
    assert not any(name.endswith(".png") for name in written)
    report = written["report.md"].read_text()
    assert "No trial reported dev_R@5" in report and "not drawn" in report
    assert _csv_rows(written["trials.csv"])[0]["rank"] == ""
