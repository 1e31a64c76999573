"""``train_loop``, run by every Ray Train worker of one report-generation run (one model, one seed):
model -> loss -> backward -> step, an evaluation on the dev split after each epoch, a checkpoint per epoch
(resumable), and the selected weights' reports for the test split.

Dev and test are small and unsplit by Ray: every worker reads them and keeps rows ``i % world == rank``;
texts meet by ``all_gather_object``, so every rank computes the same selection score and takes the same
branch (saving the best weights is a collective under ZeRO-3). Every rank runs as many evaluation batches
as the others (``_own_rows`` pads), and generation under ZeRO-3 on several workers runs with
``synced_gpus``: ranks keep stepping together until the longest report ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import torch
import torch.distributed as dist

from brainvlp.evaluate.nlg import corpus_scores
from brainvlp.models.language import load_tokenizer_dir
from brainvlp.reportgen.config import ReportGenSpec
from brainvlp.reportgen.model import Batches, build_generator
from brainvlp.spec import parse
from brainvlp.train.checkpointing import BestWeights, restore, save_checkpoint, seed_step
from brainvlp.train.config import TrainConfig
from brainvlp.train.engine import Engine


def train_loop(config: dict[str, Any]) -> None:
    spec = parse(ReportGenSpec, config["spec"])
    entry = next(m for m in spec.models if m.name == config["model"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    if spec.train.threads_per_worker:
        torch.set_num_threads(spec.train.threads_per_worker)
    torch.manual_seed(config["seed"])
    tokenizer = load_tokenizer_dir(config["tokenizer"])
    model = build_generator(spec, entry, tokenizer, config["index"])
    steps = config["steps_per_epoch"] * spec.train.epochs
    engine = Engine(model, spec.deepspeed, _as_train_config(spec, steps), micro_batch=spec.micro_batch,
                    total_steps=steps)  # fmt: skip
    best = BestWeights("last" if spec.train.select == "last" else f"best_{_metric_key(spec.train.select)}")
    run = restore(engine, best)
    batches = Batches(tokenizer, config["index"]["scale_max"], spec.train.max_report_tokens)
    special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    while run.epoch < spec.train.epochs:
        engine.module.train()
        losses = []
        for batch in _batches(ray.train.get_dataset_shard("train"), spec.micro_batch, batches, engine.device):
            seed_step(config["seed"], rank, run.step, None)
            loss = engine(_input(batch, engine), batch["input_ids"], batch["attention_mask"])["loss"]
            engine.backward(loss)
            engine.step()
            run.step += 1
            losses.append(float(loss.detach()))
        run.epoch += 1
        metrics = {"epoch": run.epoch, "step": run.step, "loss": sum(losses) / max(1, len(losses)),
                   "lr": engine.lr, **_evaluate(spec, engine, batches, special, rank, world)}  # fmt: skip
        run.history.append(metrics)
        best.update(metrics, run.step, engine)
        if run.epoch < spec.train.epochs:
            save_checkpoint(engine, run, best, metrics)
    if best.state is not None:
        engine.module.load_state_dict(best.state)
    written = _generate_split(engine, spec.test_split, batches, spec, special, rank, world)
    history = "".join(json.dumps(m) + "\n" for m in run.history)
    final = {"step": run.step, "selected": best.label if best.state is not None else "last epoch"}
    extra = {
        "predictions": lambda out: pq.write_table(pa.Table.from_pylist(written), out / "test.parquet"),
        "history": lambda out: (out / "history.jsonl").write_text(history),
    }
    save_checkpoint(engine, run, best, final, extra)


def _as_train_config(spec: ReportGenSpec, steps: int) -> TrainConfig:
    """The engine's optimiser and schedule settings (AdamW, warm-up, cosine) from the report spec."""
    optimizer_steps = max(1, steps // spec.deepspeed.gradient_accumulation_steps)
    return TrainConfig(
        lr=spec.train.lr,
        weight_decay=spec.train.weight_decay,
        warmup_steps=int(spec.train.warmup_ratio * optimizer_steps),
        schedule=spec.train.schedule,
        use_gpu=spec.train.use_gpu,
    )


def _metric_key(select: str) -> str:
    return "dev_loss" if select == "dev_loss" else f"dev_{select}"


def _input(batch: dict[str, Any], engine: Engine) -> torch.Tensor:
    """Volumes in the engine's precision (bf16 parameters on GPU take bf16 inputs)."""
    dtype = next(engine.module.parameters()).dtype
    return batch["volume"].to(dtype)


def _batches(shard: Any, size: int, batches: Batches, device: torch.device) -> Iterator[dict[str, Any]]:
    for rows in shard.iter_batches(batch_size=size, batch_format="numpy", drop_last=True):
        yield batches(rows, device)


def _own_rows(split: str, size: int, batches: Batches, device: torch.device, rank: int, world: int) -> Any:
    """This rank's rows of an unsplit split (``i % world == rank``), in batches, the same number of batches
    on every rank: under ZeRO-3 each forward pass gathers the parameters from all ranks, so a rank that
    ran out of rows early would leave the others waiting for ever. A rank whose share of the last chunk
    is empty gets a copy of the chunk's first row, marked ``pad``, whose loss and report are dropped."""
    shard = ray.train.get_dataset_shard(split)
    for rows in shard.iter_batches(batch_size=size * world, batch_format="numpy"):
        mine = {key: value[rank::world] for key, value in rows.items()}
        pad = not len(mine["study_id"])
        if pad:
            mine = {key: value[:1] for key, value in rows.items()}
        yield {**batches(mine, device), "pad": pad}


@torch.no_grad()
def _evaluate(
    spec: ReportGenSpec, engine: Engine, batches: Batches, special: dict, rank: int, world: int
) -> dict[str, float]:
    """Dev loss (mean over studies) and, when selecting by one, the dev NLG metric of greedy reports."""
    engine.module.eval()
    total = torch.zeros(2, dtype=torch.float64, device=engine.device)
    for batch in _own_rows(spec.dev_split, spec.micro_batch, batches, engine.device, rank, world):
        loss = engine.module(_input(batch, engine), batch["input_ids"], batch["attention_mask"])["loss"]
        weight = 0 if batch["pad"] else len(batch["reports"])
        total += torch.tensor([float(loss) * weight, weight], device=engine.device)
    if world > 1:
        dist.all_reduce(total)
    metrics = {"dev_loss": float(total[0] / total[1].clamp(min=1))}
    if spec.train.select not in ("last", "dev_loss"):
        written = _generate_split(engine, spec.dev_split, batches, spec, special, rank, world)
        references, generated = [w["reference"] for w in written], [w["generated"] for w in written]
        # METEOR starts a Java jar (~5 s): only when it is the selection metric
        scores = corpus_scores(references, generated, meteor=spec.train.select == "METEOR")
        metrics[f"dev_{spec.train.select}"] = scores[spec.train.select]
    return metrics


def _generate_split(
    engine: Engine, split: str, batches: Batches, spec: ReportGenSpec, special: dict, rank: int, world: int
) -> list[dict[str, str]]:
    """Every study of the split with its reference and generated report, on every rank (gathered)."""
    engine.module.eval()
    synced = spec.deepspeed.zero_stage == 3 and world > 1
    mine = []
    for batch in _own_rows(split, spec.micro_batch, batches, engine.device, rank, world):
        ids = engine.module.generate(_input(batch, engine), spec.generator.decoding, synced_gpus=synced,
                                     **special)  # fmt: skip
        if batch["pad"]:
            continue
        texts = batches.tokenizer.batch_decode(ids, skip_special_tokens=True)
        mine += [
            {"study_id": s, "reference": r, "generated": g.strip(), "findings": f}
            for s, r, g, f in zip(batch["study_id"], batch["reports"], texts, batch["findings"], strict=True)
        ]
    if world == 1:
        return mine
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, mine)
    return sorted((row for part in gathered for row in part), key=lambda row: row["study_id"])
