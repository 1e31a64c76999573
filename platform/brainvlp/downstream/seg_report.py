"""The segmentation report (brat Tables 8-9): per label fraction, a table of every initialisation's Dice,
lesion-wise Dice and HD95 per region with bootstrap intervals, predicted vs true regions on the slice with
the largest tumour, and learning curves.

Estimates. Each run scores its held-out fold's studies; a study's score is averaged over seeds, and the
table shows the mean over studies with a percentile bootstrap interval over studies (``bootstrap``),
together with the spread over seeds of the per-seed means (in ``metrics.json``). HD95 is in mm of the
stored volumes (voxels when the ingest resized them), its penalty for a missed or spurious region included,
as BraTS scores it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainvlp.downstream.seg_fit import SegData, SegResult
from brainvlp.evaluate.classification import Interval, bootstrap_ci
from brainvlp.evaluate.report import json_safe

KINDS = {
    "Dice": "Dice ↑",
    "LesionDice": "lesion-wise Dice ↑",
    "HD95": "HD95 ↓",
    "LesionHD95": "lesion-wise HD95 ↓",
}
_REGION_COLOURS = ("#f1c40f", "#e74c3c", "#3498db", "#2ecc71", "#9b59b6")


def per_study(runs: Sequence[tuple[Any, SegResult]]) -> dict[tuple[str, float], dict[str, dict[int, list]]]:
    """(model, fraction) -> metric -> study row -> its scores over seeds (held-out folds only)."""
    table: dict[tuple[str, float], dict[str, dict[int, list]]] = defaultdict(lambda: defaultdict(dict))
    for run, result in runs:
        for row, scores in zip(result.test_rows.tolist(), result.scores, strict=True):
            for metric, value in scores.items():
                table[(run.model, run.fraction)][metric].setdefault(row, []).append(value)
    return table


def summarise(runs: Sequence[tuple[Any, SegResult]], spec: Any) -> dict[tuple[str, float], dict[str, Any]]:
    """(model, fraction) -> metric -> Interval over studies (seed-averaged), plus per-seed means."""
    summary = {}
    for key, metrics in per_study(runs).items():
        row: dict[str, Any] = {}
        for metric, by_study in metrics.items():
            values = [float(np.mean(v)) for v in by_study.values() if all(math.isfinite(x) for x in v)]
            row[metric] = (
                bootstrap_ci(values, level=spec.bootstrap.level, resamples=spec.bootstrap.resamples)
                if values
                else None
            )
        seeds: dict[int, list[dict[str, float]]] = defaultdict(list)
        for run, result in runs:
            if (run.model, run.fraction) == key:
                seeds[run.seed] += result.scores
        row["per_seed"] = {
            seed: {m: float(np.nanmean([s[m] for s in scores])) for m in scores[0]}
            for seed, scores in sorted(seeds.items())
            if scores
        }
        summary[key] = row
    return summary


def write_segmentation_report(
    run_dir: Path, spec: Any, data: SegData, folds_N: np.ndarray, runs: Sequence[tuple[Any, SegResult]]
) -> Path:
    """``metrics.json``, overlays and curves, ``report.md`` and the self-contained ``report.html``."""
    from brainvlp.evaluate.html import write_html_report

    run_dir.mkdir(parents=True, exist_ok=True)
    summary = summarise(runs, spec)
    metrics = {
        "task": {"type": "segmentation", "regions": {k: list(v) for k, v in data.regions.items()}},
        "summary": {f"{m}|{f}": {k: _plain(v) for k, v in row.items()} for (m, f), row in summary.items()},
        "runs": [_run_record(run, result) for run, result in runs],
    }
    (run_dir / "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2))
    largest = max(spec.protocol.fractions)
    _plot_overlays(run_dir / "overlays.png", spec, data, runs, largest)
    _plot_curves(run_dir / "curves.png", spec, runs, largest)
    report = run_dir / "report.md"
    report.write_text(_markdown(spec, data, folds_N, summary))
    write_html_report(report)
    return report


def _run_record(run: Any, result: SegResult) -> dict[str, Any]:
    return {"model": run.model, "fraction": run.fraction, "seed": run.seed, "fold": run.fold,
            "selected_epoch": result.selected_epoch, "curve": result.curve}  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, Interval):
        return {"estimate": value.estimate, "low": value.low, "high": value.high, "n": value.n}
    return value


def _markdown(spec: Any, data: SegData, folds_N: np.ndarray, summary: dict) -> str:
    regions = list(data.regions)
    names = ", ".join(
        f"{name} = labels {{{', '.join(map(str, labels))}}}" for name, labels in data.regions.items()
    )
    level = round(100 * spec.bootstrap.level)
    lines = [
        f"# Segmentation: {spec.task.name}",
        "",
        f"{int((folds_N >= 0).sum())} studies, {spec.protocol.folds}-fold cross-validation by patient x "
        f"{spec.protocol.seeds} seed(s); regions {names}. Each cell: mean over held-out studies (each "
        f"averaged over seeds) with a {level} % bootstrap interval over studies. HD95 in mm, a missed or "
        "spurious region scored with the BraTS penalty.",
    ]
    for fraction in spec.protocol.fractions:
        for kind, title in KINDS.items():
            columns = [f"{kind}_{r}" for r in regions]
            lines += ["", f"## {title} at {fraction:.0%} of the labels", ""]
            lines += ["| model | " + " | ".join(regions) + " |", "|---|" + "---:|" * len(regions)]
            for entry in spec.models:
                row = summary.get((entry.name, fraction), {})
                lines.append(f"| {entry.name} | " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    lines += [
        "",
        f"## Predicted and true regions ({max(spec.protocol.fractions):.0%} of the labels, seed 0)",
        "",
        "![predicted vs true regions on the slice with the largest tumour](overlays.png)",
        "",
        "## Learning curves",
        "",
        "![training loss and dev Dice per epoch, mean over folds and seeds](curves.png)",
    ]
    return "\n".join(lines) + "\n"


def _cell(interval: Interval | None) -> str:
    return "n/a" if interval is None else interval.format()


def _overlay_rows(
    spec: Any, runs: Sequence[tuple[Any, SegResult]], fraction: float
) -> list[tuple[str, tuple]]:
    """(model, (row, slice, predicted R x H x W)) of each model's seed-0 runs at ``fraction``, two a model."""
    rows = []
    for entry in spec.models:
        mine = [r for run, r in sorted(runs, key=lambda x: x[0].fold)
                if (run.model, run.fraction, run.seed) == (entry.name, fraction, 0)]  # fmt: skip
        picked = [overlay for result in mine for overlay in result.overlays]
        rows += [(entry.name, overlay) for overlay in picked[:2]]
    return rows


