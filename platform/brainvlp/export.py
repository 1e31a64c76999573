"""Exported encoders: ``model.safetensors`` + ``model.json``, loadable without Ray or DeepSpeed.

Plain PyTorch::

    from brainvlp.export import load_export
    model, meta = load_export("runs/quickstart/pretrain/export")
    image_emb = model.encode_image(volume_BCDHW.float() / meta["scale_max"])
    text_emb = model.encode_text(input_ids_BT, attention_mask_BT)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from brainvlp.errors import MissingInputError
from brainvlp.models.config import ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse, to_plain

WEIGHTS, META = "model.safetensors", "model.json"


def save_export(directory: str | Path, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write weights (float32, contiguous) and the metadata needed to rebuild the model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(directory / WEIGHTS))
    (directory / META).write_text(json.dumps(to_plain(meta), indent=2))
    return directory


def load_export(directory: str | Path) -> tuple[DualEncoder, dict[str, Any]]:
    """Rebuild the model an export describes and load its weights (strictly)."""
    directory = Path(directory)
    if not (directory / META).exists():
        raise MissingInputError(
            f"{directory} is not a brainvlp export (no {META}); expected a pretrain export/"
        )
    meta = json.loads((directory / META).read_text())
    config = parse(ModelConfig, meta["model"], "model")
    model = DualEncoder(config, in_channels=meta["in_channels"], volume_shape=tuple(meta["volume_shape"]))
    model.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    return model.eval(), meta
