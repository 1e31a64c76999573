"""Summaries and the report of a downstream job: brat Table 7's layout, mean with a 95 % bootstrap CI.

Estimates. For one model, label fraction and seed, the k fold models score every study once (out of
fold); the metric of those pooled predictions is that seed's cross-validated estimate. The table gives the
mean over seeds with the percentile bootstrap interval over seeds ("over runs", as brat Table 7 does over
its 10 seeds), and a second table the interval over test samples: the first seed's out-of-fold predictions
resampled by study. External test studies are scored by the mean of the k fold models' probabilities.
Explanation Dice is the mean over a seed's explained studies, summarised the same way.

Shape legend: N studies, K classes.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainvlp.downstream.fit import RunResult, TaskData
from brainvlp.downstream.labels import TaskLabels
from brainvlp.evaluate.classification import (
    Interval,
    bootstrap_ci,
    bootstrap_metric_ci,
    classification_metrics,
)
from brainvlp.evaluate.explain import attention_to_volume
from brainvlp.evaluate.report import json_safe
from brainvlp.models.classifier import token_grid

METRICS = {"auc_mean": "AUC", "accuracy": "Acc", "precision": "P", "recall": "R", "f1": "F1"}
DICE = {"dice_3d": "Dice 3D", "dice_slice": "Dice slice"}


def seed_estimates(
    runs: Sequence[tuple[Any, RunResult]], data: TaskData, folds_N: np.ndarray
) -> dict[tuple[str, float], dict[int, dict[str, Any]]]:
    """(model, fraction) -> seed -> metrics of the pooled out-of-fold scores (+ Dice, external metrics)."""
    grouped: dict[tuple[str, float, int], list[RunResult]] = defaultdict(list)
    for run, result in runs:
        grouped[(run.model, run.fraction, run.seed)].append(result)
    cv_rows, external_rows = np.flatnonzero(folds_N >= 0), np.flatnonzero(folds_N < 0)
    estimates: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    for (model, fraction, seed), results in sorted(grouped.items()):
        oof = np.full((len(data.y), *results[0].scores.shape[1:]), np.nan)
        for result in results:
            oof[result.test_rows] = result.scores
        entry = {
            "oof": oof[cv_rows],
            "metrics": classification_metrics(data.y[cv_rows], oof[cv_rows], data.task),
            "dice_3d": _nanmean([d for r in results for d in r.dice_3d]),
            "dice_slice": _nanmean([d for r in results for d in r.dice_slice]),
        }
        if len(external_rows):
            ensemble = np.mean([r.external_scores for r in results], axis=0)
            entry["external"] = classification_metrics(data.y[external_rows], ensemble, data.task)
        estimates[(model, fraction)][seed] = entry
    return estimates


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _interval(values: Sequence[float], spec: Any) -> Interval | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return bootstrap_ci(finite, level=spec.bootstrap.level, resamples=spec.bootstrap.resamples)


def summarise(estimates: Mapping, labels: TaskLabels, data: TaskData, folds_N: np.ndarray, spec: Any) -> dict:
    """(model, fraction) -> name -> Interval over seeds, per-class AUC included, and the sample interval."""
    y_cv = data.y[folds_N >= 0]
    auc = lambda y, s: classification_metrics(y, s, data.task)["auc_mean"]  # noqa: E731
    summary = {}
    for key, seeds in estimates.items():
        per_seed = [seeds[s] for s in sorted(seeds)]
        names = [*METRICS, *(k for k in per_seed[0]["metrics"] if k.startswith("auc_") and k != "auc_mean")]
        row = {name: _interval([e["metrics"][name] for e in per_seed], spec) for name in names}
        row.update({name: _interval([e[name] for e in per_seed], spec) for name in DICE})
        if "external" in per_seed[0]:
            row.update(
                {f"external_{n}": _interval([e["external"][n] for e in per_seed], spec) for n in METRICS}
            )
        row["auc_samples"] = bootstrap_metric_ci(
            y_cv, per_seed[0]["oof"], auc, resamples=spec.bootstrap.resamples, level=spec.bootstrap.level
        )
        summary[key] = row
    return summary


def write_downstream_report(
    run_dir: Path,
    spec: Any,
    data: TaskData,
    labels: TaskLabels,
    folds_N: np.ndarray,
    runs: Sequence[tuple[Any, RunResult]],
) -> Path:
    """``metrics.json``, ``predictions.npz``, plots, ``report.md`` and the self-contained ``report.html``."""
    from brainvlp.evaluate.html import write_html_report

    run_dir.mkdir(parents=True, exist_ok=True)
    estimates = seed_estimates(runs, data, folds_N)
    summary = summarise(estimates, labels, data, folds_N, spec)
    _write_metrics(run_dir, spec, labels, runs, data, summary)
    np.savez_compressed(
        run_dir / "predictions.npz",
        y=data.y[folds_N >= 0],
        **{f"{m}|{f}|{s}": e["oof"] for (m, f), seeds in estimates.items() for s, e in seeds.items()},
    )
    plots = _write_plots(run_dir, spec, data, labels, folds_N, estimates, summary, runs)
    report = run_dir / "report.md"
    report.write_text(_markdown(spec, data, labels, folds_N, summary, plots))
    write_html_report(report)
    return report


def _write_metrics(run_dir: Path, spec: Any, labels: TaskLabels, runs, data: TaskData, summary) -> None:
    per_run = []
    for run, result in runs:
        y_test = data.y[result.test_rows]
        metrics = classification_metrics(y_test, result.scores, data.task)
        per_run.append({**vars(run), **metrics, "dice_3d": _nanmean(result.dice_3d)})
    document = {
        "task": {"name": spec.task.name, "finding": spec.task.finding, "type": spec.task.type},
        "classes": labels.class_names,
        "left_out": labels.excluded,
        "summary": {
            model: {
                str(fraction): {k: _interval_dict(v) for k, v in row.items()}
                for (m, fraction), row in summary.items()
                if m == model
            }
            for model in dict.fromkeys(m for m, _ in summary)
        },
        "runs": per_run,
    }
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(document), indent=2))


def _interval_dict(interval: Interval | None) -> dict[str, float] | None:
    if interval is None:
        return None
    return {"estimate": interval.estimate, "low": interval.low, "high": interval.high, "n": interval.n}


def _write_plots(run_dir, spec, data, labels, folds_N, estimates, summary, runs) -> dict[str, str]:
    from brainvlp.evaluate import plots, plots_images

    models = [m.name for m in spec.models]
    top = max(spec.protocol.fractions)
    written = {}
    efficiency = {
        m: {f: _triple(summary[(m, f)]["auc_mean"]) for f in spec.protocol.fractions} for m in models
    }
    if len(spec.protocol.fractions) > 1:
        plots.plot_label_efficiency(efficiency, "AUC (mean over classes)", run_dir / "label_efficiency.png")
        written["label_efficiency"] = "label_efficiency.png"
    y_cv = data.y[folds_N >= 0]
    curves = {m: (y_cv, estimates[(m, top)][min(estimates[(m, top)])]["oof"]) for m in models}
    plots.plot_roc_curves(curves, labels.class_names, data.task, run_dir / "roc.png")
    written["roc"] = "roc.png"
    examples = _overlay_examples(spec, data, runs, top)
    if examples:
        plots_images.plot_attention_overlays(examples, run_dir / "explanations.png")
        written["explanations"] = "explanations.png"
    return written


def _triple(interval: Interval | None) -> tuple[float, float, float]:
    return (math.nan,) * 3 if interval is None else (interval.estimate, interval.low, interval.high)


def _overlay_examples(spec, data: TaskData, runs, fraction: float) -> list[dict[str, Any]]:
    """Explanation maps of each model's first fold and seed at the largest fraction, over the T1c slice."""
    examples = []
    for entry in spec.models:
        chosen = [
            r
            for run, r in runs
            if (run.model, run.fraction, run.seed, run.fold) == (entry.name, fraction, 0, 0)
        ]
        for row, heat_P in chosen[0].heat_maps if chosen else ():
            shape = data.volumes_NCDHW.shape[2:]
            heat_DHW = attention_to_volume(np.array(heat_P), shape, grid_shape=token_grid(shape, len(heat_P)))
            examples.append(
                {
                    "volume_DHW": data.volumes_NCDHW[row, 0].astype(np.float32) / data.scale_max,
                    "heat_DHW": heat_DHW,
                    "mask_DHW": data.masks[row] > 0,
                    "title": f"{entry.name} ({entry.mode})",
                }
            )
    return examples


