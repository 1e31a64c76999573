"""``train_loop_per_worker``, run by every Ray Train worker: model -> loss -> backward -> step -> report."""

from __future__ import annotations

import functools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import ray.train
import torch

from brainvlp.data.sampler import SamplerStats, unique_report_batches
from brainvlp.distributed import gather_features
from brainvlp.export import save_export
from brainvlp.losses import LOSSES
from brainvlp.models import DualEncoder
from brainvlp.spec import parse
from brainvlp.train.config import TrainConfig
from brainvlp.train.dev_eval import evaluate_dev
from brainvlp.train.engine import Engine
from brainvlp.train.task import PretrainTask, build_augment, collate, to_device

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


class BestWeights:
    """The weights with the best mean dev R@5 so far (a CPU copy), when the spec selects by it."""

    def __init__(self, select: str) -> None:
        self.enabled = select == "best_dev_R@5"
        self.score, self.step, self.state = -1.0, 0, None

    def update(self, score: float, step: int, engine: Engine) -> None:
        # Every rank sees the same unsplit dev set and the same weights, so all take this branch together
        # (full_state_dict is a collective under ZeRO-3).
        if self.enabled and score > self.score:
            state = engine.full_state_dict()
            self.score, self.step = score, step
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def train_loop_per_worker(config: dict[str, Any]) -> None:
    from brainvlp.train.trainer import PretrainSpec  # the spec travels as plain data and is re-validated

    spec = parse(PretrainSpec, config["spec"])
    index, context = config["index"], ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if spec.train.threads_per_worker:
        torch.set_num_threads(spec.train.threads_per_worker)
    task = _build(spec, index, rank, world_size)
    micro_batch = spec.train.batch_size // world_size
    steps = total_steps(spec.train, index["splits"][spec.data.train_split])
    engine = Engine(task, spec.deepspeed, spec.train, micro_batch=micro_batch, total_steps=steps)
    collate_fn = functools.partial(collate, pad_id=index["pad_token_id"])
    shard, best = ray.train.get_dataset_shard("train"), BestWeights(spec.train.select)
    step, start, history = 0, time.perf_counter(), []
    for epoch in range(spec.train.epochs):
        batches, sampled = _epoch_batches(shard, spec, epoch, micro_batch, collate_fn)
        if sampled is not None and world_size > 1:
            batches = _in_lockstep(batches, engine.device)
        for batch in batches:
            outputs = engine(to_device(batch, engine.device))
            engine.backward(outputs["loss"])
            engine.step()
            step += 1
            metrics = {}
            if spec.train.eval_every and (step % spec.train.eval_every == 0 or step == steps):
                dev = ray.train.get_dataset_shard("dev")
                metrics = evaluate_dev(task, dev, collate_fn, engine.device, micro_batch)
                best.update(metrics["dev_R@5"], step, engine)
            if metrics or step % spec.train.log_every == 0 or step == steps:
                elapsed = time.perf_counter() - start
                metrics.update({k: float(v.detach()) for k, v in outputs.items() if v.dim() == 0})
                metrics.update(
                    step=step, epoch=epoch, lr=engine.lr, samples_per_s=step * spec.train.batch_size / elapsed
                )
                history.append(metrics)
                ray.train.report(metrics)
                if rank == 0:
                    _print_progress(metrics, steps, elapsed)
            if step >= steps:
                break
        if sampled is not None and sampled.dropped and rank == 0:
            sys.stdout.write(
                f"epoch {epoch}: unique-report sampler dropped {sampled.dropped} rows on rank 0\n"
            )
            sys.stdout.flush()
        if step >= steps:
            break
    _final_checkpoint(engine, spec, index, history, best)


def _epoch_batches(
    shard: Any, spec: Any, epoch: int, micro_batch: int, collate_fn: Callable
) -> tuple[Iterable[dict[str, Any]], SamplerStats | None]:
    """One epoch's collated micro-batches; with ``data.unique_reports`` regrouped so that no report repeats
    within a batch, plus the sampler's counts (None without it)."""
    shuffle = {
        "local_shuffle_buffer_size": spec.data.shuffle_buffer or None,
        "local_shuffle_seed": spec.train.seed + epoch,
    }
    if not spec.data.unique_reports:
        kwargs = {"batch_size": micro_batch, "collate_fn": collate_fn, "drop_last": True, **shuffle}
        return shard.iter_torch_batches(**kwargs), None
    stats = SamplerStats()
    rows = shard.iter_batches(batch_format="numpy", batch_size=micro_batch, **shuffle)
    return map(collate_fn, unique_report_batches(rows, micro_batch, stats)), stats


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


def _print_progress(metrics: dict[str, Any], steps: int, elapsed: float) -> None:
    eta = elapsed / metrics["step"] * (steps - metrics["step"])
    dev = f"  dev R@5 {metrics['dev_R@5']:.3f}" if "dev_R@5" in metrics else ""
    # sys.stdout, not print: Ray Train patches print on workers, which shows every line twice.
    sys.stdout.write(
        f"step {metrics['step']}/{steps}  loss {metrics['loss']:.3f}{dev}  lr {metrics['lr']:.2e}  "
        f"{metrics['samples_per_s']:.1f} samples/s  eta {eta / 60:.1f} min\n"
    )
    sys.stdout.flush()


def _export_meta(spec: Any, index: dict[str, Any], step: int, selected: str) -> dict[str, Any]:
    return {
        "model": spec.model,
        "in_channels": index["volume_shape"][0],
        "volume_shape": index["volume_shape"][1:],
        "scale_max": index["scale_max"],
        "tokenizer": index["tokenizer"],
        "pad_token_id": index["pad_token_id"],
        "sequences": index["sequences"],
        "scoring": LOSSES.build(spec.loss).scoring,  # how retrieval must score image-report pairs
        "step": step,
        "selected": selected,
    }


def _final_checkpoint(
    engine: Engine, spec: Any, index: dict[str, Any], history: list[dict], best: BestWeights
) -> None:
    """Every rank saves its DeepSpeed state; rank 0 adds the exported encoders; Ray merges the directories."""
    last_step = history[-1]["step"] if history else 0
    if best.state is not None:
        state, step, selected = best.state, best.step, f"best dev R@5 {best.score:.4f} at step {best.step}"
    else:
        state, step, selected = engine.full_state_dict(), last_step, "last step"
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(Path(tmp) / "deepspeed")
        if ray.train.get_context().get_world_rank() == 0:
            model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            save_export(Path(tmp) / "export", model_state, _export_meta(spec, index, step, selected))
            # The loss curve travels inside the checkpoint: the driver may not share the workers' disk.
            (Path(tmp) / "history.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
        final = {"step": last_step, "selected": selected}
        for prefix, record in (("first", history[:1]), ("last", history[-1:])):
            final.update({f"{prefix}_{k}": v for m in record for k, v in m.items() if k.endswith("loss")})
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))
