"""Live progress of a Train run on the driver's console.

Rank 0 posts a record at every log step (and notes such as "resuming at step 40") to a Ray queue; a thread
of the driver shows them with ``console.Progress`` while ``TorchTrainer.fit()`` blocks. The workers' own
output goes to the run's log file (``console.RunLog``), and a queue, unlike a file in the run directory,
reaches the driver from any node of a cluster. Posting never fails a step: a lost record is only a line.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from types import TracebackType
from typing import Any

from brainvlp.console import Progress


class ProgressFeed:
    """Driver side: ``with ProgressFeed("pretrain", steps) as feed: ... config={"progress": feed.queue}``."""

    def __init__(self, label: str, steps: int) -> None:
        import ray
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # A tiny async actor that holds no CPU, on the driver's node: elsewhere it would die with a lost
        # worker node and take the rest of the run's progress lines with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
        self.progress = Progress(label, steps, "steps")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="brainvlp-progress", daemon=True)

    def __enter__(self) -> ProgressFeed:
        self._thread.start()
        return self

    def _follow(self) -> None:
        from ray.util.queue import Empty

        while True:
            try:
                record = self.queue.get(timeout=0.5)
            except Empty:
                if self._stop.is_set():
                    return
                continue
            except Exception:  # the queue's actor is gone (Ray shutting down): nothing more will come
                return
            self._show(record)

    def _show(self, record: dict[str, Any]) -> None:
        if "note" in record:
            self.progress.note(f"{self.progress.label}: {record['note']}")
            return
        extra = f"loss {record['loss']:.3f}"
        if "dev_R@5" in record:
            extra += f"  dev R@5 {record['dev_R@5']:.3f}"
        self.progress.update(record["step"], extra, rate=f"{record['samples_per_s']:.1f} samples/s")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.progress.close()
        with contextlib.suppress(Exception):  # the queue's actor may be gone with Ray already
            self.queue.shutdown()


def post(queue: Any | None, record: dict[str, Any]) -> None:
    """Worker side (rank 0): hand a record to the driver, or without a feed (a tune trial, whose console is
    Tune's) write it to the worker's output, which goes to the run's log file."""
    if queue is not None:
        try:
            queue.put(record, block=False)
            return
        except Exception:  # a full or lost queue must not stop training
            pass
    sys.stdout.write(_as_line(record) + "\n")
    sys.stdout.flush()


def _as_line(record: dict[str, Any]) -> str:
    if "note" in record:
        return record["note"]
    dev = f"  dev R@5 {record['dev_R@5']:.3f}" if "dev_R@5" in record else ""
    return (
        f"step {record['step']}/{record['steps']}  loss {record['loss']:.3f}{dev}  lr {record['lr']:.2e}  "
        f"{record['samples_per_s']:.1f} samples/s"
    )
