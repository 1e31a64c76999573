"""FLOPs and activation memory per sample of brat's full-size model: the measured inputs of docs/scaling.md.

The model is ``configs/pretrain/brat.yaml``'s (DenseNet-121 averaging depth, a 32-query Q-Former every 2nd
layer cross-attending, ITG on, linear 256-d heads) on ``configs/ingest_hospital.yaml``'s studies (4
sequences of 32 x 256 x 256, reports of at most 256 tokens and 20 sentences). BiomedBERT's weights are not
available offline, so the text encoder is a randomly initialised BERT of its shape (BERT-base: 12 layers,
768 wide, 12 heads, 3072 feed-forward, vocabulary 30522); FLOPs and activation sizes depend on shapes only.

How, without running a 3D DenseNet at 256 x 256 on a CPU: the model lives on PyTorch's ``meta`` device, in
bf16 as DeepSpeed trains it, so every operator computes shapes only, and one forward + backward at batch
``--batch`` (reports at their full 256 tokens) is traced instantly:

- FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; element-wise ops
  are not counted, as in MFU accounting), per module, divided by the batch;
- activation memory: a ``saved_tensors_hooks`` pack hook adds up the bytes of every tensor autograd keeps
  for backward (what lives between forward and backward), attributed to the checkpointing regions (the
  DenseNet stages, each Q-Former layer call) by module hooks. With activation checkpointing a region keeps
  only its input, and its own activations come back during its backward, one region at a time; the peak is
  bounded by what is kept plus the largest region. The checkpointed model is traced too, as a cross-check.

The model ends where the loss begins: its outputs (views, attention maps, sentences, ITG logits) feed a
stand-in sum on ``meta`` (brat's loss calls autocast, which the meta device does not support); the brat
loss itself runs on CPU on random tensors of the same shapes, in float32 as the task runs it, and is
reported separately (its cost is the B x G x Q x S matching, tiny next to the model).

Two details differ from a GPU run and are upper bounds here: the text encoder runs with eager attention
(on GPU, SDPA would not keep the 12 x 256 x 256 attention probabilities per layer), and transformers' check
that skips an all-ones attention mask is disabled (it reads tensor values, which meta tensors have none of;
the mask adds no FLOPs that are counted).

Run: ``python benchmarks/flops.py [--batch 2]`` (a few seconds; no data, no weights).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers.masking_utils
import yaml
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel

import brainvlp.models.text
from brainvlp.losses.base import total_loss
from brainvlp.losses.config import LOSSES
from brainvlp.models.config import ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse
from brainvlp.train.task import PretrainTask

ROOT = Path(__file__).resolve().parents[1]
BERT_BASE = {"vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "max_position_embeddings": 512}  # fmt: skip
GIB = 2**30


def brat_shapes() -> dict[str, Any]:
    """Model and loss sections of brat's spec, and the study shape of the hospital ingest it trains on."""
    pretrain = yaml.safe_load((ROOT / "configs/pretrain/brat.yaml").read_text())
    ingest = yaml.safe_load((ROOT / "configs/ingest_hospital.yaml").read_text())
    return {
        "model": pretrain["model"],
        "loss": pretrain["loss"],
        "channels": len(ingest["sequences"]),
        "volume_shape": tuple(ingest["volume"]["shape"]),
        "max_tokens": ingest["report"]["max_tokens"],
        "max_sentences": ingest["report"]["max_sentences"],
    }


def build_task(
    shapes: dict[str, Any], checkpointing: bool, device: str = "meta", attention: str = "eager"
) -> PretrainTask:
    """brat's full-size task in bf16 on ``device``, its text encoder a random BERT-base (``attention``: the
    transformers attention implementation)."""
    model_section = {**shapes["model"], "activation_checkpointing": checkpointing}
    model_section["text"] = {**model_section["text"], "path": "bert-base-shaped"}
    config = parse(ModelConfig, model_section, "model")
    bert = BertConfig(**BERT_BASE, attn_implementation=attention)
    brainvlp.models.text.load_text_model = lambda path: BertModel(bert)  # no weights offline; shapes suffice
    # Reads mask values to skip an all-ones mask; meta tensors have no values.
    transformers.masking_utils._ignore_bidirectional_mask_sdpa = lambda *args, **kwargs: False
    with torch.device(device):
        model = DualEncoder(config, in_channels=shapes["channels"], volume_shape=shapes["volume_shape"])
        loss = LOSSES.build(parse_loss(shapes))
    return PretrainTask(model, loss, scale_max=800, augment=None).to(torch.bfloat16).train()


