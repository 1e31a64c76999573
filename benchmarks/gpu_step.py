"""brat's full-size training step on one GPU, measured, against docs/scaling.md's projection from flops.py.

The task is ``flops.py``'s (``configs/pretrain/brat.yaml``'s model on ``configs/ingest_hospital.yaml``'s
4 x 32 x 256 x 256 studies, full 256-token reports with 20 sentences, a random BERT-base as the text
encoder), built on the GPU in bf16 as DeepSpeed's bf16 mode holds it, with SDPA attention. For each
micro-batch, with and without activation checkpointing, it times forward + brat loss + backward (the loss
contrasts the micro-batch with itself: B = G), and prints:

- ms per step and samples/s (median of ``--steps`` timed steps after two untimed ones, fresh study ids
  every step), and the host's share: the time until Python has queued the whole step, before waiting;
- MFU: the model's forward + backward FLOPs per sample (counted by flops.py on the meta device, without
  the recomputation) x samples/s / ``--peak-tflops``;
- peak GPU memory (``torch.cuda.max_memory_allocated``) against flops.py's bound: weights + bf16 gradients
  + activations per sample x batch;
- the brat loss alone (its inputs detached) and its share of the step.

Then one fused AdamW step over fp32 master weights (what DeepSpeed's bf16 optimizer adds per step), and the
same micro-batch with ``torch.backends.cudnn.benchmark`` on. Not included: data loading, ZeRO's gradient
reduce-scatter (scaling.md section 3 bounds it) and DeepSpeed's own bookkeeping.

Run: ``python benchmarks/gpu_step.py [--batches 4 8 16 32] [--steps 5] [--no-checkpointing]
[--blas cublas|cublaslt]`` on a machine with a CUDA GPU (no Ray, no DeepSpeed, no data needed; about two
minutes on an H200). ``--profile`` instead profiles one step at the first micro-batch: the operators with
the most host time, the Python functions with the most own time, and each line where the host waits for
the GPU. Figures measured with it are in docs/scaling.md section 5.
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import statistics
import time
from typing import Any

import torch

from brainvlp.losses.base import total_loss
from brainvlp.train.task import PretrainTask
from flops import brat_shapes, build_task, make_batch, measure

GIB = 2**30
_ids = itertools.count()


def fresh_batch(shapes: dict[str, Any], size: int) -> dict[str, Any]:
    """A full-length batch on the GPU with random voxels and study ids never seen before (no text cache)."""
    batch = make_batch(shapes, size, "cuda")
    batch["volume"].random_(0, 800)
    batch["input_ids"].random_(1000, 30000)
    batch["study_id"] = [f"s{next(_ids)}" for _ in range(size)]
    return batch


def time_steps(step: Any, make_input: Any, steps: int) -> tuple[float, float]:
    """Median wall and host-queueing seconds of ``step(make_input())``, two untimed steps first."""
    walls, hosts = [], []
    for index in range(steps + 2):
        argument = make_input()
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(argument)
        queued = time.perf_counter()
        torch.cuda.synchronize()
        if index >= 2:
            walls.append(time.perf_counter() - start)
            hosts.append(queued - start)
    return statistics.median(walls), statistics.median(hosts)


def train_step(task: PretrainTask) -> Any:
    def step(batch: dict[str, Any]) -> None:
        task.zero_grad(set_to_none=True)
        task(batch)["loss"].backward()

    return step


def loss_seconds(task: PretrainTask, batch: dict[str, Any], steps: int) -> float:
    """The brat loss alone, forward + backward, on the model's outputs for ``batch`` (detached)."""
    with torch.no_grad():
        outputs = task.represent(batch, task.loss.inputs)
    inputs = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in outputs.items()}
    return time_steps(lambda x: total_loss(task.loss(x)).backward(), lambda: inputs, steps)[0]


def optimizer_seconds(task: PretrainTask) -> float:
    """One fused AdamW step over fp32 copies of the weights and gradients, as DeepSpeed's bf16 mode keeps."""
    master = [p.detach().float().requires_grad_(True) for p in task.parameters()]
    for weight in master:
        weight.grad = torch.randn_like(weight)
    optimizer = torch.optim.AdamW(master, lr=1e-4, fused=True)
    optimizer.step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        optimizer.step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / 5


