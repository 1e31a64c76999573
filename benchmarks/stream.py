"""Streaming throughput: volumes/s that reach 2 Ray Train workers as torch tensors, against plain readers.

What it measures, on one set of synthetic studies (``_shards.py``: 1 x 32 x 256 x 256 int16 by default,
about 1 MiB each after zstd) stored three ways, all in a temporary directory:

- Ray path (the platform's): brainvlp Parquet shards -> ``ray.data.read_parquet`` with the trainer's
  columns, seeded file shuffle and read settings (V1 reader, 128 MiB blocks) -> ``TorchTrainer(datasets=)``,
  whose ``streaming_split`` feeds 2 Train workers -> whole blocks into the platform's 64-row shuffle pool
  (``train/shuffle.py``) and the loop's ``ArrowCollate``. The ``platform`` variant calls the platform's own
  functions (``trainer.train_dataset`` on the driver, ``loop._epoch_batches`` on the workers) with the default
  ``DataConfig``; ``ray-defaults`` is the platform before this benchmark's findings (Ray's default reader
  and block size, numpy batches, 256-row buffer); the other variants change one thing (see ``VARIANTS``)
  to show where the time goes. Rate: rows of both workers over the wall time from the workers' common
  start (a barrier) to the last worker's last batch.
- (a) raw limit: pyarrow reading the same shards in one process with no Ray (``ParquetFile.iter_batches``
  over the trainer's columns, files in a shuffled order) and the same ``ArrowCollate``, i.e. the same
  decoding work without Ray. (a0), printed for reference: the volume column alone, decoded straight from
  Arrow's buffer with one copy, the floor of any Parquet reader.
- (b) ``torch.utils.data.DataLoader`` (2 worker processes, shuffled) over one ``.npy`` per study
  (``np.load`` -> tensor).
- (c) the same DataLoader over one ``.nii.gz`` per study, as the seed repositories load data:
  ``nibabel.load(path).get_fdata(dtype=float32)`` -> tensor (float32 rather than get_fdata's default
  float64: the baseline is given its faster option).

Every method runs ``--epochs`` epochs with the micro-batch of a 2-worker, global-batch-32 run (16 rows);
the first epoch warms caches, processes and the OS page cache and is reported but not counted (with
``--epochs 1`` it is the only one). Each epoch of the Ray path restarts Ray Data's pipeline, as training
does, so its rate includes the wait for each epoch's first batch (printed too). Baselines deliver every row
to one consumer; the Ray path splits the rows over the 2 workers. Train workers take ``--worker-cpus``
(0.5) CPUs each: on a 2-CPU machine two 1-CPU workers leave Ray Data no CPU and hang (ENVIRONMENT.md).

Besides wall-clock rates the table gives CPU milliseconds per volume: user + system time of every process
involved (this process and its DataLoader workers; for the Ray path the raylet's whole process tree, i.e.
Train workers, read tasks and the split coordinator), which a machine shared with other jobs disturbs far
less than it disturbs wall time.

Targets (the issue): the platform's Ray path >= 0.8x (a) and >= 2x (c); the verdicts are printed for the
``platform`` variant and for the fastest variant measured.

Run: ``python benchmarks/stream.py [--rows 1000] [--shape 32 256 256] [--epochs 3] [--variants ...]
[--stats] [--skip-baselines] [--data-dir DIR]``: ``DEFAULT_VARIANTS`` unless ``--variants`` names others
or ``all``; about 1 min per variant at the default size on 2 CPUs, plus 3-4 min for the data and the
baselines. ``--stats`` prints Ray Data's statistics per variant: operators (tasks, block sizes) and rank
0's iterator breakdown over all epochs (time blocked on data, batching, formatting, collate).
``--data-dir`` keeps the generated data and reuses it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

import _shards  # beside this script, which Python puts first on sys.path
from brainvlp.data.batches import BATCH_COLUMNS, ArrowCollate, collate
from brainvlp.data.shards import decode_volumes, volume_views
from brainvlp.train.shuffle import shuffled_torch_batches

TARGET_RAW = 0.8  # Ray path / (a)
TARGET_NIFTI = 2.0  # Ray path / (c)
NUM_WORKERS = 2
GLOBAL_BATCH = 32


@dataclass(frozen=True)
class Variant:
    """One way of streaming the shards into the Train workers; the defaults are the platform's settings."""

    help: str
    shuffle_buffer: int = 64  # rows in each worker's local shuffle buffer (DataConfig.shuffle_buffer)
    # pool: the platform's (train/shuffle.py); ray: Ray Data's local shuffle buffer, which the numpy
    # collate and iterate variants use too (the pool hands out Arrow tables)
    shuffle: str = "pool"
    prefetch_batches: int = 1  # iter_torch_batches' default
    collate: str = "arrow"  # arrow: the platform's ArrowCollate; numpy: collate on Ray's numpy batch
    iterate: str = "torch"  # torch: iter_torch_batches(collate_fn=...); numpy: iter_batches + collate
    decode_in_map: bool = False  # decode volumes in a map_batches after the read (in Ray Data's tasks)
    read_cpus: float | None = None  # CPUs per read task (Ray's default: 1)
    max_block_mb: int = 128  # DataContext.target_max_block_size (Ray's default too)
    reader_v1: bool = True  # DataContext.use_datasource_v2 = False: Ray's V1 Parquet reader
    store_limit_mb: int | None = None  # cap on Ray Data's object store use (default: half the store)
    task_per_file: bool = True  # override_num_blocks = shards; Ray's default splits blocks up to 200 in all


