"""How retrieval numbers read in reports and on the console: brat Table 2's columns, value formats, the
notes under a table, and the guard that keeps free text out of a report's details.

Reports are meant to be shared, so they only ever hold numbers and what the caller lists in ``details``
(model, export path, split, timestamps...). They never carry report text or patient/study ids; ``details``
values must be short scalars so that free text cannot slip in by accident (``check_details``).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from brainvlp.evaluate.retrieval import DIRECTIONS

_DIRECTION_LABELS = {"text_to_image": "text → image", "image_to_text": "image → text"}
_MAX_DETAIL_CHARS = 200
NOTES = (
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
    header = ["", *(column_title(key) for key in columns)]
    rows = [
        [_DIRECTION_LABELS[d], *(format_value(key, metrics[d].get(key)) for key in columns)]
        for d in DIRECTIONS
        if d in metrics
    ]
    rows.append(["*chance*", *(format_value(key, chance.get(key), italic=True) for key in columns)])
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    # Numbers are right-aligned (":" on the right of the rule); the rule spans each cell's padding too.
    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    lines = [_table_line(header, widths), rule]
    lines.extend(_table_line(row, widths) for row in rows)
    return "\n".join(lines)


def column_title(key: str) -> str:
    arrow = "↓" if key in ("MdR", "MnR") else "↑"
    return key.replace("(F)", " (F)") + " " + arrow


def format_value(key: str, value: float | None, *, italic: bool = False) -> str:
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


def check_details(details: Mapping[str, Any]) -> None:
    """Refuse anything that is not a short scalar: long or multi-line strings look like report text."""
    for key, value in details.items():
        if not isinstance(value, (str, numbers.Number, Path, type(None))):
            raise ValueError(f"details[{key!r}] must be a scalar, got {type(value).__name__}")
        text = str(value)
        if len(text) > _MAX_DETAIL_CHARS or "\n" in text:
            raise ValueError(
                f"details[{key!r}] looks like free text ({len(text)} chars); reports never carry report text"
            )


def json_safe(value: Any) -> Any:
    """NaN/inf become null so that metrics.json is strict JSON that every reader accepts; numpy scalars
    become Python numbers."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
