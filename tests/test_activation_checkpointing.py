"""Activation checkpointing (``model.activation_checkpointing``) changes memory, never the numbers: the
same loss, gradients and batch-norm statistics as without it, in float64, on a tiny brat model."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from brainvlp.losses.config import LOSSES, BratLossConfig
from brainvlp.models.config import ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse
from brainvlp.train.task import PretrainTask

SHAPE = (32, 32, 64)  # DenseNet downsamples 32x: 1 x 1 x 2 positions
DENSENET = {"name": "densenet121", "init_features": 8, "growth_rate": 4, "block_config": [2, 2, 1, 1]}
RESNET = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": True}
VIT = {"name": "vit", "patch_size": 16, "hidden_size": 12, "num_layers": 2, "num_heads": 2, "mlp_dim": 16}
RESNET_ATTENTION = {**RESNET, "name": "resnet_attention", "num_heads": 2}
UNET = {"name": "unet_encoder", "channels": [4, 8, 8, 16]}
BACKBONES = {"densenet": DENSENET, "resnet": RESNET, "resnet_attention": RESNET_ATTENTION, "vit": VIT,
             "unet": UNET}  # fmt: skip


def _task(vision: dict, checkpointing: bool) -> PretrainTask:
    """A tiny brat model (Q-Former from the tiny BERT, ITG on) in float64, the same weights every call."""
    torch.manual_seed(0)
    config = {
        "vision": vision,
        "text": {"path": "builtin:tiny"},
        "embed_dim": 8,
        "proj_hidden": None,
        "qformer": {"num_queries": 4},
        "activation_checkpointing": checkpointing,
    }
    model = DualEncoder(parse(ModelConfig, config, "model"), in_channels=1, volume_shape=SHAPE)
    task = PretrainTask(model, LOSSES.build(BratLossConfig(max_sentences=3)), scale_max=800, augment=None)
    return task.double()


def _batch(size: int = 2) -> dict:
    gen = torch.Generator().manual_seed(1)
    spans = torch.tensor([[1, 4], [4, 7], [7, 9]]).expand(size, 3, 2).clone()
    sentence_mask = torch.ones(size, 3, dtype=torch.bool)
    sentence_mask[0, 2] = False
    spans[0, 2] = 0
    return {
        "study_id": [f"s{b}" for b in range(size)],
        "volume": torch.randint(0, 800, (size, 1, *SHAPE), generator=gen, dtype=torch.int16),
        "input_ids": torch.randint(5, 100, (size, 10), generator=gen),
        "attention_mask": torch.ones(size, 10, dtype=torch.long),
        "spans": spans,
        "sentence_mask": sentence_mask,
    }


def _step(task: PretrainTask, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    task.train()
    task.zero_grad(set_to_none=True)
    torch.manual_seed(2)  # the same dropout masks in both runs (checkpoint replays the RNG state)
    loss = task(batch)["loss"]
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in task.named_parameters()}


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_same_loss_gradients_and_statistics_with_and_without_checkpointing(backbone: str) -> None:
    plain, checked = _task(BACKBONES[backbone], False), _task(BACKBONES[backbone], True)
    batch = _batch()
    plain_loss, plain_grads = _step(plain, batch)
    checked_loss, checked_grads = _step(checked, batch)
    torch.testing.assert_close(checked_loss, plain_loss, rtol=1e-12, atol=1e-12)
    assert plain_grads.keys() == checked_grads.keys()
    for name, grad in plain_grads.items():
        if grad is None:
            assert checked_grads[name] is None, name
        else:
            torch.testing.assert_close(checked_grads[name], grad, rtol=1e-9, atol=1e-12, msg=name)
    assert sum(g is not None and g.abs().sum() > 0 for g in plain_grads.values()) > 10
    # Batch norm updates its running statistics once per step, not again when backward recomputes.
    plain_buffers, checked_buffers = dict(plain.named_buffers()), dict(checked.named_buffers())
    for name, buffer in plain_buffers.items():
        torch.testing.assert_close(checked_buffers[name], buffer, rtol=0, atol=0, msg=name)


def _saved_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes autograd keeps for backward in ``forward()``; checkpointed regions keep only their inputs."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        forward().sum().backward()
    return total


@pytest.mark.parametrize("backbone", ["densenet", "resnet", "vit"])
def test_checkpointing_keeps_fewer_activations_for_backward(backbone: str) -> None:
    volume = torch.rand(2, 1, *SHAPE, dtype=torch.float64)
    vision = {**BACKBONES[backbone], "patch_size": 8} if backbone == "vit" else BACKBONES[backbone]
    plain, checked = (_task(vision, flag).model.train() for flag in (False, True))
    checked_bytes, plain_bytes = (_saved_bytes(lambda m=m: m.vision(volume)) for m in (checked, plain))
    assert checked_bytes < 0.5 * plain_bytes, (checked_bytes, plain_bytes)
    tokens = plain.vision(volume).detach()
    checked_bytes, plain_bytes = (_saved_bytes(lambda m=m: m.qformer(tokens)[0]) for m in (checked, plain))
    assert checked_bytes < 0.5 * plain_bytes, (checked_bytes, plain_bytes)
    ids, mask = _batch()["input_ids"], _batch()["attention_mask"]
    checked_bytes, plain_bytes = (_saved_bytes(lambda m=m: m.text(ids, mask)) for m in (checked, plain))
    assert checked_bytes < 0.5 * plain_bytes, (checked_bytes, plain_bytes)


def test_checkpointing_is_off_in_eval_and_without_gradients() -> None:
    plain, checked = _task(DENSENET, False).eval(), _task(DENSENET, True).eval()
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(checked(batch)["loss"], plain(batch)["loss"], rtol=0, atol=0)
        volume = batch["volume"].double() / 800
        tokens = checked.model.vision(volume)
        torch.testing.assert_close(checked.model.encode_views(tokens)[0], plain.model.encode_views(tokens)[0])
        checked.train()  # training mode under no_grad (e.g. a cached forward) runs without checkpoints
        assert checked.model.vision(volume).shape == tokens.shape


def test_state_dict_names_do_not_change() -> None:
    """Exports of a checkpointed run load into a plain model (and back)."""
    for vision in BACKBONES.values():
        plain, checked = _task(vision, False), _task(vision, True)
        assert list(plain.state_dict()) == list(checked.state_dict())
        checked.load_state_dict(plain.state_dict())