VARIANTS = {
    "platform": Variant("trainer.train_dataset + loop._epoch_batches, as pretrain runs them"),
    "ray-defaults": Variant(
        "Ray's defaults (V2 reader, 128 MiB blocks, numpy batches), 256-row buffer: the platform before",
        shuffle_buffer=256,
        collate="numpy",
        max_block_mb=128,
        reader_v1=False,
        task_per_file=False,
    ),
    # One change to the platform's settings each.
    "numpy": Variant("collate on Ray's numpy batch (a bytes copy of every volume first)", collate="numpy"),
    "v2": Variant("Ray's V2 Parquet reader (a ListFiles task before every epoch)", reader_v1=False),
    "blocks64": Variant("64 MiB blocks", max_block_mb=64),
    "blocks32": Variant("32 MiB blocks", max_block_mb=32),
    "blocks16": Variant(
        "16 MiB blocks (the platform's setting until the per-block CPU was measured)", max_block_mb=16
    ),
    "shuffle256": Variant("local shuffle buffer of 256 rows", shuffle_buffer=256),
    "no-shuffle-buffer": Variant("local shuffle buffer off (file order is still shuffled)", shuffle_buffer=0),
    "ray-shuffle": Variant("Ray Data's local shuffle buffer (copies every row twice)", shuffle="ray"),
    "iter-batches": Variant("iter_batches(numpy) + collate on the training thread", iterate="numpy"),
    "map-decode": Variant("volumes decoded in map_batches into a tensor column", decode_in_map=True),
    "prefetch4": Variant("prefetch_batches=4", prefetch_batches=4),
    "read0.5": Variant("read tasks at 0.5 CPU", read_cpus=0.5),
    "store512": Variant("Ray Data's object store use capped at 512 MiB", store_limit_mb=512),
    "store128": Variant("Ray Data's object store use capped at 128 MiB", store_limit_mb=128),
    "min200": Variant("Ray's read_op_min_num_blocks: a set's blocks split up to 200", task_per_file=False),
}

DEFAULT_VARIANTS = ["platform", "ray-defaults", "numpy", "v2", "shuffle256", "no-shuffle-buffer"]


