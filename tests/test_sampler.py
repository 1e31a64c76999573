"""Unique-report batches (SeLIP's sampler): every batch full and free of repeated reports, every row
either emitted once or counted as dropped, and the train loop's choice between the two batch sources."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from brainvlp.data.batches import collate
from brainvlp.data.sampler import SamplerStats, report_key, unique_report_batches


def ray_batches(reports: list[int], rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches shaped like ``iter_batches(batch_format="numpy")`` of shards: object columns of int32 token
    arrays, bytes and strings, plus one plain numeric column. ``reports[i]`` picks row i's report text."""
    for start in range(0, len(reports), rows_per_batch):
        chunk = range(start, min(start + rows_per_batch, len(reports)))
        columns: dict[str, list[Any]] = {"study_id": [], "input_ids": [], "volume": [], "volume_shape": []}
        for i in chunk:
            columns["study_id"].append(f"s{i:04d}")
            columns["input_ids"].append(np.array([101, *range(reports[i] + 1), 102], dtype=np.int32))
            columns["volume"].append(np.full((1, 2, 2, 2), i, dtype=np.int16).tobytes())
            columns["volume_shape"].append(np.array([1, 2, 2, 2], dtype=np.int32))
        batch = {key: object_array(values) for key, values in columns.items()}
        batch["fold"] = np.array([i % 5 for i in chunk], dtype=np.int16)
        yield batch