def parse_loss(shapes: dict[str, Any]) -> Any:
    section = {**shapes["loss"], "max_sentences": shapes["max_sentences"]}
    return parse(LOSSES.config_class(section["name"], "loss.name"), section, "loss")


def make_batch(shapes: dict[str, Any], batch: int, device: str) -> dict[str, Any]:
    """A batch of full-length reports (every token and sentence slot used: the largest step)."""
    tokens, sentences = shapes["max_tokens"], shapes["max_sentences"]
    with torch.device(device):
        spans_BS2 = torch.zeros(batch, sentences, 2, dtype=torch.long)
        return {
            "study_id": [f"s{b}" for b in range(batch)],
            "volume": torch.zeros(batch, shapes["channels"], *shapes["volume_shape"], dtype=torch.int16),
            "input_ids": torch.zeros(batch, tokens, dtype=torch.long),
            "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
            "spans": spans_BS2,
            "sentence_mask": torch.ones(batch, sentences, dtype=torch.bool),
        }


class SavedBytes:
    """Bytes autograd keeps for backward, each storage counted once, by checkpointing region.

    Regions are the DenseNet stages and every call of a text-encoder or Q-Former layer (the Q-Former runs
    twice: views, then ITG); everything else is "outside". Saved storages stay alive until backward, so
    their addresses identify them. Weights saved for backward are parameters, not activations: skipped.
    """

    def __init__(self, task: PretrainTask) -> None:
        self.by_region: dict[str, int] = defaultdict(int)
        self.region_inputs: dict[str, int] = {}
        self.region: str | None = None
        self.seen: set[int] = {p.untyped_storage()._cdata for p in task.parameters()}
        self.calls: dict[str, int] = defaultdict(int)
        self.handles: list[Any] = []
        vision = task.model.vision
        stages = list(vision.features.children())
        for i, (start, end) in enumerate(vision.stage_bounds):
            self._watch(f"DenseNet stage {i}", stages[start], stages[end - 1])
        for i, layer in enumerate(task.model.text.model.encoder.layer):
            self._watch(f"text layer {i}", layer, layer)
        for i, layer in enumerate(task.model.qformer.qformer.encoder.layer):
            self._watch(f"Q-Former layer {i}", layer, layer)

    def _watch(self, name: str, first: nn.Module, last: nn.Module) -> None:
        def enter(module: nn.Module, args: tuple) -> None:
            self.calls[name] += 1
            self.region = f"{name} call {self.calls[name]}"
            self.region_inputs[self.region] = nbytes(args[0])

        def leave(module: nn.Module, args: tuple, output: Any) -> None:
            self.region = None

        self.handles += [first.register_forward_pre_hook(enter), last.register_forward_hook(leave)]

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in self.seen:
            self.seen.add(storage._cdata)
            self.by_region[self.region or "outside"] += storage.nbytes()
        return tensor

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def group(self, prefix: str) -> int:
        return sum(v for k, v in self.by_region.items() if k.startswith(prefix))


def nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def trace_model(task: PretrainTask, batch: dict[str, Any]) -> tuple[FlopCounterMode, SavedBytes, dict]:
    """One forward + backward of the model on meta, up to the loss's inputs (a stand-in sum as the loss)."""
    saved = SavedBytes(task)
    with FlopCounterMode(display=False) as flops:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
            outputs = task.represent(batch, task.loss.inputs)
        stand_in = sum(v.float().sum() for v in outputs.values() if v.is_floating_point() and v.requires_grad)
        stand_in.backward()
    saved.remove()
    return flops, saved, outputs


def trace_loss(shapes: dict[str, Any], outputs: dict[str, torch.Tensor]) -> tuple[int, int]:
    """FLOPs and saved bytes of the brat loss on CPU, on random float32 inputs shaped like the model's."""
    inputs = {}
    for key, value in outputs.items():
        if value.is_floating_point():
            inputs[key] = torch.rand(value.shape).requires_grad_(True)
        else:  # ids, masks: all tokens and sentence slots real, as in the traced batch
            inputs[key] = torch.ones(value.shape, dtype=value.dtype)
    inputs["views"] = torch.nn.functional.normalize(inputs["views"].detach(), dim=-1).requires_grad_(True)
    inputs["attn"] = inputs["attn"].detach().softmax(-1).requires_grad_(True)
    saved = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.untyped_storage().data_ptr() not in saved:
            saved.add(tensor.untyped_storage().data_ptr())
            total += tensor.untyped_storage().nbytes()
        return tensor

    loss = LOSSES.build(parse_loss(shapes))
    with FlopCounterMode(display=False) as flops:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            value = total_loss(loss(inputs))
        value.backward()
    return flops.get_total_flops(), total