def _decode_in_map(batch: pa.Table) -> pa.Table:
    """map_batches UDF: the volume column as a B x C x D x H x W int16 tensor column."""
    from ray.data.extensions import ArrowTensorArray

    shapes = batch["volume_shape"].to_numpy()
    volumes = decode_volumes(volume_views(batch["volume"]), shapes)
    return batch.set_column(
        batch.schema.get_field_index("volume"), "volume", ArrowTensorArray.from_numpy(volumes)
    )


# ---- data -------------------------------------------------------------------------------------------


@dataclass
class Data:
    shards: Path
    files: list[Path]
    npy: list[Path]
    nifti: list[Path]


def prepare(data_dir: Path, rows: int, shape: tuple[int, int, int]) -> Data:
    """The same studies as shards, .npy and .nii.gz under ``data_dir`` (reused if already there)."""
    start = time.perf_counter()
    files = _shards.cached(_shards.write_shards, data_dir / "shards", rows, shape)
    npy = _shards.cached(_shards.write_npy, data_dir / "npy", rows, shape)
    nifti = _shards.cached(_shards.write_nifti, data_dir / "nifti", rows, shape)
    for path in [*files, *npy, *nifti]:  # into the page cache: every method then reads from memory
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass
    size = sum(p.stat().st_size for p in files) / 2**20
    seconds = time.perf_counter() - start
    print(
        f"{rows} studies {shape} int16 in {data_dir}: {len(files)} shards, {size:.0f} MiB ({seconds:.0f} s)"
    )
    return Data(data_dir / "shards", files, npy, nifti)


# ---- baselines ----------------------------------------------------------------------------------------


@dataclass
class Epoch:
    rows: int
    seconds: float  # wall time
    cpu_s: float  # CPU time of every process involved
    first_batch_s: float = 0.0
    cpu_roles: dict[str, float] = field(default_factory=dict)  # the Ray path's cpu_s by process role


def _role(process: psutil.Process) -> str:
    """Which part of the Ray path a process of the raylet's tree is, from its title. Pooled workers run
    read tasks and show ``ray::IDLE`` between them, so they count as read tasks whatever they show now."""
    title = " ".join(process.cmdline())
    if "RayTrainWorker" in title:
        return "Train workers"
    if "SplitCoordinator" in title:
        return "split coordinator"
    if title.startswith("ray::"):
        return "read tasks, pooled workers" if "IDLE" in title or "Read" in title else "other Ray actors"
    return "raylet and agents"


def cpu_by_role(root: psutil.Process) -> dict[str, float]:
    """User + system CPU seconds of ``root`` and its descendants by ``_role``, each process counted once: a
    process that ended and was reaped is in its parent's ``children_*`` times, a live one in its own."""
    found: dict[str, float] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            times, role = process.cpu_times(), _role(process)
        except psutil.Error:  # ended between listing and reading
            continue
        used = times.user + times.system + times.children_user + times.children_system
        found[role] = found.get(role, 0.0) + used
    return found


def timed_epochs(epochs: int, run_epoch: Callable[[int], int]) -> list[Epoch]:
    """Rows, wall and CPU seconds (this process and its DataLoader workers) of each ``run_epoch(epoch)``."""
    found, me = [], psutil.Process()
    for epoch in range(epochs):
        start, cpu = time.perf_counter(), sum(cpu_by_role(me).values())
        rows = run_epoch(epoch)
        found.append(Epoch(rows, time.perf_counter() - start, sum(cpu_by_role(me).values()) - cpu))
    return found


def pyarrow_epoch(files: Sequence[Path], micro_batch: int, epoch: int) -> int:
    """(a): every shard, in a seeded shuffled order, through pyarrow and the training loop's collate (the
    same decoding work as the Ray path: volumes copied once, from Arrow's buffer)."""
    rows, collate_fn = 0, ArrowCollate(pad_id=0)
    for index in np.random.default_rng(epoch).permutation(len(files)):
        for record_batch in pq.ParquetFile(files[index]).iter_batches(micro_batch, columns=BATCH_COLUMNS):
            rows += len(collate_fn(pa.Table.from_batches([record_batch]))["volume"])
    return rows