def object_array(values: list[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        out[i] = value
    return out


def run(
    reports: list[int], batch_size: int, rows_per_batch: int = 7, **kwargs: Any
) -> tuple[list[dict[str, np.ndarray]], SamplerStats]:
    stats = SamplerStats()
    batches = list(unique_report_batches(ray_batches(reports, rows_per_batch), batch_size, stats, **kwargs))
    return batches, stats


def emitted_ids(batches: list[dict[str, np.ndarray]]) -> list[str]:
    return [str(s) for batch in batches for s in batch["study_id"]]


def assert_unique_and_full(batches: list[dict[str, np.ndarray]], batch_size: int) -> None:
    for batch in batches:
        assert {len(values) for values in batch.values()} == {batch_size}
        keys = [report_key(ids) for ids in batch["input_ids"]]
        assert len(set(keys)) == batch_size


@pytest.mark.parametrize("rows_per_batch", [1, 3, 8, 50])
def test_batches_are_full_unique_and_every_row_accounted_for(rows_per_batch: int) -> None:
    rng = np.random.default_rng(0)
    reports = rng.integers(0, 12, size=200).tolist()  # many repeats: 12 distinct reports
    batches, stats = run(reports, batch_size=4, rows_per_batch=rows_per_batch, max_pending=1000)
    assert_unique_and_full(batches, 4)
    ids = emitted_ids(batches)
    assert len(ids) == len(set(ids))  # no row twice
    assert stats.rows == 200 and stats.batches == len(batches)
    assert len(ids) + stats.dropped == 200
    assert stats.dropped < 4 * 12  # only leftovers that cannot complete a unique batch


def test_no_duplicates_keeps_order_and_drops_like_drop_last() -> None:
    batches, stats = run(list(range(23)), batch_size=5, rows_per_batch=4)
    assert emitted_ids(batches) == [f"s{i:04d}" for i in range(20)]
    assert stats.dropped == 3


def test_duplicates_are_deferred_to_the_next_batch_not_lost() -> None:
    # Reports: a a b c d b e f -> [a b c d], then the deferred a and b come first: [a b e f].
    reports = [0, 0, 1, 2, 3, 1, 4, 5]
    batches, stats = run(reports, batch_size=4, rows_per_batch=3)
    assert [list(b["study_id"]) for b in batches] == [
        ["s0000", "s0002", "s0003", "s0004"],
        ["s0001", "s0005", "s0006", "s0007"],
    ]
    assert stats.dropped == 0


def test_row_columns_travel_together() -> None:
    batches, _ = run([0, 0, 1, 2, 1, 3, 4, 5, 6], batch_size=3, rows_per_batch=2)
    for batch in batches:
        for study, volume, fold in zip(batch["study_id"], batch["volume"], batch["fold"], strict=True):
            i = int(study[1:])
            assert np.frombuffer(volume, dtype=np.int16)[0] == i and fold == i % 5
        assert batch["fold"].dtype == np.int16 and batch["fold"].shape == (3,)
        assert batch["input_ids"].dtype == object and batch["volume_shape"].dtype == object


def test_all_identical_reports_yield_nothing_and_count_every_row() -> None:
    batches, stats = run([7] * 30, batch_size=4, rows_per_batch=6)
    assert batches == [] and stats.dropped == 30 and stats.rows == 30


def test_batch_size_one_passes_everything_through() -> None:
    batches, stats = run([7] * 10, batch_size=1)
    assert emitted_ids(batches) == [f"s{i:04d}" for i in range(10)] and stats.dropped == 0


def test_full_pending_buffer_drops_and_counts() -> None:
    # a b c, then seven more a's while the batch waits for its fourth report: two wait, five overflow.
    # [a b c d] and [a e f g] follow; the last waiting a is a leftover.
    reports = [0, 1, 2, *[0] * 7, 3, 4, 5, 6]
    batches, stats = run(reports, batch_size=4, max_pending=2)
    assert emitted_ids(batches) == ["s0000", "s0001", "s0002", "s0010", "s0003", "s0011", "s0012", "s0013"]
    assert stats.dropped == 5 + 1


def test_token_dtype_does_not_change_identity() -> None:
    assert report_key(np.array([1, 2, 3], dtype=np.int32)) == report_key([1, 2, 3])
    assert report_key(np.array([1, 2, 3], dtype=np.int64)) == report_key(np.array([1, 2, 3], dtype=np.int32))


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        next(unique_report_batches(iter([]), 0))


def test_output_feeds_collate() -> None:
    """The regrouped batches are what the training collate_fn expects from Ray Data."""
    source = list(ray_batches([0, 1, 0, 2, 3, 1], 6))
    for batch in source:
        batch["sentence_spans"] = object_array(
            [[np.array([0, len(ids)], dtype=np.int32)] for ids in batch["input_ids"]]
        )
        batch["sentence_sections"] = object_array([["findings"] for _ in batch["input_ids"]])
        batch["findings"] = object_array([""] * len(batch["study_id"]))
    (first, second) = list(unique_report_batches(iter(source), 3))
    collated = collate(first)
    assert collated["study_id"] == ["s0000", "s0001", "s0003"]
    assert collated["volume"].shape == (3, 1, 2, 2, 2)
    assert len({tuple(ids) for ids in collated["input_ids"].tolist()}) == 3
    assert collate(second)["study_id"] == ["s0002", "s0004", "s0005"]


class FakeShard:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def iter_torch_batches(self, **kwargs: Any) -> list[str]:
        self.calls.append(("iter_torch_batches", kwargs))
        return ["torch batch"]

    def iter_batches(self, **kwargs: Any) -> Iterator[Any]:
        self.calls.append(("iter_batches", kwargs))
        if kwargs["batch_format"] == "pyarrow":  # whole blocks, for the platform's own shuffle
            return iter([pa.table({"study_id": [f"s{i:04d}" for i in range(3)]})])
        return ray_batches([0, 0, 1, 2, 3], 5)


class StudyIds:
    """Stands in for ArrowCollate: a batch's study ids, from an Arrow table or a numpy batch."""

    def __call__(self, table: pa.Table) -> list[str]:
        return table["study_id"].to_pylist()

    def numpy(self, batch: dict[str, np.ndarray]) -> list[str]:
        return list(batch["study_id"])


@pytest.mark.parametrize(("unique", "buffer"), [(False, 64), (False, 0), (True, 64)])
def test_loop_picks_the_batch_source(unique: bool, buffer: int) -> None:
    from brainvlp.train.loop import _epoch_batches

    spec = SimpleNamespace(
        data=SimpleNamespace(shuffle_buffer=buffer, unique_reports=unique), train=SimpleNamespace(seed=3)
    )
    shard = FakeShard()
    batches, stats = _epoch_batches(shard, spec, 2, 2, collate_fn=StudyIds())
    batches = list(batches)
    ((method, kwargs),) = shard.calls
    if unique:  # Ray's shuffle buffer, seeded per epoch, then the unique-report regrouping
        assert method == "iter_batches" and kwargs["batch_format"] == "numpy"
        shuffle = {"local_shuffle_buffer_size": 64, "local_shuffle_seed": 5}
        assert kwargs.items() >= {**shuffle, "batch_size": 2}.items()
        assert batches == [["s0000", "s0002"], ["s0001", "s0003"]] and stats.dropped == 1
    elif buffer:  # whole blocks into train/shuffle.py's pool: one batch of 2 of the 3 rows, the last dropped
        assert method == "iter_batches" and kwargs["batch_format"] == "pyarrow"
        assert kwargs["batch_size"] is None
        assert len(batches) == 1 and len(set(batches[0])) == 2 and stats is None
    else:
        assert method == "iter_torch_batches" and kwargs["drop_last"] is True and stats is None
        assert "local_shuffle_buffer_size" not in kwargs and batches == ["torch batch"]


def test_lockstep_passes_batches_through_and_stops_at_the_end(tmp_path: Path) -> None:
    """One-rank process group: the per-step all-reduce must not lose or add batches."""
    import torch
    import torch.distributed as dist

    from brainvlp.train.loop import _in_lockstep

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert list(_in_lockstep(iter(["a", "b", "c"]), torch.device("cpu"))) == ["a", "b", "c"]
    finally:
        dist.destroy_process_group()
