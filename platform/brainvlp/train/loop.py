"""``train_loop_per_worker``, run by every Ray Train worker: model -> loss -> backward -> step -> report."""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import torch

from brainvlp.distributed import gather_features
from brainvlp.export import save_export
from brainvlp.losses import LOSSES
from brainvlp.models import DualEncoder
from brainvlp.spec import parse
from brainvlp.train.config import TrainConfig
from brainvlp.train.engine import Engine
from brainvlp.train.task import PretrainTask, build_augment, collate

log = logging.getLogger(__name__)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


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
    shard = ray.train.get_dataset_shard("train")
    collate_fn = functools.partial(collate, pad_id=index["pad_token_id"])
    step, start, history = 0, time.perf_counter(), []
    for epoch in range(spec.train.epochs):
        batches = shard.iter_torch_batches(
            batch_size=micro_batch,
            collate_fn=collate_fn,
            drop_last=True,
            local_shuffle_buffer_size=spec.data.shuffle_buffer or None,
            local_shuffle_seed=spec.train.seed + epoch,
        )
        for batch in batches:
            outputs = engine(_to_device(batch, engine.device))
            engine.backward(outputs["loss"])
            engine.step()
            step += 1
            if step % spec.train.log_every == 0 or step == steps:
                metrics = {k: float(v) for k, v in outputs.items() if v.dim() == 0}
                elapsed = time.perf_counter() - start
                metrics.update(
                    step=step, epoch=epoch, lr=engine.lr, samples_per_s=step * spec.train.batch_size / elapsed
                )
                history.append(metrics)
                ray.train.report(metrics)
            if step >= steps:
                break
        if step >= steps:
            break
    _final_checkpoint(engine, spec, index, history)


def _final_checkpoint(engine: Engine, spec: Any, index: dict[str, Any], history: list[dict]) -> None:
    """Every rank saves its DeepSpeed state; rank 0 adds the exported encoders; Ray merges the directories."""
    state = engine.full_state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        engine.save_checkpoint(Path(tmp) / "deepspeed")
        if ray.train.get_context().get_world_rank() == 0:
            model_state = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
            meta = {
                "model": spec.model,
                "in_channels": index["volume_shape"][0],
                "volume_shape": index["volume_shape"][1:],
                "scale_max": index["scale_max"],
                "tokenizer": index["tokenizer"],
                "pad_token_id": index["pad_token_id"],
                "sequences": index["sequences"],
                "step": history[-1]["step"] if history else 0,
            }
            save_export(Path(tmp) / "export", model_state, meta)
            # The loss curve travels inside the checkpoint: the driver may not share the workers' disk.
            (Path(tmp) / "history.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
        final = {"step": history[-1]["step"] if history else 0}
        final.update(
            {f"first_{k}": v for k, v in (history[0] if history else {}).items() if k.endswith("loss")}
        )
        final.update(
            {f"last_{k}": v for k, v in (history[-1] if history else {}).items() if k.endswith("loss")}
        )
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))