def arrow_floor_epoch(files: Sequence[Path], epoch: int) -> int:
    """(a0): the volume column alone, one copy from Arrow's buffer into an int16 tensor per shard."""
    rows = 0
    for index in np.random.default_rng(epoch).permutation(len(files)):
        table = pq.read_table(files[index], columns=["volume", "volume_shape"])
        shapes = table["volume_shape"].to_numpy()
        rows += len(torch.from_numpy(decode_volumes(volume_views(table["volume"]), shapes)))
    return rows


class NpyStudies(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self.paths[index]))


class NiftiStudies(NpyStudies):
    def __getitem__(self, index: int) -> torch.Tensor:
        import nibabel as nib

        return torch.from_numpy(nib.load(self.paths[index]).get_fdata(dtype=np.float32))


def dataloader_epoch(dataset: torch.utils.data.Dataset, micro_batch: int, epoch: int) -> int:
    """(b), (c): a shuffled DataLoader with 2 worker processes, as a single-GPU training script has."""
    generator = torch.Generator().manual_seed(epoch)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro_batch, shuffle=True, num_workers=2, drop_last=True, generator=generator
    )
    return sum(len(batch) for batch in loader)


# ---- the Ray path -------------------------------------------------------------------------------------


def worker_batches(shard: Any, spec: Any, variant: Variant, epoch: int, micro_batch: int) -> Iterable:
    """One epoch's collated batches on a Train worker; ``platform`` is the training loop's own call."""
    if variant == VARIANTS["platform"]:
        from brainvlp.train.loop import _epoch_batches

        return _epoch_batches(shard, spec, epoch, micro_batch, ArrowCollate(pad_id=0))[0]
    seed, pool = spec.train.seed + epoch, variant.shuffle == "pool" and variant.shuffle_buffer
    if pool and variant.collate == "arrow" and variant.iterate == "torch":
        buffer, prefetch = variant.shuffle_buffer, variant.prefetch_batches
        return shuffled_torch_batches(shard, buffer, micro_batch, seed, ArrowCollate(), prefetch)
    shuffle = {
        "local_shuffle_buffer_size": variant.shuffle_buffer or None,
        "local_shuffle_seed": seed,
        "prefetch_batches": variant.prefetch_batches,
    }
    if variant.iterate == "numpy":
        rows = shard.iter_batches(batch_format="numpy", batch_size=micro_batch, drop_last=True, **shuffle)
        return map(collate, rows)
    collate_fn = ArrowCollate() if variant.collate == "arrow" else functools.partial(collate, pad_id=0)
    return shard.iter_torch_batches(batch_size=micro_batch, collate_fn=collate_fn, drop_last=True, **shuffle)


def _raylet() -> psutil.Process:
    """The raylet above this worker: its process tree holds every Ray worker (Train, Data, coordinator)."""
    process = psutil.Process()
    while process.parent() is not None and process.name() != "raylet":
        process = process.parent()
    return process if process.name() == "raylet" else psutil.Process()


