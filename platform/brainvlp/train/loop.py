"""``train_loop_per_worker``, run by every Ray Train worker: model -> loss -> backward -> step -> report."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray.train
import torch

from brainvlp.data.batches import ArrowCollate
from brainvlp.data.sampler import SamplerStats, unique_report_batches
from brainvlp.distributed import gather_features
from brainvlp.embed import to_device
from brainvlp.export import save_export
from brainvlp.losses.config import LOSSES
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse, to_plain
from brainvlp.train.checkpointing import BestWeights, RunState, restore, save_checkpoint, seed_step
from brainvlp.train.config import PretrainSpec, TrainConfig
from brainvlp.train.dev_eval import evaluate_dev
from brainvlp.train.engine import Engine
from brainvlp.train.progress import post
from brainvlp.train.shuffle import shuffled_torch_batches
from brainvlp.train.task import PretrainTask, build_augment
from brainvlp.train.tracking import NullTracker, Tracker

log = logging.getLogger(__name__)


def _build(spec: Any, index: dict[str, Any], rank: int, world_size: int) -> PretrainTask:
    torch.manual_seed(spec.train.seed)  # identical initial weights on every worker
    model = DualEncoder(
        spec.model, in_channels=index["volume_shape"][0], volume_shape=index["volume_shape"][1:]
    )
    gather = functools.partial(gather_features, world_size=world_size)
    loss = LOSSES.build(spec.loss, rank=rank, world_size=world_size, gather=gather)
    augment = build_augment(spec.data.augment, seed=spec.train.seed * 1000 + rank)
    return PretrainTask(model, loss, scale_max=index["scale_max"], augment=augment)


def total_steps(train: TrainConfig, train_rows: int) -> int:
    steps = train.epochs * (train_rows // train.batch_size)
    return min(steps, train.max_steps) if train.max_steps else steps


def train_loop_per_worker(config: dict[str, Any]) -> None:
    spec = parse(PretrainSpec, config["spec"])  # the spec travels as plain data and is re-validated
    index, context = config["index"], ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if spec.train.threads_per_worker:
        torch.set_num_threads(spec.train.threads_per_worker)
    task = _build(spec, index, rank, world_size)
    micro_batch = spec.train.batch_size // world_size
    steps = total_steps(spec.train, index["splits"][spec.data.train_split])
    engine = Engine(task, spec.deepspeed, spec.train, micro_batch=micro_batch, total_steps=steps)
    collate_fn = ArrowCollate(index["pad_token_id"])
    best = BestWeights(spec.train.select)
    run = restore(engine, best)
    tracker = _tracker(spec, config["run_dir"]) if rank == 0 else NullTracker()
    feed = config.get("progress") if rank == 0 else None
    if run.step and rank == 0:
        post(feed, {"note": f"resuming at step {run.step} (epoch {run.epoch}, batch {run.batches_done})"})
    shard, start, start_step = ray.train.get_dataset_shard("train"), time.perf_counter(), run.step
    while run.epoch < spec.train.epochs and run.step < steps:
        batches, sampled = _epoch_batches(shard, spec, run.epoch, micro_batch, collate_fn)
        if sampled is not None and world_size > 1:
            batches = _in_lockstep(batches, engine.device)
        for batch in itertools.islice(batches, run.batches_done, None):  # skip what a resumed epoch had
            seed_step(spec.train.seed, rank, run.step, task.augment)
            outputs = engine(to_device(batch, engine.device))
            engine.backward(outputs["loss"])
            engine.step()
            run.step, run.batches_done = run.step + 1, run.batches_done + 1
            metrics = _step_metrics(spec, task, engine, best, run, outputs, collate_fn, micro_batch, steps)
            if metrics:
                metrics.update(samples_per_s=(run.step - start_step) * spec.train.batch_size
                               / (time.perf_counter() - start))  # fmt: skip
                run.history.append(metrics)
                tracker.log({k: v for k, v in metrics.items() if k not in ("step", "epoch")}, run.step)
                if rank == 0:
                    post(feed, {**metrics, "steps": steps})
            every = spec.train.checkpoint_every
            if every and run.step % every == 0 and run.step < steps:
                save_checkpoint(engine, run, best, metrics or {"step": run.step})
            elif metrics:
                ray.train.report(metrics)
            if run.step >= steps:
                break
        if sampled is not None and sampled.dropped and rank == 0:
            dropped = f"epoch {run.epoch}: the unique-report sampler dropped {sampled.dropped} rows"
            post(feed, {"note": dropped})
        if run.step < steps:
            run.epoch, run.batches_done = run.epoch + 1, 0
    _final_checkpoint(engine, spec, index, run, best)
    tracker.close()


def _tracker(spec: Any, run_dir: str) -> Tracker:
    """Rank 0's TensorBoard / MLflow writer, in the run directory (shared storage on a cluster)."""
    return Tracker(spec.tracking, Path(run_dir), spec.run_name or "pretrain", to_plain(spec))


