"""Local shuffle of streamed rows that never copies a row: batches are drawn from a pool of row handles.

Ray Data's local shuffle buffer (``local_shuffle_buffer_size``) concatenates the blocks it receives into one
table and ``take``s every batch out of it, so each row is copied twice (more when rows carry over between
its compactions) before the collate function copies it once more into the batch tensor. With 4-16 MiB
volumes per row, that was 1.5 ms of CPU per volume on the Train workers, about a quarter of the whole Ray
path's CPU (benchmarks/stream.py, ``ray-shuffle`` against ``platform``). Here the pool holds (block, row)
handles into the Arrow blocks as they arrive from the object store; a batch is a zero-copy table of one-row
slices, and ``ArrowCollate`` copies each volume once, into the batch.

Like Ray's buffer, it draws uniformly without replacement from a pool of at least ``buffer_rows`` rows,
seeded per epoch; the rows left at the end that cannot fill a batch are dropped, as ``drop_last`` does,
since every rank must take the same number of steps.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

T = TypeVar("T")


def shuffled_batches(
    blocks: Iterable[pa.Table], buffer_rows: int, batch_size: int, seed: int
) -> Iterator[pa.Table]:
    """Tables of ``batch_size`` rows drawn at random from a pool that is refilled to ``buffer_rows`` +
    ``batch_size`` rows before every draw (until the blocks run out); zero-copy slices of ``blocks``."""
    rng, pool = np.random.default_rng(seed), []

    def draw() -> pa.Table:
        picked = []
        for _ in range(batch_size):  # swap-remove: O(1) per row, the pool's order does not matter
            index = int(rng.integers(len(pool)))
            pool[index], pool[-1] = pool[-1], pool[index]
            picked.append(pool.pop())
        return pa.concat_tables([block.slice(row, 1) for block, row in picked])

    for block in blocks:
        pool.extend((block, row) for row in range(block.num_rows))
        while len(pool) >= buffer_rows + batch_size:
            yield draw()
    while len(pool) >= batch_size:
        yield draw()


_END = object()


def prefetched(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` produced by a background thread up to ``depth`` ahead, so that reading and collating
    overlap the training step (as ``iter_torch_batches``' own threads do). An error in the thread is raised
    here; a consumer that stops early stops the thread."""
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as error:  # handed to the consumer, which raises it
            put((_END, error))

    threading.Thread(target=produce, name="batch-prefetch", daemon=True).start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()


def shuffled_torch_batches(
    shard: Any,
    buffer_rows: int,
    batch_size: int,
    seed: int,
    collate_fn: Callable[[pa.Table], T],
    prefetch_blocks: int = 1,
) -> Iterator[T]:
    """One epoch of a Ray ``DataIterator`` (``shard``) as collated batches, shuffled by
    ``shuffled_batches`` and collated in a background thread one batch ahead."""
    blocks = shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=prefetch_blocks)
    return prefetched(map(collate_fn, shuffled_batches(blocks, buffer_rows, batch_size, seed)), depth=1)