def consume(config: dict[str, Any]) -> None:
    """Train loop: iterate every epoch's batches, timing them; rank files go to ``config["out"]``."""
    import ray.train

    from brainvlp.spec import parse
    from brainvlp.train.config import PretrainSpec

    spec, variant = parse(PretrainSpec, config["spec"]), Variant(**config["variant"])
    rank, micro_batch = ray.train.get_context().get_world_rank(), GLOBAL_BATCH // NUM_WORKERS
    shard, epochs, raylet = ray.train.get_dataset_shard("train"), [], _raylet()
    for epoch in range(config["epochs"]):
        torch.distributed.barrier()  # both workers start each epoch together
        start, first, rows, cpu = time.time(), None, 0, cpu_by_role(raylet)
        for batch in worker_batches(shard, spec, variant, epoch, micro_batch):
            first = first or time.time()
            rows += len(batch["volume"])
        end = time.time()
        torch.distributed.barrier()  # both are done: the CPU time covers the whole epoch
        roles = {role: used - cpu.get(role, 0.0) for role, used in cpu_by_role(raylet).items()}
        record = {"start": start, "first": first or end, "end": end, "rows": rows, "roles": roles}
        epochs.append({**record, "cpu": sum(roles.values())})
    stats = shard.stats() if rank == 0 else ""
    Path(config["out"], f"rank{rank}.json").write_text(json.dumps({"epochs": epochs, "stats": stats}))


def ray_dataset(spec: Any, variant: Variant) -> Any:
    """The training dataset of ``variant``; ``platform`` is ``trainer.train_dataset`` itself."""
    import ray.data

    from brainvlp.data.shards import split_files
    from brainvlp.train.trainer import train_dataset

    if variant == VARIANTS["platform"]:
        return train_dataset(spec)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.use_datasource_v2 = not variant.reader_v1
    context.target_max_block_size = variant.max_block_mb * 2**20
    cpus = {"num_cpus": variant.read_cpus} if variant.read_cpus else {}
    files = split_files(spec.data.shards, spec.data.train_split)
    dataset = ray.data.read_parquet(
        files,
        columns=BATCH_COLUMNS,
        shuffle=ray.data.FileShuffleConfig(seed=spec.train.seed),
        override_num_blocks=len(files) if variant.task_per_file else None,
        **cpus,
    )
    if variant.decode_in_map:
        dataset = dataset.map_batches(_decode_in_map, batch_format="pyarrow", batch_size=None, **cpus)
    return dataset


def pretrain_spec(shards: Path, worker_cpus: float) -> Any:
    """A default pretrain spec over ``shards`` for 2 workers of ``worker_cpus`` CPUs, global batch 32."""
    from brainvlp.spec import parse
    from brainvlp.train.config import PretrainSpec

    train = {"num_workers": NUM_WORKERS, "cpus_per_worker": worker_cpus, "batch_size": GLOBAL_BATCH}
    return parse(PretrainSpec, {"data": {"shards": str(shards)}, "train": train})


def start_ray(cpus: int) -> None:
    """An embedded Ray of ``cpus`` CPUs, quiet; the caller shuts it down."""
    import ray

    from brainvlp.runtime import CPU_LOCAL_ENV, RAYLET_ENV

    for key, value in {**CPU_LOCAL_ENV, **RAYLET_ENV}.items():  # the platform's raylet settings
        os.environ.setdefault(key, value)
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)


def fit_workers(
    loop: Callable[[dict[str, Any]], None], config: dict[str, Any], spec: Any, name: str, storage: Path
) -> None:
    """Run ``loop`` on 2 Train workers over variant ``name``'s dataset, as ``run_pretrain`` sets them up;
    ``config`` gains ``spec`` and ``variant``."""
    import ray.data
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from brainvlp.spec import to_plain

    saved, variant = ray.data.DataContext.get_current().copy(), VARIANTS[name]
    options = None  # as run_pretrain: Ray Train's default ingest options
    if variant.store_limit_mb:
        options = ray.train.DataConfig.default_ingest_options()
        limit = variant.store_limit_mb * 2**20
        options.resource_limits = options.resource_limits.copy(object_store_memory=limit)
    try:
        trainer = TorchTrainer(
            loop,
            train_loop_config={**config, "spec": to_plain(spec), "variant": asdict(variant)},
            scaling_config=ScalingConfig(
                num_workers=NUM_WORKERS,
                use_gpu=False,
                resources_per_worker={"CPU": spec.train.cpus_per_worker},
            ),
            datasets={"train": ray_dataset(spec, variant)},
            dataset_config=ray.train.DataConfig(datasets_to_split=["train"], execution_options=options),
            run_config=RunConfig(name=name, storage_path=str(storage)),
        )
        trainer.fit()
    finally:
        ray.data.DataContext._set_current(saved)