def _markdown(spec, data: TaskData, labels: TaskLabels, folds_N, summary, plots: Mapping[str, str]) -> str:
    cv = folds_N >= 0
    counts = (
        np.bincount(data.y[cv], minlength=len(labels.class_names)) if data.y.ndim == 1 else data.y[cv].sum(0)
    )
    level = f"{100 * spec.bootstrap.level:.0f} %"
    lines = [
        f"# Downstream: {spec.task.name}",
        "",
        f"Task `{spec.task.finding}` ({spec.task.type}), {int(cv.sum())} studies from splits "
        f"{', '.join(spec.protocol.splits)}; classes: "
        + ", ".join(f"{name} ({int(c)})" for name, c in zip(labels.class_names, counts, strict=True))
        + ".",
        f"Left out: {', '.join(f'{k}: {v}' for k, v in labels.excluded.items()) or 'none'}.",
        f"{spec.protocol.folds}-fold cross-validation by patient (stratified) x {spec.protocol.seeds} seeds; "
        f"mean over seeds with the {level} bootstrap interval over seeds.",
        "",
        "| model | initialisation | mode |",
        "|---|---|---|",
        *(f"| {m.name} | {m.init} | {m.mode}{_frozen(m)} |" for m in spec.models),
        "",
    ]
    for fraction in spec.protocol.fractions:
        lines += [f"## {_percent(fraction)} of the training labels", "", *_table(spec, summary, fraction), ""]
    lines += _class_table(spec, summary, labels.class_names, max(spec.protocol.fractions))
    for key, caption in (
        ("label_efficiency", "Label efficiency: mean AUC with its interval over seeds"),
        ("roc", "ROC curves (out-of-fold, first seed, all labels)"),
        ("explanations", "Explanations against the lesion mask (first fold and seed, all labels)"),
    ):
        if key in plots:
            lines += [f"### {caption}", "", f"![{caption}]({plots[key]})", ""]
    lines += _sample_table(spec, summary, level)
    return "\n".join(lines) + "\n"


