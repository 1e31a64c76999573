"""Unique-report batches (SeLIP: "a sampler is used to ensure that all texts in a single batch are
different").

Why: a contrastive loss treats every other report in the batch as a negative; two rows with the same
report text (common for normal scans) would be pushed apart although they match, and SeLIP's soft
targets assume distinct texts. Identity is the report's token sequence (``input_ids``).

How: rows stream through in order. A row whose report is already in the batch being filled waits in a
bounded FIFO pending buffer and is placed first into the next batch it fits; a duplicate that finds the
buffer full is dropped. At the end, rows that cannot complete a full unique batch are dropped like
``drop_last``. Both kinds of drop are counted in ``SamplerStats.dropped`` for the caller to log.
Work is O(rows) for a pending buffer bounded by a multiple of the batch size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Row = tuple[Hashable, dict[str, Any]]  # (report identity, column -> value)


@dataclass
class SamplerStats:
    """Counts of one pass; filled in while the generator runs."""

    rows: int = 0  # rows read from the input
    batches: int = 0  # full unique batches yielded
    dropped: int = 0  # rows in no batch: pending-buffer overflow plus the leftovers at the end


def report_key(input_ids: Any) -> tuple[int, ...]:
    """A row's report identity: its token ids as a tuple of Python ints (dtype-independent)."""
    return tuple(np.asarray(input_ids).tolist())


def _rows(batch: dict[str, np.ndarray]) -> Iterator[Row]:
    for i, ids in enumerate(batch["input_ids"]):
        yield report_key(ids), {column: values[i] for column, values in batch.items()}


def _column(values: list[Any], as_object: bool) -> np.ndarray:
    """Rows -> one column; object columns (ragged lists, bytes, strings in Ray's numpy batches) stay
    1-D object arrays rather than being stacked into a 2-D array."""
    if not as_object:
        return np.stack(values)
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def _to_batch(rows: list[dict[str, Any]], object_columns: set[str]) -> dict[str, np.ndarray]:
    return {column: _column([row[column] for row in rows], column in object_columns) for column in rows[0]}


class _Filler:
    """The batch being filled: its rows and the set of reports already in it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.keys: set[Hashable] = set()

    def add(self, key: Hashable, row: dict[str, Any]) -> bool:
        if key in self.keys:
            return False
        self.keys.add(key)
        self.rows.append(row)
        return True


def _refill(filler: _Filler, pending: deque[Row], batch_size: int) -> None:
    """Move pending rows, oldest first, into a fresh batch; those still duplicated keep their order."""
    kept: deque[Row] = deque()
    while pending and len(filler.rows) < batch_size:
        key, row = pending.popleft()
        if not filler.add(key, row):
            kept.append((key, row))
    kept.extend(pending)
    pending.clear()
    pending.extend(kept)


def unique_report_batches(
    batches: Iterable[dict[str, np.ndarray]],
    batch_size: int,
    stats: SamplerStats | None = None,
    max_pending: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Regroup numpy row batches (``iter_batches(batch_format="numpy")``) into batches of exactly
    ``batch_size`` rows with pairwise different ``input_ids``.

    ``max_pending`` bounds the deferred rows (default ``4 * batch_size``); pass a ``SamplerStats`` to read
    the dropped count once the generator is exhausted.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, found {batch_size}")
    stats = stats if stats is not None else SamplerStats()
    max_pending = 4 * batch_size if max_pending is None else max_pending
    filler, pending, object_columns = _Filler(), deque(), set()
    for batch in batches:
        object_columns.update(column for column, values in batch.items() if values.dtype == object)
        for key, row in _rows(batch):
            stats.rows += 1
            if not filler.add(key, row):
                if len(pending) < max_pending:
                    pending.append((key, row))
                else:
                    stats.dropped += 1
            while len(filler.rows) == batch_size:
                stats.batches += 1
                yield _to_batch(filler.rows, object_columns)
                filler = _Filler()
                _refill(filler, pending, batch_size)
    stats.dropped += len(filler.rows) + len(pending)