def run_variant(name: str, spec: Any, epochs: int, tmp: Path) -> tuple[list[Epoch], str]:
    """Fit a TorchTrainer whose 2 workers only iterate; per-epoch rows and wall time, rank 0's stats."""
    out = tmp / name
    out.mkdir(parents=True)
    fit_workers(consume, {"epochs": epochs, "out": str(out)}, spec, name, tmp / "ray-train")
    ranks = [json.loads(path.read_text()) for path in sorted(out.glob("rank*.json"))]
    found = []
    for records in zip(*(rank["epochs"] for rank in ranks), strict=True):
        start = min(r["start"] for r in records)
        end, first = max(r["end"] for r in records), min(r["first"] for r in records)
        rows, cpu = sum(r["rows"] for r in records), records[0]["cpu"]  # every rank sees the same tree
        found.append(Epoch(rows, end - start, cpu, first - start, records[0]["roles"]))
    return found, ranks[0]["stats"]


# ---- report -------------------------------------------------------------------------------------------


def rate(epochs: Sequence[Epoch]) -> float:
    """Rows/s over the epochs after the first (the first alone when there is one)."""
    counted = epochs[1:] or epochs
    return sum(e.rows for e in counted) / sum(e.seconds for e in counted)


def print_row(name: str, epochs: Sequence[Epoch], mib_per_row: float) -> None:
    """Over the epochs after the first: vol/s, MiB/s, CPU ms per volume, mean wait for the first batch and
    vol/s after it (the rate once an epoch's pipeline has started); and the first epoch's vol/s."""
    counted, speed = epochs[1:] or epochs, rate(epochs)
    rows = sum(e.rows for e in counted)
    cpu_ms = 1000 * sum(e.cpu_s for e in counted) / rows
    latency = sum(e.first_batch_s for e in counted) / len(counted)
    after = rows / sum(e.seconds - e.first_batch_s for e in counted)
    shown = f"{latency:10.1f}s{after:9.1f}" if latency else ""
    first = epochs[0].rows / epochs[0].seconds
    print(f"{name:34}{speed:9.1f}{speed * mib_per_row:9.0f}{cpu_ms:9.1f}{first:9.1f}{shown}")


def cpu_roles_line(epochs: Sequence[Epoch]) -> str:
    """The Ray path's CPU milliseconds per volume by process role, over the epochs after the first."""
    counted = epochs[1:] or epochs
    rows, roles = sum(e.rows for e in counted), {}
    for epoch in counted:
        for role, seconds in epoch.cpu_roles.items():
            roles[role] = roles.get(role, 0.0) + seconds
    ordered = sorted(roles.items(), key=lambda item: -item[1])
    return ", ".join(f"{role} {1000 * seconds / rows:.1f}" for role, seconds in ordered)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def baselines(data: Data, epochs: int, micro_batch: int) -> dict[str, list[Epoch]]:
    run = functools.partial(timed_epochs, epochs)
    return {
        "(a) pyarrow + collate, no Ray": run(functools.partial(pyarrow_epoch, data.files, micro_batch)),
        "(a0) pyarrow volumes, 1 copy": run(functools.partial(arrow_floor_epoch, data.files)),
        "(b) DataLoader(2) .npy": run(functools.partial(dataloader_epoch, NpyStudies(data.npy), micro_batch)),
        "(c) DataLoader(2) .nii.gz": run(
            functools.partial(dataloader_epoch, NiftiStudies(data.nifti), micro_batch)
        ),
    }


