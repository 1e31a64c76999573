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

import itertools
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from brainvlp.evaluate.clinical import compare_findings, get_extractor
from brainvlp.evaluate.nlg import bootstrap_ci
from brainvlp.findings import positive_findings
from brainvlp.reportgen.config import NLG_METRICS, ReportGenSpec
from brainvlp.reportgen.examples import LEGEND, example_block

CLINICAL = ("false_findings", "missing_findings", "location_errors", "severity_errors", "location_accuracy",
            "severity_accuracy", "green")  # fmt: skip
LOWER_IS_BETTER = {"false_findings", "missing_findings", "location_errors", "severity_errors"}
Tables = dict[str, list[list[dict[str, Any]]]]  # model -> seed -> test rows


def score_runs(spec: ReportGenSpec, run_dir: Path) -> dict[str, Any]:
    """Every model's metrics with intervals, and each run's history (for the curves)."""
    boot = spec.scoring.bootstrap
    tables: Tables = {
        entry.name: [pq.read_table(run_dir / entry.name / f"seed{seed}" / "test.parquet").to_pylist()
                     for seed in range(spec.seeds)]
        for entry in spec.models
    }  # fmt: skip
    clinical = _judged(spec, tables) if spec.scoring.judge else _extracted(spec, tables)
    models = {}
    for name, runs in tables.items():
        references = [row["reference"] for row in runs[0]]
        hypotheses = [[row["generated"] for row in table] for table in runs]
        nlg = bootstrap_ci(references, hypotheses, n_boot=boot.resamples, seed=0, level=boot.level)
        scores: dict[str, Any] = {metric: list(nlg[metric]) for metric in NLG_METRICS if metric in nlg}
        models[name] = {
            "metrics": {**scores, **clinical.get(name, {}).get("metrics", {})},
            "histories": [_history(run_dir / name / f"seed{seed}") for seed in range(spec.seeds)],
            "num_test_studies": len(references),
            **{k: v for k, v in clinical.get(name, {}).items() if k != "metrics"},
        }
    source = "judge" if spec.scoring.judge else "extractor"
    results = {"models": models, "seeds": spec.seeds, "clinical": source, "extractor": spec.scoring.extractor}
    (run_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    return results


def _extracted(spec: ReportGenSpec, tables: Tables) -> dict[str, dict[str, Any]]:
    """GREEN's categories from the findings the extractor reads: per-study means of the error counts and
    of GREEN, and location and severity accuracy pooled over studies (as ``evaluate.clinical.summarize``),
    averaged over seeds."""
    if spec.scoring.extractor is None:
        return {}
    extractor = get_extractor(spec.scoring.extractor)
    results = {}
    for name, runs in tables.items():
        compared = [[compare_findings(json.loads(row["findings"] or "{}"), extractor(row["generated"]))
                     for row in table] for table in runs]  # fmt: skip
        results[name] = {"metrics": _bootstrap(compared, _extractor_summary, spec)}
    return results


def _extractor_summary(picked: dict[str, np.ndarray]) -> dict[str, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "false_findings": float(picked["false_findings"].mean()),
            "missing_findings": float(picked["missing_findings"].mean()),
            "location_accuracy": float(
                np.mean(picked["location_correct"].sum(1) / picked["location_total"].sum(1))
            ),
            "severity_accuracy": float(
                np.mean(picked["severity_correct"].sum(1) / picked["severity_total"].sum(1))
            ),
            "green": float(picked["green"].mean()),
        }


def _judged(spec: ReportGenSpec, tables: Tables) -> dict[str, dict[str, Any]]:
    """GREEN's counts from the judge model, one Ray task for every model's and seed's reports; responses
    that do not follow GREEN's format are counted and left out of the means."""
    from brainvlp.evaluate.green_judge import run_judge, unparsed

    pairs = [
        (row["reference"], row["generated"]) for runs in tables.values() for table in runs for row in table
    ]
    print(f"report_generation: GREEN judge on {len(set(pairs))} distinct report pairs")
    judged = iter(run_judge(spec.scoring.judge, pairs))  # type: ignore[arg-type]
    results = {}
    for name, runs in tables.items():
        counts = [[next(judged) for _ in table] for table in runs]
        results[name] = {
            "metrics": _bootstrap(counts, _judge_summary, spec),
            "judge_unparsed": sum(unparsed(seed) for seed in counts),
        }
    return results


def _judge_summary(picked: dict[str, np.ndarray]) -> dict[str, float]:
    names = ("false_findings", "missing_findings", "location_errors", "severity_errors", "green")
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples (every response unparsed)
        return {name: float(np.nanmean(picked[name])) for name in names}


def _bootstrap(
    per_study: Sequence[Sequence[dict[str, float]]],
    summary: Callable[[dict[str, np.ndarray]], dict[str, float]],
    spec: ReportGenSpec,
) -> dict[str, list[float]]:
    """``summary`` of the seeds' per-study values, with a percentile interval that resamples studies
    (paired across seeds) and seeds."""
    boot = spec.scoring.bootstrap
    if not per_study or not per_study[0]:
        return {}
    values = {
        f: np.array([[study[f] for study in seed] for seed in per_study], np.float64) for f in per_study[0][0]
    }
    seeds, studies = len(per_study), len(per_study[0])
    point = summary(values)
    rng = np.random.default_rng(0)
    draws = []
    for _ in range(boot.resamples):
        rows, cols = rng.integers(0, seeds, seeds), rng.integers(0, studies, studies)
        draws.append(list(summary({f: v[np.ix_(rows, cols)] for f, v in values.items()}).values()))
    tail = (1 - boot.level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(np.array(draws), [tail, 1 - tail], axis=0)
    return {name: [point[name], float(low[k]), float(high[k])] for k, name in enumerate(point)}


def _history(directory: Path) -> list[dict[str, Any]]:
    path = directory / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def write_report(spec: ReportGenSpec, results: dict[str, Any], run_dir: Path) -> Path:
    """``report.md``: Table 4's layout (NLG metrics, then GREEN's categories, with intervals), as two
    tables so that each fits a page."""
    models = results["models"]
    level = round(100 * spec.scoring.bootstrap.level)
    lines = [
        f"# Report generation: {spec.run_name or run_dir.parent.name}",  # a pipeline step: the pipeline's
        "",
        f"Test split `{spec.test_split}`, {spec.seeds} seed(s); mean over seeds with {level} % bootstrap "
        "intervals over test studies and seeds.",
        "",
        *_table(models, NLG_METRICS),
    ]
    if any(m in r["metrics"] for r in models.values() for m in CLINICAL):
        lines += ["", _clinical_caption(spec, models), "", *_table(models, CLINICAL)]
    lines += ["", "![training and dev loss per epoch, every seed](curves.png)"]
    _plot_curves(models, run_dir / "curves.png")
    if spec.scoring.show_examples:
        lines += ["", *_examples(spec, run_dir)]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    from brainvlp.evaluate.html import write_html_report

    write_html_report(path)
    return path


def _example_rows(rows: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """Studies with and without findings in turn (the first of each, by study id, the same for every
    model): a sample of normal studies alone would show little of what a model gets right or wrong."""
    has_findings = [bool(positive_findings(json.loads(row["findings"] or "{}"))) for row in rows]
    abnormal = [row for row, flag in zip(rows, has_findings, strict=True) if flag]
    normal = [row for row, flag in zip(rows, has_findings, strict=True) if not flag]
    mixed = [row for pair in itertools.zip_longest(abnormal, normal) for row in pair if row is not None]
    return mixed[:count]


def _clinical_caption(spec: ReportGenSpec, models: dict[str, Any]) -> str:
    if spec.scoring.judge is None:
        return (
            f"Clinical accuracy: GREEN's categories from the findings that the `{spec.scoring.extractor}` "
            "extractor reads in each generated report (false and missing findings per study; location and "
            "severity accuracy; GREEN per study)."
        )
    unparsed = ", ".join(f"{name} {m['judge_unparsed']}/{m['num_test_studies'] * spec.seeds}"
                         for name, m in models.items())  # fmt: skip
    return (
        f"Clinical accuracy: GREEN, judged by the model in `{spec.scoring.judge.path}` (clinically "
        "significant errors per study: false, missing, misplaced and misjudged findings; GREEN per study). "
        f"Responses that did not follow GREEN's format, left out of the means: {unparsed}."
    )


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
        for row in _example_rows(rows, spec.scoring.num_examples):
            lines += [example_block(row, extractor), ""]
    return lines