class OperatorCount(TorchDispatchMode):
    """Counts the aten operators a step dispatches that are not views: about its kernel launches, whose
    host-side cost bounds an eager step's time from below at a small per-GPU batch, whatever the FLOPs."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def count_operators(task: PretrainTask, batch: dict[str, Any]) -> int:
    task.zero_grad(set_to_none=True)  # as every training step starts: no gradients to accumulate into
    with OperatorCount() as counter:
        outputs = task.represent(batch, task.loss.inputs)
        sum(v.float().sum() for v in outputs.values() if v.is_floating_point() and v.requires_grad).backward()
    return counter.count


def forward_backward_flops(forward: Callable[[], Any]) -> int:
    """FLOPs of ``forward()`` and the backward of the sum of its floating-point outputs."""
    with FlopCounterMode(display=False) as flops:
        outputs = forward()
        outputs = outputs if isinstance(outputs, tuple | list) else (outputs,)
        sum(o.float().sum() for o in outputs if o is not None and o.requires_grad).backward()
    return flops.get_total_flops()


def component_flops(task: PretrainTask, batch: dict[str, Any]) -> dict[str, int]:
    """Forward + backward FLOPs of each part of the model, traced one at a time (FlopCounterMode's own
    per-module split attributes backward operators to the wrong modules)."""
    model, volume = task.model, task.prepare_volume(batch["volume"], torch.bfloat16)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tokens_BPF = model.vision(volume).detach().requires_grad_(True)
    return {
        "DenseNet-121": forward_backward_flops(lambda: model.vision(volume)),
        "text encoder (BERT-base shape)": forward_backward_flops(
            lambda: model.text_features(ids, mask, batch["spans"])
        ),
        "Q-Former views": forward_backward_flops(lambda: model.encode_views(tokens_BPF)),
        "Q-Former ITG (with LM head)": forward_backward_flops(
            lambda: model.qformer.itg_logits(tokens_BPF, ids, mask)
        ),
    }


def activation_summary(saved: SavedBytes, loss_bytes: int) -> dict[str, int]:
    """Bytes kept for backward without checkpointing, and with it: what stays (the outside and every
    region's input) and a bound on the peak (plus the largest region, recomputed during its backward)."""
    regions = {k: v for k, v in saved.by_region.items() if k != "outside"}
    kept = saved.by_region["outside"] + sum(saved.region_inputs.values()) + loss_bytes
    largest = max(regions, key=regions.get)
    return {
        "plain": sum(saved.by_region.values()) + loss_bytes,
        "DenseNet stages": saved.group("DenseNet"),
        "text encoder layers": saved.group("text"),
        "Q-Former layers (views + ITG)": saved.group("Q-Former"),
        "outside (embeddings, heads, ITG logits, ...)": saved.by_region["outside"],
        "loss (float32)": loss_bytes,
        "checkpointed, kept": kept,
        f"checkpointed, largest region ({largest.removesuffix(' call 1')})": regions[largest],
        "checkpointed, peak bound": kept + regions[largest],
    }


def project(
    args: argparse.Namespace, flops: dict[str, float], memory: dict[str, float], counts: dict
) -> None:
    """Samples/s, epoch time and input data rate on ``--gpus`` H100s for each assumed MFU, then memory and
    gradient traffic per GPU. A step takes the longer of its GPU time (FLOPs at that MFU) and its host time
    (operators x ``--launch-us``: eager PyTorch launches kernels one by one)."""
    peak, gpus, batch = args.peak_tflops * 1e12, args.gpus, args.micro_batch
    study_mib = args.channels * math.prod(args.volume_shape) * 2 / 2**20  # int16 voxels
    print(f"\nprojection: {gpus} x H100 (bf16 dense {args.peak_tflops:.0f} TFLOP/s), micro-batch {batch}")
    print(
        f"  one study = {args.channels} volumes of {study_mib / args.channels:.0f} MiB = {study_mib:.0f} MiB"
    )
    print("    MFU  ckpt  GPU ms  host ms  samples/s  epoch  volumes/s  GiB/s")
    for mfu in args.mfu:
        for ckpt, per_sample in (("no", flops["model"]), ("yes", flops["checkpointed"])):
            # MFU counts model FLOPs; recomputation costs hardware time at the same utilisation.
            gpu_s = batch * per_sample / (mfu * peak)
            host_s = counts["operators"][ckpt] * args.launch_us * 1e-6
            total = gpus * batch / max(gpu_s, host_s)
            print(
                f"  {mfu:5.0%} {ckpt:>5} {1e3 * gpu_s:7.1f} {1e3 * host_s:8.1f} {total:10.0f} "
                f"{args.studies / total:5.0f}s {total * args.channels:10.0f} {total * study_mib / 1024:6.1f}"
            )
    # ZeRO-2, bf16: bf16 weights and gradients on every GPU; fp32 master weights, Adam moments and the
    # fp32 gradient partition split over the GPUs.
    params = counts["params"]
    static = params * (2 + 2 + (4 + 8 + 4) / gpus)
    print(
        f"\n  per GPU, ZeRO-2 bf16: weights, grads, optimizer {static / GIB:.1f} GiB ({params / 1e6:.0f} M)"
    )
    for name, per_sample in (("no", memory["plain"]), ("yes", memory["checkpointed, peak bound"])):
        fits = int((args.gpu_memory_gib * GIB * 0.9 - static) // per_sample)
        print(
            f"  checkpointing {name:>3}: activations {per_sample / GIB:.2f} GiB/sample -> "
            f"{(static + batch * per_sample) / GIB:.1f} GiB at micro-batch {batch}; "
            f"~{fits} samples fit in 90% of {args.gpu_memory_gib:.0f} GiB"
        )
    step_bytes = 2 * params * 2 * (gpus - 1) / gpus  # ring reduce-scatter + all-gather of bf16 gradients
    print(
        f"  gradient traffic per step {step_bytes / 1e9:.2f} GB per GPU: "
        f"{1e3 * step_bytes / (args.bus_gbps * 1e9):.1f} ms at {args.bus_gbps:.0f} GB/s"
    )


def measure(shapes: dict[str, Any], batch_size: int) -> tuple[dict[str, float], dict[str, float], dict]:
    """Per-sample FLOPs (model, by component, and with checkpointing's recomputation) and activation
    bytes, from one traced step at ``batch_size``; the parameter and per-step operator counts."""
    task = build_task(shapes, checkpointing=False)
    batch = make_batch(shapes, batch_size, "meta")
    params = sum(p.numel() for p in task.parameters())
    model_flops, saved, outputs = trace_model(task, batch)
    loss_flops, loss_bytes = trace_loss(shapes, outputs)
    flops = {name: value / batch_size for name, value in component_flops(task, batch).items()}
    flops["model"] = model_flops.get_total_flops() / batch_size
    flops["brat loss (B = G = batch)"] = loss_flops / batch_size
    checked = build_task(shapes, checkpointing=True)
    checked_flops, checked_saved, _ = trace_model(checked, batch)
    flops["checkpointed"] = checked_flops.get_total_flops() / batch_size
    memory = {name: value / batch_size for name, value in activation_summary(saved, loss_bytes).items()}
    memory["checkpointed, kept (traced, cross-check)"] = (
        sum(checked_saved.by_region.values()) + loss_bytes
    ) / batch_size
    operators = {"no": count_operators(task, batch), "yes": count_operators(checked, batch)}
    return flops, memory, {"params": params, "operators": operators}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="traced batch; figures are per sample")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--studies", type=int, default=77_000, help="studies per epoch")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.10, 0.20, 0.35])
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="H100 SXM bf16 dense")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0)
    parser.add_argument("--micro-batch", type=int, default=4, help="brat: global batch 32 over 8 GPUs")
    parser.add_argument("--bus-gbps", type=float, default=300.0, help="effective NVLink all-reduce GB/s")
    parser.add_argument("--launch-us", type=float, default=10.0, help="host time per eager operator, us")
    args = parser.parse_args()
    shapes = brat_shapes()
    args.channels, args.volume_shape = shapes["channels"], shapes["volume_shape"]
    print(
        f"brat full size: {args.channels} x {' x '.join(map(str, args.volume_shape))} volumes, "
        f"{shapes['max_tokens']}-token reports, {shapes['model']['qformer']['num_queries']} queries; "
        f"traced on meta in bf16 at batch {args.batch}"
    )
    flops, memory, counts = measure(shapes, args.batch)
    print(f"\nforward + backward GFLOP per sample ({counts['params'] / 1e6:.1f} M parameters)")
    for name, value in flops.items():
        print(f"  {name:48}{value / 1e9:10.3f}")
    print(f"  recomputation adds {flops['checkpointed'] / flops['model'] - 1:.0%}")
    print("\nactivation memory per sample, bf16 (bytes kept for backward), MiB")
    for name, value in memory.items():
        print(f"  {name:60}{value / 2**20:10.1f}")
    operators = counts["operators"]
    print(f"non-view aten operators per step, any batch: {operators['no']} ({operators['yes']} checkpointed)")
    project(args, flops, memory, counts)


if __name__ == "__main__":
    main()
