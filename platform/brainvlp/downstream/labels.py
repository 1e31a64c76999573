"""Downstream tasks: labels read from the structured findings of the shards (METHODS 1.2).

A task names one finding and a task type:

- ``binary``: a boolean finding (``enhancing_lesion``, ``midline_shift``, ...), or a categorical one with
  ``positive`` naming the positive value (e.g. ``tumor_location`` with ``positive: infratentorial``);
- ``multiclass``: a categorical finding (``tumor_location``, ``side``, ``lesion_count_bucket``, ...), one
  class per value in ``classes`` (default: every value seen, sorted);
- ``multilabel``: a list finding (``locations``), one 0/1 column per entry of ``classes`` (default: the
  findings vocabulary, ``brainvlp.findings.LOCATIONS``).

Studies without the finding (no findings at all, the key absent or null) and, for multiclass tasks, studies
whose value is not among ``classes`` are left out of the task. Nothing is dropped silently: ``TaskLabels``
counts them by reason, and the job prints and reports the counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np

from brainvlp.errors import UserError
from brainvlp.findings import LOCATIONS
from brainvlp.spec import Range, SpecError

# BraTS 2023's regions over its labels (1 necrotic / non-enhancing core, 2 oedema, 3 enhancing tumour).
BRATS_REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


@dataclass
class TaskConfig:
    name: str = "task"  # shown in reports, e.g. "tumour location"
    finding: str = "tumor_location"  # a key of the findings JSON
    type: Literal["binary", "multiclass", "multilabel", "segmentation"] = "multiclass"
    classes: tuple[str, ...] = ()  # multiclass / multilabel: the classes, in order; default: see above
    positive: str | None = None  # binary on a categorical finding: the value that counts as positive
    # segmentation: region name -> the mask labels it unites; overlapping regions are independent sigmoid
    # channels, as BraTS models train them. Default: BRATS_REGIONS (whole tumour, tumour core, enhancing).
    regions: dict[str, tuple[Annotated[int, Range(ge=1, le=255)], ...]] = field(default_factory=dict)

    @property
    def region_labels(self) -> dict[str, tuple[int, ...]]:
        return dict(self.regions or BRATS_REGIONS)

    def validate(self, path: str) -> None:
        if self.type == "segmentation":
            self._validate_segmentation(path)
        elif self.regions:
            raise SpecError(f"{path}.regions", f"only segmentation tasks take regions, not {self.type}")
        if self.type == "binary" and self.classes:
            raise SpecError(f"{path}.classes", "binary tasks take `positive` (for categorical findings)")
        if self.type != "binary" and self.positive is not None:
            raise SpecError(f"{path}.positive", f"only binary tasks take a positive value, not {self.type}")
        if len(set(self.classes)) != len(self.classes):
            raise SpecError(f"{path}.classes", f"classes repeat: {list(self.classes)}")
        if self.type == "multiclass" and len(self.classes) == 1:
            raise SpecError(f"{path}.classes", "a multiclass task needs at least two classes")

    def _validate_segmentation(self, path: str) -> None:
        if self.classes or self.positive is not None:
            raise SpecError(f"{path}.classes", "a segmentation task takes regions, not classes or positive")
        for name, labels in self.regions.items():
            if not labels:
                raise SpecError(
                    f"{path}.regions.{name}", "list the mask labels the region unites, e.g. [1, 3]"
                )


@dataclass
class TaskLabels:
    """Labels of the studies kept for a task: ``rows`` index the split's studies, ``y`` is (N,) int64 for
    binary and multiclass tasks or (N, K) int64 for multilabel ones."""

    rows: np.ndarray
    y: np.ndarray
    class_names: list[str]
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> studies left out

    @property
    def num_outputs(self) -> int:
        return 1 if len(self.class_names) == 2 and self.y.ndim == 1 else len(self.class_names)


def task_labels(config: TaskConfig, findings_json: Sequence[str | None]) -> TaskLabels:
    """Labels for every study whose findings answer the task; the others counted in ``excluded``."""
    values, excluded = [], Counter()
    for row, text in enumerate(findings_json):
        findings = json.loads(text) if text else {}
        value = findings.get(config.finding)
        if value is None:
            excluded[f"no '{config.finding}' finding"] += 1
            continue
        values.append((row, value))
    reader = {"binary": _binary, "multiclass": _multiclass, "multilabel": _multilabel}[config.type]
    rows, y, names = reader(config, values, excluded)
    if len(rows) == 0:
        raise UserError(
            f"task {config.name!r}: no study has a usable {config.finding!r} finding "
            f"(left out: {dict(excluded) or 'none'})"
        )
    return TaskLabels(np.asarray(rows, np.int64), y, names, dict(excluded))


def _binary(config: TaskConfig, values: list[tuple[int, Any]], excluded: Counter) -> tuple:
    rows, labels = [], []
    for row, value in values:
        if config.positive is not None:
            labels.append(int(value == config.positive))
        elif isinstance(value, bool):
            labels.append(int(value))
        else:
            raise UserError(
                f"task {config.name!r}: finding {config.finding!r} has the non-boolean value {value!r}; "
                "set task.positive to the value that counts as positive"
            )
        rows.append(row)
    negative = f"not {config.positive}" if config.positive else "absent"
    return rows, np.asarray(labels, np.int64), [negative, config.positive or "present"]


def _multiclass(config: TaskConfig, values: list[tuple[int, Any]], excluded: Counter) -> tuple:
    for row, value in values:
        if not isinstance(value, (str, bool, int)):
            raise UserError(f"task {config.name!r}: study row {row} has a {type(value).__name__} value")
    names = list(config.classes) or sorted({str(v) for _, v in values})
    if len(names) < 2:
        raise UserError(f"task {config.name!r}: only the class {names} occurs; a task needs at least two")
    index = {name: i for i, name in enumerate(names)}
    rows, labels = [], []
    for row, value in values:
        if str(value) not in index:
            excluded[f"value not in classes: {value}"] += 1
            continue
        rows.append(row)
        labels.append(index[str(value)])
    return rows, np.asarray(labels, np.int64), names


def _multilabel(config: TaskConfig, values: list[tuple[int, Any]], excluded: Counter) -> tuple:
    names = list(config.classes) or list(LOCATIONS)
    index = {name: i for i, name in enumerate(names)}
    rows, labels = [], np.zeros((len(values), len(names)), np.int64)
    for row, value in values:
        if not isinstance(value, list):
            raise UserError(
                f"task {config.name!r}: study row {row} has {config.finding!r} = {type(value).__name__}, "
                "expected a list (multilabel tasks read list findings such as locations)"
            )
        unknown = sorted(set(value) - set(index))
        if unknown and config.classes:
            excluded[f"labels outside classes ({', '.join(unknown)}) ignored"] += 1
        elif unknown:
            raise UserError(f"task {config.name!r}: unknown labels {unknown}; list them in task.classes")
        for label in value:
            if label in index:
                labels[len(rows), index[label]] = 1
        rows.append(row)
    return rows, labels[: len(rows)], names
