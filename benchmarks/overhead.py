"""Framework overhead: a training step through Ray Train + DeepSpeed against a plain PyTorch loop, on CPU.

The same model, the same fixed batch, the same torch threads, run three ways (Ray's own release benchmark
does the same with its ``ray_torch_distributed`` launcher against plain ``torch.distributed``):

(a) plain: the driver process, no DeepSpeed: ``loss = task(batch)["loss"]; loss.backward();
    optimizer.step(); scheduler.step(); optimizer.zero_grad()`` with ``torch.optim.AdamW`` over the same
    parameter groups as brainvlp's ``Engine``;
(b) Ray Train + DeepSpeed, 1 worker: a ``TorchTrainer`` whose worker wraps the task in brainvlp's
    ``Engine`` (DeepSpeed, the spec's ZeRO stage, fp32 on CPU) and steps it exactly as
    ``train.loop.train_loop_per_worker`` does: ``engine(batch)``, ``engine.backward``, ``engine.step``,
    and a ``ray.train.report`` every ``train.log_every`` steps. The worker also steps (a)'s loop on its
    own copy of the model, which splits the overhead into the Ray worker process and DeepSpeed;
(c) optional (``--two-workers``): 2 workers at half the batch each (ZeRO over gloo), for reference: on a
    2-core machine this is a scaling figure, not an overhead one.

The model and optimiser settings are the quickstart's pretrain section (``configs/quickstart.yaml``: a
ResNet on 2 x 32 x 64 x 64 volumes, frozen MiniLM whose features are cached per study, CLIP loss, ZeRO-2),
at batch 16 by default (a step of ~0.4 s on one thread of an idle 2-core CPU; the quickstart's 32 takes
~1 s). The batch is synthetic and held in memory: there is no data loading, so only framework costs
differ.

Timing on a shared machine: a step's time drifted 2-5x within minutes here, more than any overhead, so
the paths take turns. In each of ``--rounds`` rounds the driver times ``--per-round`` plain steps, then
signals the workers (a Ray queue), which time theirs (worker plain, then engine) while the driver waits;
every path therefore samples the same stretches of time. All paths first run ``--warmup`` untimed steps
(the frozen text encoder's cache fills on the first). Figures are median step times (the mean, which
includes the periodic reports, is printed too). The target (the issue): (b) at most 1.15x (a).

Run: ``python benchmarks/overhead.py [--rounds 10] [--per-round 2] [--batch 16] [--threads 1]
[--two-workers]``.
"""

from __future__ import annotations

from brainvlp.runtime import use_cpu_local_env

use_cpu_local_env()

import argparse  # noqa: E402  (the environment above must be set before ray and deepspeed load)
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

from brainvlp.losses.config import LOSSES  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.15
VOLUME_SHAPE, TOKENS, SENTENCES = (2, 32, 64, 64), 64, 4  # the quickstart's 2 sequences; short reports


def quickstart_pretrain(batch_size: int) -> dict[str, Any]:
    """The quickstart's pretrain section as plain data (it travels to the workers), at ``batch_size``."""
    section = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())["pretrain"]
    section["train"]["batch_size"] = batch_size
    return section


def build_task(section: dict[str, Any]) -> Any:
    """The spec's model and loss as a ``PretrainTask``, the same weights every call (seeded)."""
    from brainvlp.models.dual_encoder import DualEncoder
    from brainvlp.spec import parse
    from brainvlp.train.config import PretrainSpec
    from brainvlp.train.task import PretrainTask

    spec = parse(PretrainSpec, section, "pretrain")  # a pipeline section: its shards come later
    torch.manual_seed(spec.train.seed)
    model = DualEncoder(spec.model, in_channels=VOLUME_SHAPE[0], volume_shape=VOLUME_SHAPE[1:])
    return PretrainTask(model, LOSSES.build(spec.loss), scale_max=800, augment=None), spec


