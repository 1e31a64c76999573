"""Scoring the generated reports the way brat Table 4 does, and the report.

Per model (all its seeds): the COCO caption metrics (``evaluate.nlg``: BLEU-1..4, METEOR, ROUGE-L, CIDEr)
and GREEN's clinical categories (``evaluate.clinical``: false and missing findings per study, location and
severity accuracy), each as the mean over seeds with a percentile-bootstrap interval that resamples the
test studies (and, with several seeds, the seeds). The clinical comparison reads structured findings
out of each generated report with the spec's extractor and compares them with the study's own.

No report text reaches ``metrics.json`` or a log; ``report.md`` shows example reports only when the spec
asks for them (``scoring.show_examples``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from brainvlp.evaluate.clinical import compare_findings, get_extractor
from brainvlp.evaluate.nlg import bootstrap_ci
from brainvlp.reportgen.config import NLG_METRICS, ReportGenSpec
from brainvlp.reportgen.examples import LEGEND, example_block

CLINICAL = ("false_findings", "missing_findings", "location_accuracy", "severity_accuracy", "green")
LOWER_IS_BETTER = {"false_findings", "missing_findings"}


def score_runs(spec: ReportGenSpec, run_dir: Path) -> dict[str, Any]:
    """Every model's metrics with intervals, and each run's history (for the curves)."""
    extractor = get_extractor(spec.scoring.extractor) if spec.scoring.extractor else None
    boot = spec.scoring.bootstrap
    models = {}
    for entry in spec.models:
        tables = [pq.read_table(run_dir / entry.name / f"seed{seed}" / "test.parquet").to_pylist()
                  for seed in range(spec.seeds)]  # fmt: skip
        references = [row["reference"] for row in tables[0]]
        hypotheses = [[row["generated"] for row in table] for table in tables]
        nlg = bootstrap_ci(references, hypotheses, n_boot=boot.resamples, seed=0, level=boot.level)
        scores: dict[str, Any] = {metric: list(nlg[metric]) for metric in NLG_METRICS if metric in nlg}
        if extractor is not None:
            scores.update(_clinical(tables, extractor, boot.resamples, boot.level))
        models[entry.name] = {
            "metrics": scores,
            "histories": [_history(run_dir / entry.name / f"seed{seed}") for seed in range(spec.seeds)],
            "num_test_studies": len(references),
        }
    results = {"models": models, "seeds": spec.seeds, "extractor": spec.scoring.extractor}
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def _clinical(
    tables: Sequence[list[dict[str, Any]]], extractor: Any, resamples: int, level: float
) -> dict[str, list[float]]:
    """GREEN's categories: per-study means of the error counts and of GREEN, and location and severity
    accuracy pooled over studies (as ``evaluate.clinical.summarize``), averaged over seeds; intervals
    resample studies (paired across seeds) and seeds."""
    fields = ("false_findings", "missing_findings", "green", "location_correct", "location_total",
              "severity_correct", "severity_total")  # fmt: skip
    compared = [
        [compare_findings(json.loads(row["findings"] or "{}"), extractor(row["generated"])) for row in table]
        for table in tables
    ]
    values = {f: np.array([[study[f] for study in seed] for seed in compared], np.float64) for f in fields}

    def summary(seeds: np.ndarray, rows: np.ndarray) -> list[float]:
        picked = {f: v[np.ix_(seeds, rows)] for f, v in values.items()}  # S' x N' each
        with np.errstate(invalid="ignore", divide="ignore"):
            return [
                float(picked["false_findings"].mean()),
                float(picked["missing_findings"].mean()),
                float(np.mean(picked["location_correct"].sum(1) / picked["location_total"].sum(1))),
                float(np.mean(picked["severity_correct"].sum(1) / picked["severity_total"].sum(1))),
                float(picked["green"].mean()),
            ]

    seeds, studies = values["green"].shape
    point = summary(np.arange(seeds), np.arange(studies))
    rng = np.random.default_rng(0)
    draws = np.array([summary(rng.integers(0, seeds, seeds), rng.integers(0, studies, studies))
                      for _ in range(resamples)])  # fmt: skip
    tail = (1 - level) / 2
    low, high = np.nanquantile(draws, [tail, 1 - tail], axis=0)
    return {name: [point[k], float(low[k]), float(high[k])] for k, name in enumerate(CLINICAL)}


def _history(directory: Path) -> list[dict[str, Any]]:
    path = directory / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_report(spec: ReportGenSpec, results: dict[str, Any], run_dir: Path) -> Path:
    """``report.md``: Table 4's layout (NLG metrics, then GREEN's categories, with intervals), as two
    tables so that each fits a page."""
    models = results["models"]
    level = round(100 * spec.scoring.bootstrap.level)
    lines = [
        f"# Report generation: {spec.run_name}",
        "",
        f"Test split `{spec.test_split}`, {spec.seeds} seed(s); mean over seeds with {level} % bootstrap "
        "intervals over test studies and seeds.",
        "",
        *_table(models, NLG_METRICS),
    ]
    if any(m in r["metrics"] for r in models.values() for m in CLINICAL):
        lines += [
            "",
            f"Clinical accuracy: GREEN's categories from the findings that the `{spec.scoring.extractor}` "
            "extractor reads in each generated report (false and missing findings per study; location "
            "and severity accuracy; GREEN per study).",
            "",
            *_table(models, CLINICAL),
        ]
    lines += ["", "![training and dev loss per epoch, every seed](curves.png)"]
    _plot_curves(models, run_dir / "curves.png")
    if spec.scoring.show_examples:
        lines += ["", *_examples(spec, run_dir)]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    from brainvlp.evaluate.html import write_html_report

    write_html_report(path)
    return path


def _table(models: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    columns = [m for m in metrics if any(m in r["metrics"] for r in models.values())]
    arrows = {m: "↓" if m in LOWER_IS_BETTER else "↑" for m in columns}
    lines = [
        "| model | " + " | ".join(f"{m} {arrows[m]}" for m in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, result in models.items():
        lines.append(f"| {name} | " + " | ".join(_cell(result["metrics"].get(m)) for m in columns) + " |")
    return lines


def _plot_curves(models: dict[str, Any], path: Path) -> None:
    """Training loss (solid) and dev loss (dashed) per epoch, one colour per model, a line per seed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_subplot()
    for colour, (name, result) in zip(("C0", "C1", "C2", "C3", "C4", "C5"), models.items(), strict=False):
        for seed, history in enumerate(result["histories"]):
            epochs = [h["epoch"] for h in history]
            label = name if seed == 0 else None
            axes.plot(epochs, [h["loss"] for h in history], color=colour, label=label)
            axes.plot(epochs, [h.get("dev_loss", np.nan) for h in history], color=colour, linestyle="--")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (solid: training, dashed: dev)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _cell(value: Sequence[float] | None) -> str:
    if value is None or not np.isfinite(value[0]):
        return "n/a"
    return f"{value[0]:.3f} [{value[1]:.3f}, {value[2]:.3f}]"


def _examples(spec: ReportGenSpec, run_dir: Path) -> list[str]:
    """Generated reports beside their references (brat Fig. 10), seed 0 of each model, the same test
    studies for every model, coloured by findings when an extractor is set (opted in)."""
    extractor = get_extractor(spec.scoring.extractor) if spec.scoring.extractor else None
    lines = ["## Examples (seed 0)", "", LEGEND if extractor else "", ""]
    for entry in spec.models:
        rows = pq.read_table(run_dir / entry.name / "seed0" / "test.parquet").to_pylist()
        lines += [f"### {entry.name}", ""]
        # One HTML block per example, blank lines around it, so Markdown passes it through untouched.
        for row in rows[: spec.scoring.num_examples]:
            lines += [example_block(row, extractor), ""]
    return lines