def ray_variants(data: Data, args: argparse.Namespace, tmp: Path) -> dict[str, tuple[list[Epoch], str]]:
    import ray

    spec = pretrain_spec(data.shards, args.worker_cpus)
    start_ray(args.cpus)
    try:
        return {name: run_variant(name, spec, args.epochs, tmp) for name in args.variants}
    finally:
        ray.shutdown()


def report(
    measured: dict[str, list[Epoch]],
    streamed: dict[str, tuple[list[Epoch], str]],
    mib_per_row: float,
    stats: bool,
) -> None:
    print(f"{'':34}{'vol/s':>9}{'MiB/s':>9}{'CPU ms':>9}{'epoch 1':>9}{'1st batch':>11}{'after':>9}")
    for name, epochs in measured.items():
        print_row(name, epochs, mib_per_row)
    for name, (epochs, _) in streamed.items():
        print_row(f"Ray Train x{NUM_WORKERS}: {name}", epochs, mib_per_row)
    for name, (epochs, _) in streamed.items():
        print(f"  CPU ms per volume, {name}: {cpu_roles_line(epochs)}")
    if stats:
        for name, (_, text) in streamed.items():
            print(f"--- Ray Data stats, rank 0, {name} ---\n{text.strip()}")
    if not measured:
        return
    raw, nifti = rate(measured["(a) pyarrow + collate, no Ray"]), rate(measured["(c) DataLoader(2) .nii.gz"])
    print(f"{'':34}{'/ (a)':>9}{'/ (c)':>9}  variant")
    for name, (epochs, _) in streamed.items():
        speed = rate(epochs)
        print(f"{'Ray: ' + name:34}{speed / raw:8.2f}x{speed / nifti:8.2f}x  {VARIANTS[name].help}")
    verdicts = {"platform": streamed["platform"][0]} if "platform" in streamed else {}
    if streamed:
        best = max(streamed, key=lambda name: rate(streamed[name][0]))
        verdicts[f"best variant ({best})"] = streamed[best][0]
    for label, epochs in verdicts.items():
        for target, baseline, name in ((TARGET_RAW, raw, "(a)"), (TARGET_NIFTI, nifti, "(c)")):
            ratio = rate(epochs) / baseline
            print(f"{_verdict(ratio >= target)} Ray path, {label} >= {target}x {name}: {ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="the issue asks for at least 1,000")
    parser.add_argument("--shape", type=int, nargs=3, default=[32, 256, 256], metavar=("D", "H", "W"))
    parser.add_argument("--epochs", type=int, default=3, help="the first one is a warm-up")
    parser.add_argument("--variants", nargs="+", choices=[*VARIANTS, "all"], default=DEFAULT_VARIANTS)
    parser.add_argument("--worker-cpus", type=float, default=0.5, help="CPUs per Train worker")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the embedded Ray")
    parser.add_argument("--data-dir", type=Path, help="keep the generated data here and reuse it")
    parser.add_argument("--skip-baselines", action="store_true", help="measure the Ray variants only")
    parser.add_argument("--stats", action="store_true", help="print Ray Data's iterator stats per variant")
    args = parser.parse_args()
    args.variants = list(VARIANTS) if "all" in args.variants else args.variants
    if args.rows < GLOBAL_BATCH or args.epochs < 1:
        parser.error(f"--rows must be >= {GLOBAL_BATCH} and --epochs >= 1")
    shape, micro_batch = tuple(args.shape), GLOBAL_BATCH // NUM_WORKERS
    with tempfile.TemporaryDirectory(prefix="brainvlp-stream-") as tmp:
        data = prepare(args.data_dir or Path(tmp) / "data", args.rows, shape)
        measured = {} if args.skip_baselines else baselines(data, args.epochs, micro_batch)
        streamed = ray_variants(data, args, Path(tmp))
    report(measured, streamed, mib_per_row=2 * int(np.prod(shape)) / 2**20, stats=args.stats)


if __name__ == "__main__":
    main()