def profile_step(shapes: dict[str, Any], size: int) -> None:
    """Where a step's host time goes: the operators with the most CPU time, the Python functions with the
    most own time, and every line that makes the host wait for the GPU (CUDA's sync debug mode)."""
    import cProfile
    import pstats
    import warnings

    from torch.profiler import ProfilerActivity, profile

    task = build_task(shapes, checkpointing=False, device="cuda", attention="sdpa")
    step = train_step(task)
    step(fresh_batch(shapes, size))
    torch.cuda.synchronize()
    with profile(activities={ProfilerActivity.CPU, ProfilerActivity.CUDA}) as prof:
        step(fresh_batch(shapes, size))
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    profiler = cProfile.Profile()
    profiler.runcall(step, fresh_batch(shapes, size))
    torch.cuda.synchronize()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        step(fresh_batch(shapes, size))
    torch.cuda.set_sync_debug_mode("default")
    lines = collections.Counter(f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
    print(f"host waits for the GPU in one step: {sum(lines.values())}, at")
    for line, count in lines.most_common():
        print(f"  {count:5} {line}")


def measure_config(args: argparse.Namespace, shapes: dict, checkpointing: bool, per_sample: dict) -> None:
    task = build_task(shapes, checkpointing, device="cuda", attention="sdpa")
    weights = sum(p.numel() * p.element_size() for p in task.parameters())
    activations = per_sample["memory"]["checkpointed, peak bound" if checkpointing else "plain"]
    for size in args.batches:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            batches = functools.partial(fresh_batch, shapes, size)
            wall, host = time_steps(train_step(task), batches, args.steps)
            loss_wall = loss_seconds(task, fresh_batch(shapes, size), args.steps)
        except torch.OutOfMemoryError:
            print(f"  {'yes' if checkpointing else 'no':>4} {size:5}  out of memory")
            task.zero_grad(set_to_none=True)
            continue
        peak = torch.cuda.max_memory_allocated()
        bound = 2 * weights + size * activations
        mfu = per_sample["flops"] * size / wall / (args.peak_tflops * 1e12)
        print(
            f"  {'yes' if checkpointing else 'no':>4} {size:5} {1e3 * wall:8.1f} {1e3 * host:8.1f} "
            f"{size / wall:9.1f} {mfu:6.1%} {peak / GIB:8.1f} {bound / GIB:8.1f} "
            f"{1e3 * loss_wall:8.1f} {loss_wall / wall:6.1%}"
        )
    if not checkpointing:
        optimizer_ms = 1e3 * optimizer_seconds(task)
        print(f"  optimizer: fused AdamW over fp32 master weights {optimizer_ms:.1f} ms/step")
        torch.backends.cudnn.benchmark = True
        size = args.batches[0]
        wall, _ = time_steps(train_step(task), functools.partial(fresh_batch, shapes, size), args.steps)
        print(f"  cudnn.benchmark on, micro-batch {size}: {1e3 * wall:.1f} ms, {size / wall:.1f} samples/s")
        torch.backends.cudnn.benchmark = False
    del task
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32], help="micro-batches")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per micro-batch")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100/H200 SXM bf16 dense")
    parser.add_argument("--profile", action="store_true", help="profile one step at the first micro-batch")
    parser.add_argument(
        "--blas", choices=["cublas", "cublaslt"], help="preferred_blas_library: its host cost"
    )
    parser.add_argument("--no-checkpointing", action="store_true", help="skip the checkpointed rows")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    if args.blas:
        torch.backends.cuda.preferred_blas_library(args.blas)
    shapes = brat_shapes()
    if args.profile:
        profile_step(shapes, args.batches[0])
        return
    flops, memory, counts = measure(shapes, 2)
    per_sample = {"flops": flops["model"], "memory": memory}
    print(
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}; brat full size, "
        f"{counts['params'] / 1e6:.1f} M parameters, {flops['model'] / 1e9:.0f} GFLOP per sample "
        f"(forward + backward, flops.py), bf16 weights, SDPA attention, "
        f"BLAS {torch.backends.cuda.preferred_blas_library()}"
    )
    print("  ckpt batch  step ms  host ms  samples/s   MFU  peak GiB bound GiB  loss ms  share")
    for checkpointing in (False,) if args.no_checkpointing else (False, True):
        measure_config(args, shapes, checkpointing, per_sample)


if __name__ == "__main__":
    main()
