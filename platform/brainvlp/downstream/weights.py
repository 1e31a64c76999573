"""How each downstream model's initial backbone weights are found: a pretrain export, an arbitrary state
dict (a LAVIS checkpoint through its adapter), or none."""

from __future__ import annotations

from typing import Any

import torch

from brainvlp.downstream.config import ModelEntry
from brainvlp.errors import UserError
from brainvlp.models.config import VisionConfig
from brainvlp.spec import parse


def resolve_init(entry: ModelEntry, in_channels: int, volume_shape: tuple[int, ...]) -> dict[str, Any]:
    """The entry's backbone config, pooling and initial backbone state dict (None: random init)."""
    if entry.init == "scratch":
        return {"vision": entry.vision, "image_pool": entry.image_pool or "mean", "state_dict": None}
    if entry.init == "state_dict":
        return {
            "vision": entry.vision,
            "image_pool": entry.image_pool or "mean",
            "state_dict": _read_state_dict(entry),
        }
    from brainvlp.export import load_export

    model, meta = load_export(entry.path)
    shape = (meta["in_channels"], *meta["volume_shape"])
    if shape != (in_channels, *volume_shape):
        raise UserError(
            f"model {entry.name!r}: export {entry.path} takes C x D x H x W = {shape}, the shards hold "
            f"{(in_channels, *volume_shape)}; ingest with the export's sequences and volume shape"
        )
    return {
        "vision": parse(VisionConfig, meta["model"]["vision"], f"{entry.path}: model.vision"),
        "image_pool": entry.image_pool or meta["model"].get("image_pool", "mean"),
        "state_dict": model.vision.state_dict(),
    }


def _read_state_dict(entry: ModelEntry) -> dict[str, torch.Tensor]:
    from brainvlp.models.lavis import lavis_vision_state, read_checkpoint

    state = read_checkpoint(entry.path)
    if entry.adapter == "lavis":
        picked = lavis_vision_state(state)
    else:
        picked = {k[len(entry.prefix) :]: v for k, v in state.items() if k.startswith(entry.prefix)}
    if not picked:
        raise UserError(
            f"model {entry.name!r}: no backbone weights in {entry.path} (adapter {entry.adapter!r}, prefix "
            f"{entry.prefix!r}; the file's first names: {', '.join(list(state)[:3])})"
        )
    return picked
