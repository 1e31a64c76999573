"""Backbones give token maps, the dual encoder gives unit embeddings, and exports reload exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from brainvlp.export import load_export, save_export
from brainvlp.models.config import VISION, ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse

TINY = {
    "vision": {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False},
    "text": {"path": "builtin:tiny"},
    "embed_dim": 8,
    "proj_hidden": 16,
}
SMALL_DENSENET = {"name": "densenet121", "init_features": 8, "growth_rate": 4, "block_config": [1, 1, 1, 1]}


@pytest.mark.parametrize(
    ("vision", "shape", "tokens"),
    [
        (TINY["vision"], (16, 32, 32), (4, 16)),
        (SMALL_DENSENET, (64, 64, 64), (8, 8)),  # DenseNet-121 downsamples 32x: 2 x 2 x 2 positions
        ({**SMALL_DENSENET, "average_depth": True}, (64, 64, 64), (4, 8)),  # depth averaged away
    ],
)  # fmt: skip
def test_backbones_return_token_maps(vision: dict, shape: tuple[int, ...], tokens: tuple[int, int]) -> None:
    config = parse(ModelConfig, {**TINY, "vision": vision}).vision
    backbone = VISION.build(config, in_channels=2)
    out = backbone(torch.zeros(2, 2, *shape))
    assert out.shape == (2, *tokens) and backbone.out_dim == tokens[1]


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_embeddings_are_unit_norm(pool: str) -> None:
    model = DualEncoder(
        parse(ModelConfig, {**TINY, "image_pool": pool}), in_channels=2, volume_shape=(16, 32, 32)
    )
    image = model.encode_image(torch.rand(3, 2, 16, 32, 32))
    text = model.encode_text(torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0], [2, 3, 0, 0]]), torch.tensor(
        [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]))  # fmt: skip
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))


def test_frozen_text_encoder_has_no_trainable_weights_and_stays_in_eval() -> None:
    model = DualEncoder(parse(ModelConfig, {**TINY, "text": {"path": "builtin:tiny", "freeze": True}}),
                        in_channels=1, volume_shape=(16, 32, 32))  # fmt: skip
    model.train()
    assert not any(p.requires_grad for p in model.text.parameters())
    assert not model.text.model.training


def test_export_round_trip(tmp_path: Path) -> None:
    config = parse(ModelConfig, TINY)
    model = DualEncoder(config, in_channels=2, volume_shape=(16, 32, 32)).eval()
    meta = {"model": config, "in_channels": 2, "volume_shape": [16, 32, 32], "scale_max": 800}
    save_export(tmp_path, model.state_dict(), meta)
    loaded, loaded_meta = load_export(tmp_path)
    volume = torch.rand(2, 2, 16, 32, 32)
    torch.testing.assert_close(loaded.encode_image(volume), model.encode_image(volume))
    assert loaded_meta["scale_max"] == 800
    with pytest.raises(FileNotFoundError, match="not a brainvlp export"):
        load_export(tmp_path / "missing")


def test_text_encoder_gets_its_own_learning_rate_and_norms_no_weight_decay() -> None:
    from brainvlp.train.config import TrainConfig
    from brainvlp.train.engine import param_groups

    config = parse(ModelConfig, {**TINY, "qformer": {"num_queries": 2}}, "model")
    model = DualEncoder(config, in_channels=2, volume_shape=(16, 32, 32))
    groups = param_groups(model, TrainConfig(lr=5e-4, text_lr=5e-5, weight_decay=0.05))
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(p.requires_grad for p in model.parameters())  # each trainable once
    assert {i for i, g in by_id.items() if g["lr"] == 5e-5} == {id(p) for p in model.text.model.parameters()}
    # The Q-Former starts from the text encoder's weights but trains at the main rate, as in brat.
    assert all(by_id[id(p)]["lr"] == 5e-4 for p in model.qformer.parameters())
    for name, param in model.named_parameters():
        decayed = by_id[id(param)]["weight_decay"] > 0
        exempt = param.ndim < 2 or any(k in name for k in ("embeddings", "query_tokens", "LayerNorm", "norm"))
        assert decayed != exempt, name
    frozen = parse(ModelConfig, {**TINY, "text": {"path": "builtin:tiny", "freeze": True}}, "model")
    groups = param_groups(DualEncoder(frozen, in_channels=2, volume_shape=(16, 32, 32)), TrainConfig())
    assert {g["lr"] for g in groups} == {TrainConfig().lr}