def make_batch(rows: int, offset: int = 0) -> dict[str, Any]:
    """A collated batch of ``rows`` studies (rows ``offset``.. of one fixed seeded set)."""
    gen = torch.Generator().manual_seed(0)
    total = offset + rows
    volume = torch.randint(0, 800, (total, *VOLUME_SHAPE), generator=gen, dtype=torch.int16)
    input_ids = torch.randint(1000, 2000, (total, TOKENS), generator=gen)
    rows_slice = slice(offset, total)
    starts_S = torch.arange(SENTENCES) * (TOKENS // SENTENCES) + 1  # equal sentences after [CLS]
    spans_S2 = torch.stack([starts_S, starts_S + TOKENS // SENTENCES - 2], -1)
    return {
        "study_id": [f"s{i}" for i in range(offset, total)],
        "volume": volume[rows_slice],
        "input_ids": input_ids[rows_slice],
        "attention_mask": torch.ones(rows, TOKENS, dtype=torch.long),
        "spans": spans_S2.expand(rows, -1, -1).clone(),
        "sentence_mask": torch.ones(rows, SENTENCES, dtype=torch.bool),
    }


def time_steps(step: Callable[[], None], steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def plain_step(section: dict[str, Any], batch: dict[str, Any], total_steps: int) -> Callable[[], None]:
    """(a): the task stepped by a torch optimizer, as a single-process PyTorch script would."""
    from brainvlp.train.engine import lr_lambda, param_groups

    task, spec = build_task(section)
    task.train()
    optimizer = torch.optim.AdamW(param_groups(task, spec.train))  # as Engine builds it
    factor = lr_lambda(spec.train.schedule, spec.train.warmup_steps, total_steps, spec.train.poly_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    clip = spec.deepspeed.grad_clip

    def step() -> None:
        task(batch)["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(task.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def engine_step(section: dict[str, Any], batch: dict[str, Any], total_steps: int) -> Callable[[], None]:
    """(b): the task in brainvlp's ``Engine``, stepped as ``train_loop_per_worker`` steps it (with its
    periodic ``ray.train.report``)."""
    import ray.train

    from brainvlp.embed import to_device
    from brainvlp.train.engine import Engine

    task, spec = build_task(section)
    micro_batch = spec.train.batch_size // ray.train.get_context().get_world_size()
    engine = Engine(task, spec.deepspeed, spec.train, micro_batch=micro_batch, total_steps=total_steps)
    batch = to_device(batch, engine.device)
    count = 0

    def step() -> None:
        nonlocal count
        outputs = engine(batch)
        engine.backward(outputs["loss"])
        engine.step()
        count += 1
        if count % spec.train.log_every == 0:
            ray.train.report({"step": count, "loss": float(outputs["loss"].detach())})

    return step


def worker_loop(config: dict[str, Any]) -> None:
    """Each Train worker: its share of the fixed batch; on the driver's signal, one round of (a) inside the
    worker (1 worker only) and (b). Timings travel back in a checkpoint (``Result.metrics`` keeps only
    metrics reported with one)."""
    import ray.train

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    rows = config["section"]["train"]["batch_size"] // world_size
    batch = make_batch(rows, offset=rank * rows)
    total = config["warmup"] + config["rounds"] * config["per_round"]
    paths = {"engine": engine_step(config["section"], batch, total)}
    if world_size == 1:
        paths = {"plain_in_worker": plain_step(config["section"], batch, total), **paths}
    for step in paths.values():
        time_steps(step, config["warmup"])
    timings = {"threads": torch.get_num_threads(), **{name: [] for name in paths}}
    config["done"].put(rank)  # ready
    for _ in range(config["rounds"]):
        config["go"][rank].get()
        for name, step in paths.items():
            timings[name] += time_steps(step, config["per_round"])
        config["done"].put(rank)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(timings))
        ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def run_in_turns(
    plain: Callable[[], None], section: dict[str, Any], workers: int, args: argparse.Namespace
) -> tuple[list[float], list[dict[str, Any]]]:
    """Fit a ``TorchTrainer`` of ``worker_loop`` in a thread while the driver times its plain steps in
    turns with the workers' rounds; the driver's times and every rank's."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    go, done = (
        [Queue(actor_options={"num_cpus": 0}) for _ in range(workers)],
        Queue(actor_options={"num_cpus": 0}),
    )
    config = {"section": section, "threads": args.threads, "warmup": args.warmup, "rounds": args.rounds,
              "per_round": args.per_round, "go": go, "done": done}  # fmt: skip
    outcome: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=False, resources_per_worker={"CPU": args.worker_cpus}
            ),
            run_config=RunConfig(name="overhead", storage_path=storage),
        )
        thread = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
        thread.start()
        _await(done, workers, thread)  # every worker built and warmed up
        times = []
        for _ in range(args.rounds):
            times += time_steps(plain, args.per_round)
            for queue in go:
                queue.put(True)
            _await(done, workers, thread)
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        with outcome["result"].checkpoint.as_directory() as directory:
            ranks = [json.loads(path.read_text()) for path in sorted(Path(directory).glob("rank*.json"))]
    return times, ranks


def _fit(trainer: Any, outcome: dict[str, Any]) -> None:
    try:
        outcome["result"] = trainer.fit()
    except Exception as err:  # re-raised on the main thread
        outcome["error"] = err


def _await(done: Any, workers: int, thread: threading.Thread) -> None:
    """One message from every worker; fails instead of waiting forever if training died."""
    from ray.util.queue import Empty

    received = 0
    while received < workers:
        try:
            done.get(timeout=5)
            received += 1
        except Empty:
            if not thread.is_alive():
                raise RuntimeError("the Ray Train run ended early; see its log above") from None


def row(name: str, times: list[float], baseline: float) -> float:
    median = statistics.median(times)
    print(f"{name:48}{1e3 * median:10.1f}{1e3 * statistics.fmean(times):10.1f}{median / baseline:8.2f}x")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="turns each path takes")
    parser.add_argument("--per-round", type=int, default=2, help="timed steps per path and round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (text cache, allocator)")
    parser.add_argument("--batch", type=int, default=16, help="global batch (quickstart: 32, ~1 s a step)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, every path")
    parser.add_argument("--worker-cpus", type=float, default=0.5, help="Ray CPUs per Train worker")
    parser.add_argument("--two-workers", action="store_true", help="also (c): 2 workers at half the batch")
    args = parser.parse_args()
    if min(args.rounds, args.per_round, args.threads) < 1 or args.warmup < 1 or args.batch % 2:
        parser.error("--rounds, --per-round, --threads and --warmup must be >= 1, --batch even")
    import ray

    torch.set_num_threads(args.threads)
    section = quickstart_pretrain(args.batch)
    plain = plain_step(section, make_batch(args.batch), args.warmup + 2 * args.rounds * args.per_round)
    time_steps(plain, args.warmup)
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        plain_one, (one,) = run_in_turns(plain, section, 1, args)
        two = run_in_turns(plain, section, 2, args) if args.two_workers else None
    finally:
        ray.shutdown()
    report(args, plain_one, one, two)


def report(
    args: argparse.Namespace,
    plain: list[float],
    one: dict[str, Any],
    two: tuple[list[float], list[dict[str, Any]]] | None,
) -> None:
    shape = " x ".join(map(str, VOLUME_SHAPE))
    print(
        f"\nquickstart model and optimiser, batch {args.batch} of {shape} int16, {args.threads} torch "
        f"thread(s) (worker: {one['threads']}), {args.rounds} rounds x {args.per_round} steps per path"
    )
    print(f"{'':48}{'median ms':>10}{'mean ms':>10}{'ratio':>9}")
    baseline = statistics.median(plain)
    row("(a) plain PyTorch, driver process", plain, baseline)
    in_worker = row("    (a) plain PyTorch, inside the Ray worker", one["plain_in_worker"], baseline)
    engine = row("(b) Ray Train + DeepSpeed, 1 worker", one["engine"], baseline)
    print(f"    DeepSpeed alone, (b) / (a) inside the worker: {engine / in_worker:.2f}x")
    if two:
        plain_two, ranks = two
        slowest = max((rank["engine"] for rank in ranks), key=statistics.median)
        two_baseline = row("(a) plain PyTorch, driver, during (c)'s rounds", plain_two, baseline)
        row(f"(c) 2 workers x {args.batch // 2}, slowest rank, vs (a) then", slowest, two_baseline)
    ratio = engine / baseline
    print(f"{'PASS' if ratio <= TARGET else 'FAIL'} (b) <= {TARGET:.2f}x (a): {ratio:.2f}x")


if __name__ == "__main__":
    main()
