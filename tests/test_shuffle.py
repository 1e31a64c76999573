"""The training loop's local shuffle (train/shuffle.py): every row once, seeded, bounded, zero-copy."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from brainvlp.data.batches import BATCH_COLUMNS, ArrowCollate
from brainvlp.data.shards import SCHEMA, volume_views, write_table_atomic
from brainvlp.train.shuffle import prefetched, shuffled_batches, shuffled_torch_batches
from test_shards import shard_row


def id_blocks(sizes: list[int]) -> list[pa.Table]:
    """Blocks of consecutive row ids, with a binary payload column like the volumes."""
    blocks, start = [], 0
    for size in sizes:
        ids = list(range(start, start + size))
        blocks.append(pa.table({"id": ids, "payload": [i.to_bytes(8, "little") * 4 for i in ids]}))
        start += size
    return blocks


def ids_of(batches: list[pa.Table]) -> list[list[int]]:
    return [batch["id"].to_pylist() for batch in batches]


def test_every_row_is_drawn_once_and_only_the_last_partial_batch_is_dropped() -> None:
    batches = list(shuffled_batches(id_blocks([7, 1, 12, 5]), buffer_rows=6, batch_size=4, seed=0))
    drawn = [i for batch in ids_of(batches) for i in batch]
    assert all(len(batch) == 4 for batch in batches) and len(batches) == 25 // 4
    assert len(set(drawn)) == len(drawn) and set(drawn) <= set(range(25))
    assert drawn != sorted(drawn)  # the rows were mixed


def test_a_batch_draws_only_from_the_rows_seen_so_far() -> None:
    """The pool is refilled to buffer + batch rows before a draw: batch k holds ids < buffer + (k+1) batch
    (whole blocks arrive at once, so up to one block more)."""
    buffer, batch, block = 8, 4, 3
    for seed in range(5):
        batches = ids_of(list(shuffled_batches(id_blocks([block] * 20), buffer, batch, seed)))
        for k, rows in enumerate(batches):
            assert max(rows) < buffer + (k + 1) * batch + block


def test_seeded_per_epoch() -> None:
    def run(seed: int) -> list[list[int]]:
        return ids_of(list(shuffled_batches(id_blocks([5] * 6), buffer_rows=8, batch_size=4, seed=seed)))

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_the_first_batch_is_uniform_over_the_pool() -> None:
    """Over many seeds each of the first buffer + batch rows lands in the first batch equally often."""
    buffer, batch, seeds = 6, 2, 4000
    counts = Counter()
    for seed in range(seeds):
        first = next(shuffled_batches(id_blocks([buffer + batch, 10]), buffer, batch, seed))
        counts.update(first["id"].to_pylist())
    assert set(counts) == set(range(buffer + batch))
    expected = seeds * batch / (buffer + batch)  # 1000
    assert all(abs(count - expected) < 0.1 * expected for count in counts.values()), counts


def test_batches_are_views_of_the_blocks() -> None:
    blocks = id_blocks([6, 6])
    buffers = [block["payload"].chunks[0].buffers()[2] for block in blocks]
    batch = next(shuffled_batches(blocks, buffer_rows=4, batch_size=3, seed=0))
    for view in volume_views(batch["payload"]):  # as ArrowCollate reads the volumes
        assert any(b.address <= view.ctypes.data < b.address + b.size for b in buffers)


def test_collated_batches_hold_the_drawn_studies(tmp_path: Path) -> None:
    """Through a stand-in for Ray's DataIterator: the collated volumes are the drawn studies' volumes."""
    rng = np.random.default_rng(0)
    volumes = {f"s{i}": rng.integers(0, 800, size=(1, 2, 3, 4), dtype=np.int16) for i in range(10)}
    write_table_atomic([shard_row(s, v) for s, v in volumes.items()], SCHEMA, tmp_path / "a.parquet")
    table = pq.read_table(tmp_path / "a.parquet", columns=BATCH_COLUMNS)
    shard = SimpleNamespace(iter_batches=lambda **kwargs: iter([table.slice(0, 4), table.slice(4)]))
    batches = list(shuffled_torch_batches(shard, 4, 3, seed=1, collate_fn=ArrowCollate()))
    assert len(batches) == 3
    for batch in batches:
        expected = torch.from_numpy(np.stack([volumes[s] for s in batch["study_id"]]))
        assert batch["volume"].dtype == torch.int16 and torch.equal(batch["volume"], expected)


def test_prefetched_keeps_order_and_raises_the_producers_error() -> None:
    assert list(prefetched(iter(range(5)), depth=2)) == [0, 1, 2, 3, 4]

    def failing():
        yield 1
        raise ValueError("bad block")

    found = prefetched(failing(), depth=1)
    assert next(found) == 1
    with pytest.raises(ValueError, match="bad block"):
        next(found)


def test_a_consumer_that_stops_early_stops_the_thread() -> None:
    def endless():
        while True:
            yield 0

    found = prefetched(endless(), depth=1)
    next(found)
    found.close()
    deadline = time.monotonic() + 5
    while any(t.name == "batch-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "batch-prefetch" for t in threading.enumerate())