def _plot_overlays(path: Path, spec: Any, data: SegData, runs: Sequence, fraction: float) -> None:
    """The first channel's axial slice with the true (left) and predicted (right) region outlines."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from brainvlp.evaluate.segmentation import regions_from_labels

    rows = _overlay_rows(spec, runs, fraction)
    figure = Figure(figsize=(6, 3 * max(1, len(rows))), dpi=90)
    names = list(data.regions)
    for k, (model, (row, depth, pred_RHW)) in enumerate(rows):
        image = data.volumes_NCDHW[row, 0, depth].astype(np.float32)
        true_RHW = np.asarray(regions_from_labels(data.masks_NDHW[row, depth][None], data.regions))[:, 0]
        for column, (masks, title) in enumerate(((true_RHW, "truth"), (pred_RHW, model))):
            axes = figure.add_subplot(len(rows), 2, 2 * k + column + 1)
            axes.imshow(image, cmap="gray")
            for region, colour in zip(range(len(names)), _REGION_COLOURS, strict=False):
                if np.asarray(masks[region]).any():
                    axes.contour(
                        np.asarray(masks[region], float), levels=[0.5], colors=[colour], linewidths=1.2
                    )
            axes.set_title(f"{title} (study {row}, slice {depth})", fontsize=8)
            axes.axis("off")
    legend = [Line2D([0], [0], color=c, label=n) for n, c in zip(names, _REGION_COLOURS, strict=False)]
    figure.legend(handles=legend, loc="lower center", ncol=len(names), fontsize=8)
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    figure.savefig(path)


def _plot_curves(path: Path, spec: Any, runs: Sequence[tuple[Any, SegResult]], fraction: float) -> None:
    """Mean training loss (solid, left axis) and dev Dice (dashed, right axis) per epoch for each model."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    loss_axes = figure.add_subplot()
    dice_axes = loss_axes.twinx()
    for entry, colour in zip(spec.models, ("C0", "C1", "C2", "C3", "C4", "C5", "C6"), strict=False):
        curves = [r.curve for run, r in runs if (run.model, run.fraction) == (entry.name, fraction)]
        if not curves:
            continue
        epochs = [point["epoch"] for point in curves[0]]
        loss = np.nanmean([[p["loss"] for p in c] for c in curves], axis=0)
        dice = np.array([[p.get("dev_dice", np.nan) for p in c] for c in curves], dtype=float)
        loss_axes.plot(epochs, loss, color=colour, label=entry.name)
        if np.isfinite(dice).any():
            with np.errstate(all="ignore"):
                dice_axes.plot(epochs, np.nanmean(dice, axis=0), color=colour, linestyle="--", marker=".")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("training loss (solid)")
    dice_axes.set_ylabel("dev mean Dice (dashed)")
    loss_axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