def _frozen(entry: Any) -> str:
    return f", first {entry.freeze_stages} stages frozen" if entry.freeze_stages else ""


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g} %"


def _table(spec: Any, summary: Mapping, fraction: float) -> list[str]:
    columns = {**METRICS, **DICE}
    external = any(f"external_{k}" in summary[(m.name, fraction)] for m in spec.models for k in METRICS)
    if external:
        columns.update({f"external_{k}": f"external {v}" for k, v in METRICS.items() if k == "auc_mean"})
    lines = ["| model | " + " | ".join(columns.values()) + " |", "|---|" + "---:|" * len(columns)]
    for entry in spec.models:
        row = summary[(entry.name, fraction)]
        cells = [row[k].format() if row.get(k) is not None else "-" for k in columns]
        lines.append(f"| {entry.name} | " + " | ".join(cells) + " |")
    return lines


def _class_table(spec: Any, summary: Mapping, class_names: Sequence[str], fraction: float) -> list[str]:
    """One-vs-rest AUC per class (binary tasks: the positive class) at ``fraction``."""
    keys = [k for k in summary[(spec.models[0].name, fraction)] if re.fullmatch(r"auc_\d+", k)]
    names = [class_names[int(k[4:])] for k in keys]
    lines = [
        f"## AUC per class at {_percent(fraction)} of the labels (one vs rest)",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for entry in spec.models:
        row = summary[(entry.name, fraction)]
        lines.append(f"| {entry.name} | " + " | ".join(_cell(row.get(k)) for k in keys) + " |")
    return [*lines, ""]


def _cell(interval: Interval | None) -> str:
    return interval.format() if interval is not None else "-"


def _sample_table(spec: Any, summary: Mapping, level: str) -> list[str]:
    fractions = spec.protocol.fractions
    lines = [
        f"## AUC with the {level} interval over test samples (first seed, out-of-fold)",
        "",
        "| model | " + " | ".join(_percent(f) for f in fractions) + " |",
        "|---|" + "---:|" * len(fractions),
    ]
    for entry in spec.models:
        lines.append(
            f"| {entry.name} | "
            + " | ".join(summary[(entry.name, f)]["auc_samples"].format() for f in fractions)
            + " |"
        )
    return [*lines, ""]
