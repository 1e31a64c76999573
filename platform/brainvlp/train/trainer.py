"""The pretrain job on the driver: validate against the shards, stream them into a Ray ``TorchTrainer``,
and copy the exported encoders out of the final checkpoint."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from brainvlp.data.batches import BATCH_COLUMNS
from brainvlp.data.shards import read_index, split_files
from brainvlp.spec import SpecError, to_plain
from brainvlp.train.config import PretrainSpec, check_against_shards
from brainvlp.train.engine import deepspeed_config
from brainvlp.train.loop import total_steps, train_loop_per_worker
from brainvlp.train.progress import ProgressFeed

log = logging.getLogger(__name__)


def _read_settings() -> ray.data.DataContext:
    """The driver's Ray Data context, set for streaming shards of 4-16 MiB studies (benchmarks/stream.py
    measured each setting): Ray's V1 Parquet reader, as V2 lists the files in a task before every epoch's
    first read, and blocks of up to 128 MiB (Ray's default, set here so that it stays): the split
    coordinator and the read tasks pay per block, so 4-row blocks of 16 MiB streamed 30 % slower at 45 %
    more CPU per volume, with no gain in time to the first batch."""
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.target_max_block_size = 128 * 2**20
    # The training split is re-streamed every epoch; per-epoch progress bars would flood the job log.
    context.enable_progress_bars = False
    return context


def train_dataset(spec: PretrainSpec) -> ray.data.Dataset:
    files = split_files(spec.data.shards, spec.data.train_split)
    context = _read_settings()
    context.execution_options.preserve_order = spec.data.deterministic
    # A new, seeded file order every epoch; Ray counts epochs per execution, so a restarted run would see
    # another order: a deterministic run keeps the file order and shuffles only in the seeded local buffer.
    shuffle = None if spec.data.deterministic else ray.data.FileShuffleConfig(seed=spec.train.seed)
    # One read task per shard, its blocks cut only at target_max_block_size. Left to choose, Ray splits each
    # task's blocks further until a data set has 200 of them, so a small set streamed in smaller blocks than
    # a large one and the object store's streaming window grew with the data set (benchmarks/memory.py).
    # A split read once into the object store needs no estimate of its in-memory size to pace streaming, and
    # the estimate's sampling tasks still held their CPU leases when materialize() checked for free CPUs: Ray
    # Data warned on every such run that "the cluster does not have any available CPUs" (it had).
    context.decoding_size_estimation = not spec.data.materialize
    dataset = ray.data.read_parquet(
        files, columns=BATCH_COLUMNS, shuffle=shuffle, override_num_blocks=len(files)
    )
    context.decoding_size_estimation = True
    return dataset.materialize() if spec.data.materialize else dataset


def datasets(spec: PretrainSpec) -> dict[str, ray.data.Dataset]:
    """The streamed training split, plus the (small, unsplit) dev split when the spec evaluates on it."""
    found = {"train": train_dataset(spec)}
    if spec.train.eval_every:
        # Streamed by each worker at every evaluation, not materialised here: a dev split of 8,000 studies
        # would hold tens of GiB in the object store, and the driver's eager read raced the release of the
        # ingest tasks' CPUs (Ray Data's "no available CPUs" warning on a cluster that had them).
        files = split_files(spec.data.shards, spec.data.dev_split)
        found["dev"] = ray.data.read_parquet(files, columns=BATCH_COLUMNS, override_num_blocks=len(files))
    return found


def run_pretrain(
    spec: PretrainSpec, run_dir: Path, callbacks: Sequence[Any] = (), show_progress: bool = True
) -> dict[str, Any]:
    """Fit the Train run; ``callbacks`` are Ray Train callbacks (a tune trial's report to Tune);
    ``show_progress``: a live progress line on this process's console (not for a tune trial)."""
    if spec.data.shards is None:
        raise SpecError("data.shards", "required: the output directory of an ingest job")
    index = read_index(spec.data.shards)
    check_against_shards(spec, index)
    steps = total_steps(spec.train, index["splits"][spec.data.train_split])
    micro = spec.train.batch_size // spec.train.num_workers
    (run_dir / "deepspeed.json").write_text(
        json.dumps(deepspeed_config(spec.deepspeed, micro, spec.train.use_gpu))
    )
    feed = ProgressFeed("pretrain", steps) if show_progress else nullcontext()
    config = {"spec": to_plain(spec), "index": index, "run_dir": str(run_dir.resolve())}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={**config, "progress": getattr(feed, "queue", None)},
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker=spec.train.ray_resources(),
        ),
        datasets=datasets(spec),
        # Only the training split is sharded over workers; every worker evaluates the whole dev split.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name="train",
            storage_path=str(run_dir.resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.train.keep_checkpoints),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
            callbacks=list(callbacks),
        ),
    )
    print(
        f"pretrain: {spec.train.num_workers} worker(s), {steps} steps, global batch {spec.train.batch_size}"
    )
    with feed:
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"pretrain finished without a checkpoint; see {run_dir / 'train'}")
    export_dir = run_dir / "export"
    with result.checkpoint.as_directory() as checkpoint:
        for name in ("export", "export_last"):  # export_last: the final weights when export holds the best
            if (Path(checkpoint) / name).exists():
                shutil.copytree(Path(checkpoint) / name, run_dir / name, dirs_exist_ok=True)
        shutil.copy(Path(checkpoint) / "history.jsonl", run_dir / "metrics.jsonl")
    summary = {"steps": steps, "export": str(export_dir), "metrics": result.metrics}
    print(f"pretrain: exported encoders ({result.metrics.get('selected', 'last step')}) to {export_dir}")
    return summary