def _step_metrics(
    spec: Any,
    task: PretrainTask,
    engine: Engine,
    best: BestWeights,
    run: RunState,
    outputs: dict[str, torch.Tensor],
    collate_fn: Callable,
    micro_batch: int,
    steps: int,
) -> dict[str, Any]:
    """The step's record when it evaluates on the dev split or logs (else empty)."""
    metrics = {}
    if spec.train.eval_every and (run.step % spec.train.eval_every == 0 or run.step == steps):
        dev = ray.train.get_dataset_shard("dev")
        metrics = evaluate_dev(task, dev, collate_fn, engine.device, micro_batch)
        best.update(metrics, run.step, engine)
    if metrics or run.step % spec.train.log_every == 0 or run.step == steps:
        metrics.update({k: float(v.detach()) for k, v in outputs.items() if v.dim() == 0})
        metrics.update(step=run.step, epoch=run.epoch, lr=engine.lr)
    return metrics


def _epoch_batches(
    shard: Any, spec: Any, epoch: int, micro_batch: int, collate_fn: ArrowCollate
) -> tuple[Iterable[dict[str, Any]], SamplerStats | None]:
    """One epoch's collated micro-batches; with ``data.unique_reports`` regrouped so that no report repeats
    within a batch, plus the sampler's counts (None without it)."""
    seed = spec.train.seed + epoch
    if not spec.data.unique_reports:
        if spec.data.shuffle_buffer:
            buffer = spec.data.shuffle_buffer
            return shuffled_torch_batches(shard, buffer, micro_batch, seed, collate_fn), None
        return shard.iter_torch_batches(batch_size=micro_batch, collate_fn=collate_fn, drop_last=True), None
    # The unique-report regrouping works on Ray's numpy batches, so it keeps Ray's local shuffle buffer.
    shuffle = {"local_shuffle_buffer_size": spec.data.shuffle_buffer or None, "local_shuffle_seed": seed}
    stats = SamplerStats()
    rows = shard.iter_batches(batch_format="numpy", batch_size=micro_batch, **shuffle)
    return map(collate_fn.numpy, unique_report_batches(rows, micro_batch, stats)), stats


def _in_lockstep(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """Stop the epoch on every rank as soon as one rank runs out of batches. Every step is collective, and
    unique-report batching can leave ranks with different batch counts (streaming_split only makes the
    row counts equal)."""
    found = iter(batches)
    while True:
        batch = next(found, None)
        more = torch.tensor([batch is not None], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(more, op=torch.distributed.ReduceOp.MIN)
        if not more.item():
            return
        yield batch


def _export_meta(spec: Any, index: dict[str, Any], step: int, selected: str) -> dict[str, Any]:
    return {
        "model": spec.model,
        "in_channels": index["volume_shape"][0],
        "volume_shape": index["volume_shape"][1:],
        "scale_max": index["scale_max"],
        "tokenizer": index["tokenizer"],
        "pad_token_id": index["pad_token_id"],
        "sequences": index["sequences"],
        "scoring": spec.loss.scoring,  # how retrieval must score image-report pairs
        "step": step,
        "selected": selected,
    }


def _final_checkpoint(
    engine: Engine, spec: Any, index: dict[str, Any], run: RunState, best: BestWeights
) -> None:
    """Every rank saves its DeepSpeed state; rank 0 adds the exported encoders (``export/``: the selected
    weights; ``export_last/`` too when those are the best dev ones) and the loss curve (the driver may not
    share the workers' disk); Ray merges the directories."""
    last_state = engine.full_state_dict()  # collective under ZeRO-3; only rank 0 gets the full state
    exports = {"export": (last_state, run.step, "last step")}
    if best.state is not None:
        exports = {"export": (best.state, best.step, best.label), "export_last": exports["export"]}
    history = "".join(json.dumps(m) + "\n" for m in run.history)

    def write_exports(directory: Path) -> None:  # rank 0 only
        for name, (state, step, selected) in exports.items():
            model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            save_export(directory / name, model_state, _export_meta(spec, index, step, selected))

    extra = {
        "export": write_exports,
        "history": lambda directory: (directory / "history.jsonl").write_text(history),
    }
    selected = exports["export"][2]
    final = {"step": run.step, "selected": selected}
    for prefix, record in (("first", run.history[:1]), ("last", run.history[-1:])):
        final.update({f"{prefix}_{k}": v for m in record for k, v in m.items() if k.endswith("loss")})
    save_checkpoint(engine, run, best, final, extra)
