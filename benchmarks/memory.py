"""Streaming memory: peak RSS of the driver and the workers, and object-store use, at 1x and 10x the rows.

The platform's training data path (``stream.py``'s ``platform`` variant by default: ``trainer.train_dataset``
on the driver, ``loop._epoch_batches`` with its ``ArrowCollate`` on 2 Ray Train workers; ``--variant``
picks another of ``stream.VARIANTS``) streams one epoch of synthetic shards of ``--rows`` studies, then of
``10 * --rows`` studies (``_shards.py``; default 4,000 and 40,000 studies of 1 x 32 x 64 x 64, 256 KiB
each, about 5 min in all on 2 CPUs; 40,000 volumes of 1 MiB would need 40 GB of scratch disk). A
streaming pipeline holds a bounded window of rows whatever the data set's size, so every peak must stay
within 10 % between the two runs.

Both data sets have shards of the same size (the 1x set's, as ingest lays it out: 32 shards), the 10x one
ten times as many: a large ingest's shards all sit at the ``shard_mb`` cap, so more data means more shards,
not bigger ones. Letting shards grow with the data set (as a small ingest's do, below the cap) grows the
read tasks' output with them; that is the shard size's effect, which ``--same-shard-count`` shows.

How each figure is sampled (``psutil``; every ``--interval`` seconds, peak kept):

- Train workers: a background thread in each worker process samples its own RSS while it iterates; the
  figure is the larger of the 2 workers' peaks. Listed under it, for diagnosis only: the peak of RSS less
  shared pages (``memory_info().shared``: the object-store blocks it mapped, shared libraries).
- Driver: a background thread in the driver samples the driver's RSS.
- Ray Data workers: the same driver thread samples every other ``ray::`` process under the driver (read
  tasks, the streaming-split coordinator, idle pooled workers); the figure is the largest single process,
  and each process title's peak is listed under it.
- Object store: the same thread asks the raylet for the store's bytes in use
  (``ray._private.internal_api.get_memory_info_reply(...).store_stats.object_store_bytes_used``, what
  ``ray memory --stats-only`` prints). ``ray.available_resources()["object_store_memory"]`` is no use for
  this on ray 2.60: it stays at the store's capacity however full the store is.

RSS counts the object-store (shared memory) pages a process has touched, so a worker that maps a block
shows it in its RSS too. The 1x run is preceded by an unmeasured warm-up run of the same size (imports,
Ray's worker pool), so that neither measured run pays for first-time start-up.

What the object store holds (measured with ``ray memory`` at its peaks): blocks in flight between the read
tasks and the workers, plus blocks already consumed and released but not yet freed. Ray frees released
objects in batches every ``free_objects_period_milliseconds``; at Ray's default of 1 s that was a 1 s
saw-tooth that doubled the store's peak, so the platform runs Ray with 100 ms (``brainvlp.runtime.
RAYLET_ENV``, ``cluster/Dockerfile``; ``--free-objects-ms 1000`` shows Ray's default). The verdicts count
each byte once: the driver's RSS, each worker's RSS less shared pages (its raw RSS also counts the store's
pages it has mapped, which grows towards the store's high-water mark; Ray's memory monitor subtracts them
likewise), and the store. The store's peak is also printed for each tenth of each run's streaming.

The store holds whole blocks, so its use steps by a block (here one 32 MiB shard: blocks are cut at
``target_max_block_size``, 128 MiB) and now and then rises a block or two above its usual level, when a read
task's output lands while both workers still hold theirs (each worker's shuffle pool keeps a block mapped
until its last row is drawn). The longer 10x run meets more of those rare teeth, so its whole-run peak is
the maximum of ten times as many chances. The store's verdict therefore compares like with like: the 1x
run's peak against the peak of a typical stretch of the 10x run that streams as many rows (the median of its
tenths' peaks); the whole-run peaks are printed above it. Blocks must be the same size at both sizes for
this to mean anything: ``trainer.train_dataset`` reads one task per shard (``override_num_blocks``), where
Ray by default cut a small set's blocks finer (to 200 blocks in all): with 16 MiB blocks that gave the 1x
set 4 MiB blocks, the 10x set 16 MiB ones, and a store level 2.6x higher at 10x (``--variant min200``).

Reading the result: a peak that grows between 1x and 10x is either a leak (it grows with the rows
streamed: the tenths climb) or a window that the 1x run is too short to fill. ``--rows`` must make the 1x
run long enough to reach the steady state: more than the rows the pipeline buffers (each worker's shuffle
pool fills to its size + a batch before the first batch), and several seconds of streaming; at the default
sizes the 1x run's store climbs through its first half (see the tenths) and the 10x run's starts level.

Run: ``python benchmarks/memory.py [--rows 4000] [--shape 32 64 64] [--variant platform]
[--same-shard-count] [--free-objects-ms 100]``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

import _shards
import stream
from brainvlp.runtime import RAYLET_ENV

MAX_GROWTH = 0.10  # the issue: peaks at 10x the rows within 10 % of those at 1x
MIB = 2**20


class PeakSampler:
    """A daemon thread that calls ``probe()`` every ``interval`` seconds and keeps each value's peak."""

    def __init__(self, probe: Callable[[], dict[str, float]], interval: float, track: str = "") -> None:
        self.probe, self.interval, self.peaks = probe, interval, {}
        self.track, self.timeline = track, []  # (seconds, value) of one key, when ``track`` names it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-sampler", daemon=True)

    def _sample(self) -> None:
        values = self.probe()
        for key, value in values.items():
            self.peaks[key] = max(self.peaks.get(key, 0.0), value)
        if self.track:
            self.timeline.append((time.perf_counter(), values[self.track]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _rss(process: psutil.Process) -> dict[str, float]:
    """RSS, and RSS less its shared pages (object-store blocks this process mapped, shared libraries)."""
    info = process.memory_info()
    return {"rss": info.rss, "private": info.rss - info.shared}


def measured_loop(config: dict[str, Any]) -> None:
    """Train loop: stream the epochs as ``stream.worker_batches`` does, sampling this process's RSS."""
    import ray.train

    from brainvlp.spec import parse
    from brainvlp.train.config import PretrainSpec

    spec, variant = parse(PretrainSpec, config["spec"]), stream.Variant(**config["variant"])
    rank, shard = ray.train.get_context().get_world_rank(), ray.train.get_dataset_shard("train")
    process, rows, timeline = psutil.Process(), 0, []
    start_rss = process.memory_info().rss
    with PeakSampler(functools.partial(_rss, process), config["interval"]) as sampler:
        for epoch in range(config["epochs"]):
            for batch in stream.worker_batches(
                shard, spec, variant, epoch, stream.GLOBAL_BATCH // stream.NUM_WORKERS
            ):
                rows += len(batch["volume"])
                timeline.append((rows, sampler.peaks.get("private", 0.0)))
    record = {**sampler.peaks, "start_rss": start_rss, "rows": rows, "timeline": timeline}
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps(record))


def driver_probe() -> Callable[[], dict[str, float]]:
    """The driver's RSS, the largest RSS among the other non-Train ``ray::`` processes, object store use."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(ray.get_runtime_context().gcs_address)
    driver = psutil.Process()

    def probe() -> dict[str, float]:
        found = {"driver": driver.memory_info().rss, "ray_data": 0.0, "ray_data_private": 0.0}
        for child in driver.children(recursive=True):
            try:
                title, memory = " ".join(child.cmdline()), _rss(child)
            except psutil.Error:  # the process ended between listing and reading it
                continue
            if title.startswith("ray::") and "RayTrainWorker" not in title:
                name = title.split()[0].split("(")[0][:40]
                found[name] = max(found.get(name, 0.0), memory["rss"])
                found["ray_data"] = max(found["ray_data"], memory["rss"])
                found["ray_data_private"] = max(found["ray_data_private"], memory["private"])
        found["object_store"] = get_memory_info_reply(state).store_stats.object_store_bytes_used
        return found

    return probe


def measure(shards: Path, args: argparse.Namespace, tmp: Path, label: str) -> dict[str, float]:
    """Stream ``shards`` once on 2 Train workers; the peaks in bytes and the rows the workers got."""
    out = tmp / label
    out.mkdir(parents=True)
    spec = stream.pretrain_spec(shards, args.worker_cpus)
    config = {"epochs": args.epochs, "out": str(out), "interval": args.interval}
    start = time.perf_counter()
    with PeakSampler(driver_probe(), args.interval, track="object_store") as sampler:
        stream.fit_workers(measured_loop, config, spec, args.variant, tmp / "ray-train")
    ranks = [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]
    return {
        "timeline": ranks[0]["timeline"],
        "store_tenths": tenth_peaks(sampler.timeline),
        "train_worker": max(r["rss"] for r in ranks),
        "train_worker_private": max(r["private"] for r in ranks),
        **sampler.peaks,
        "rows": sum(r["rows"] for r in ranks),
        "seconds": time.perf_counter() - start,
        "worker_start": max(r["start_rss"] for r in ranks),
    }


def tenth_peaks(timeline: list[tuple[float, float]]) -> list[float]:
    """Peak of each tenth of the streaming: from the first sample with a tenth of the run's peak in the
    store to the last (earlier, only start-up's small objects are there)."""
    peak = max((v for _, v in timeline), default=0.0)
    busy = [(t, v) for t, v in timeline if v >= peak / 10 > 0]
    if len(busy) < 2:
        return []
    start, width = busy[0][0], (busy[-1][0] - busy[0][0]) / 10
    peaks = [0.0] * 10
    for t, value in busy:
        slot = min(9, int((t - start) / width))
        peaks[slot] = max(peaks[slot], value)
    return peaks


def growth(small: float, large: float) -> float:
    return large / max(small, 1.0) - 1


def _line(name: str, small: float, large: float) -> str:
    return f"{name:34}{small / MIB:12.0f}{large / MIB:12.0f}{growth(small, large):+9.1%}"


# The verdicts: a process's own memory (RSS less shared pages) and the object store, each counted once.
# RSS also counts the object-store pages a process has touched, which grows towards the store's high-water
# mark as a long run maps blocks at more addresses; Ray's own memory monitor subtracts them likewise.
VERDICTS = {
    "driver": "driver RSS",
    "train_worker_private": "Train worker RSS less shared pages",
    "ray_data_private": "Ray Data worker RSS less shared pages",
    "object_store_window": "object store in use, peak per 1x rows streamed",
}


def report(small: dict[str, float], large: dict[str, float], rows: int) -> None:
    # A tenth of the 10x run streams as many rows as the whole 1x run (module docstring).
    small = {**small, "object_store_window": small["object_store"]}
    large = {**large, "object_store_window": statistics.median(large["store_tenths"])}
    print(f"{'peak, MiB':34}{f'{rows} rows':>12}{f'{10 * rows} rows':>12}{'growth':>9}")
    names = {
        "driver": "driver RSS",
        "train_worker": "Train worker RSS (max of 2)",
        "train_worker_private": "  less shared pages",
        "ray_data": "Ray Data worker RSS (max)",
        "ray_data_private": "  less shared pages",
        "object_store": "object store in use",
        "object_store_window": "  per 1x rows (10x: median tenth)",
    }
    for key, name in names.items():
        print(_line(name, small[key], large[key]))
        if key == "ray_data_private":  # by process title (a pooled worker's title changes with its task)
            for title in sorted(k for k in small.keys() & large.keys() if k.startswith("ray::")):
                print(_line(f"  {title}", small[title], large[title]))
    before = f"{small['worker_start'] / MIB:12.0f}{large['worker_start'] / MIB:12.0f}"
    print(f"{'Train worker RSS before streaming':34}{before}")
    runs = "".join(f"{run['rows']:7.0f}{run['seconds']:4.0f} s" for run in (small, large))
    print(f"{'rows (both workers), seconds':34}{runs}")
    # A leak keeps climbing through the 10x run; a window levels off once it is full.
    points = large["timeline"][:: max(1, len(large["timeline"]) // 10)]
    print("Train worker rank 0, peak RSS less shared pages so far, by rows it has streamed (10x run):")
    print("  " + "  ".join(f"{r}: {v / MIB:.0f}" for r, v in points))
    # A store that fills up with the rows climbs from tenth to tenth; a bounded window stays level.
    for label, run in (("1x", small), ("10x", large)):
        tenths = " ".join(f"{value / MIB:4.0f}" for value in run["store_tenths"])
        print(f"object store peak by tenth of the {label} run's streaming, MiB: {tenths}")
    for key, name in VERDICTS.items():
        found = growth(small[key], large[key])
        verdict = "PASS" if found <= MAX_GROWTH else "FAIL"
        print(
            f"{verdict} {name} flat from {rows} to {10 * rows} rows: {found:+.1%} (limit +{MAX_GROWTH:.0%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="1x; the 10x run streams 10 times as many")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--variant", choices=list(stream.VARIANTS), default="platform")
    parser.add_argument("--worker-cpus", type=float, default=0.5, help="CPUs per Train worker")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument(
        "--same-shard-count", action="store_true", help="32 shards for both sizes, 10x larger ones at 10x"
    )
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument(
        "--free-objects-ms",
        type=int,
        default=int(RAYLET_ENV["RAY_free_objects_period_milliseconds"]),
        help="raylet's free_objects_period_milliseconds (the platform's by default; Ray's own is 1000)",
    )
    args = parser.parse_args()
    if args.rows < stream.GLOBAL_BATCH:
        parser.error(f"--rows must be >= {stream.GLOBAL_BATCH}")
    import ray

    with tempfile.TemporaryDirectory(prefix="brainvlp-memory-") as tmp:
        shape, sizes = tuple(args.shape), (args.rows, 10 * args.rows)
        dirs = {rows: Path(tmp) / f"shards-{rows}" for rows in sizes}
        per_shard = math.ceil(args.rows / _shards.MIN_SHARDS)  # the 1x layout, as ingest makes it
        for rows, path in dirs.items():
            _shards.write_shards(path, rows, shape, None if args.same_shard_count else per_shard)
        print(
            f"{args.variant}: {sizes[0]} and {sizes[1]} studies {shape} int16 in shards of {per_shard} rows, "
            f"{args.epochs} epoch(s), released objects freed every {args.free_objects_ms} ms"
        )
        os.environ["RAY_free_objects_period_milliseconds"] = str(args.free_objects_ms)  # noqa: SIM112 (Ray's case)
        stream.start_ray(args.cpus)
        try:
            measure(dirs[sizes[0]], args, Path(tmp), "warm-up")
            small = measure(dirs[sizes[0]], args, Path(tmp), "1x")
            large = measure(dirs[sizes[1]], args, Path(tmp), "10x")
        finally:
            ray.shutdown()
    report(small, large, args.rows)


if __name__ == "__main__":
    main()
