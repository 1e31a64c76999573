"""Human-readable record of one retrieval evaluation: ``metrics.json``, ``report.md`` and a recall@k curve.

The report is meant to be shared, so it only ever holds numbers and what the caller lists in ``details``
(model, export path, split, timestamps...). It never carries report text or patient/study ids; ``details``
values must be short scalars so that free text cannot slip in by accident.

Shape legend: Q queries, N candidates.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from brainvlp.evaluate.retrieval import DIRECTIONS

CURVE_FILE = "recall_at_k.png"
_DIRECTION_LABELS = {"text_to_image": "text → image", "image_to_text": "image → text"}
_MAX_DETAIL_CHARS = 200
_NOTES = (
    "↑ higher is better, ↓ lower is better. *Chance* is the expected value under a uniformly random ranking.",
    "Ranks are optimistic on ties (1 + number of candidates strictly more similar than the match).",
    "R@5 (F) and P@5 (F) use only studies with at least one positive finding, as queries and as candidates "
    "(as in brat); the other metrics use every study.",
)


def format_retrieval_table(metrics: Mapping[str, Mapping[str, float]], chance: Mapping[str, float]) -> str:
    """brat Table 2 layout as an aligned markdown table: one row per direction, then the chance row."""
    present = {key for direction in DIRECTIONS for key in metrics.get(direction, {})}
    recall_keys = sorted((k for k in present if re.fullmatch(r"R@\d+", k)), key=lambda k: int(k[2:]))
    finding_keys = [k for k in ("R@5(F)", "P@5(F)") if k in present]
    columns = [*recall_keys, *finding_keys, "MdR", "MnR"]
    header = ["", *(_column_title(key) for key in columns)]
    rows = [
        [_DIRECTION_LABELS[d], *(_format_value(key, metrics[d].get(key)) for key in columns)]
        for d in DIRECTIONS
        if d in metrics
    ]
    rows.append(["*chance*", *(_format_value(key, chance.get(key), italic=True) for key in columns)])
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    # Numbers are right-aligned (":" on the right of the rule); the rule spans each cell's padding too.
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    lines = [_table_line(header, widths), rule]
    lines.extend(_table_line(row, widths) for row in rows)
    return "\n".join(lines)


def write_retrieval_report(
    run_dir: str | Path,
    metrics: Mapping[str, Mapping[str, float]],
    chance: Mapping[str, float],
    *,
    title: str,
    details: Mapping[str, Any],
    ranks: Mapping[str, Sequence[int] | np.ndarray] | None = None,
) -> Path:
    """Write ``metrics.json`` and ``report.md`` (plus the curve when ``ranks`` is given); return report.md.

    ``ranks`` holds each direction's per-query ranks (``retrieval.retrieval_ranks``); they are needed because
    the summary metrics cannot redraw recall@k for every k. They are not stored, only plotted.
    """
    _check_details(details)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    written_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if ranks is not None:
        first = next(metrics[d] for d in DIRECTIONS if d in metrics)
        _plot_recall_curves(ranks, int(first["num_candidates"]), run_dir / CURVE_FILE)
        curve = f"![recall@k for k = 1..N, both directions, with chance]({CURVE_FILE})"
    else:
        curve = "_No per-query ranks were passed, so the curve was not drawn._"
    record = {
        "title": title,
        "written_at": written_at,
        "details": dict(details),
        "metrics": metrics,
        "chance": chance,
    }
    (run_dir / "metrics.json").write_text(
        json.dumps(_json_safe(record), indent=2, allow_nan=False, default=str) + "\n"
    )
    sections = [
        f"# {title}",
        f"_Written {written_at}._",
        "## What was evaluated\n\n" + _details_table(details, metrics),
        "## Retrieval\n\n"
        + format_retrieval_table(metrics, chance)
        + "\n\n"
        + "\n".join(f"- {n}" for n in _NOTES),
        "## Recall@k\n\n" + curve,
    ]
    report = run_dir / "report.md"
    report.write_text("\n\n".join(sections) + "\n")
    return report


def _column_title(key: str) -> str:
    arrow = "↓" if key in ("MdR", "MnR") else "↑"
    return key.replace("(F)", " (F)") + " " + arrow


def _format_value(key: str, value: float | None, *, italic: bool = False) -> str:
    if value is None:
        return "–"
    if math.isnan(value):
        return "n/a"
    if key in ("MdR", "MnR"):
        text = f"{value:.1f}"
    else:  # chance R@k for thousands of candidates is ~1e-4: keep two significant digits instead of 0.000
        text = f"{value:.2g}" if 0 < abs(value) < 0.01 else f"{value:.3f}"
    return f"*{text}*" if italic else text


def _table_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [
        cell.ljust(w) if i == 0 else cell.rjust(w)
        for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "| " + " | ".join(padded) + " |"


def _check_details(details: Mapping[str, Any]) -> None:
    """Refuse anything that is not a short scalar: long or multi-line strings look like report text."""
    for key, value in details.items():
        if not isinstance(value, (str, numbers.Number, Path, type(None))):
            raise ValueError(f"details[{key!r}] must be a scalar, got {type(value).__name__}")
        text = str(value)
        if len(text) > _MAX_DETAIL_CHARS or "\n" in text:
            raise ValueError(
                f"details[{key!r}] looks like free text ({len(text)} chars); reports never carry report text"
            )


def _details_table(details: Mapping[str, Any], metrics: Mapping[str, Mapping[str, float]]) -> str:
    first = next((metrics[d] for d in DIRECTIONS if d in metrics), {})
    rows = [(str(key).replace("_", " "), str(value)) for key, value in details.items()]
    if "num_candidates" in first:
        rows.append(("candidates per query", str(first["num_candidates"])))
    if "num_finding_queries" in first:
        rows.append(("studies with a positive finding", str(first["num_finding_queries"])))
    lines = ["| | |", "|---|---|"]
    lines.extend(f"| {key} | {value.replace('|', '/')} |" for key, value in rows)
    return "\n".join(lines)


def _plot_recall_curves(
    ranks: Mapping[str, Sequence[int] | np.ndarray], num_candidates: int, path: Path
) -> None:
    """Recall@k for k = 1..N per direction, on a log k axis where the interesting small k are readable."""
    figure = Figure(figsize=(6.4, 4.2), layout="constrained")  # no pyplot: renders with Agg, no global state
    axes = figure.subplots()
    k_N = np.arange(1, num_candidates + 1)
    for direction in DIRECTIONS:
        if direction not in ranks:
            continue
        rank_Q = np.asarray(ranks[direction], dtype=np.int64)
        if rank_Q.size == 0 or rank_Q.min() < 1 or rank_Q.max() > num_candidates:
            raise ValueError(f"{direction} ranks must lie in 1..{num_candidates}")
        recall_N = np.cumsum(np.bincount(rank_Q, minlength=num_candidates + 1)[1:]) / len(rank_Q)
        axes.step(k_N, recall_N, where="post", label=_DIRECTION_LABELS[direction])
    axes.plot(k_N, k_N / num_candidates, linestyle="--", color="0.5", label="chance (k / N)")
    axes.set(
        xscale="log",
        xlabel="k",
        ylabel="recall@k",
        ylim=(0, 1.02),
        title=f"Recall@k over {num_candidates} candidates",
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="best")
    figure.savefig(path, dpi=120)


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so that metrics.json is strict JSON that every reader accepts."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
