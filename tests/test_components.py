"""Registered components and their configs: every config names an implementation that builds, a loss's
``inputs`` and ``scoring`` are known from its config alone, specs parse without torch, and the loss base's
single-process mode and the embedder behave as training and evaluation expect."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from brainvlp.embed import Embedder
from brainvlp.losses.base import Loss
from brainvlp.losses.config import LOSSES, ClipLossConfig
from brainvlp.models.config import VISION, ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import parse
from brainvlp.train.task import PretrainTask


@pytest.mark.parametrize("name", LOSSES.names)
def test_every_loss_config_builds_its_loss_with_the_config_metadata(name: str) -> None:
    config = LOSSES.config_class(name)()
    loss = LOSSES.build(config)
    assert isinstance(loss, Loss)
    assert loss.inputs == config.inputs and loss.scoring == config.scoring
    assert config.inputs and isinstance(config.scoring, str)


@pytest.mark.parametrize("name", VISION.names)
def test_every_backbone_config_names_an_nn_module(name: str) -> None:
    assert issubclass(VISION.implementation(name), torch.nn.Module)


def test_specs_parse_and_validate_without_importing_torch_ray_or_monai() -> None:
    """What keeps ``brainvlp validate`` fast: config modules never import the libraries a run needs."""
    code = (
        "import sys\n"
        "from brainvlp.pipeline import load_spec\n"
        "load_spec('configs/quickstart.yaml')\n"
        "heavy = ('torch', 'ray', 'monai', 'transformers', 'deepspeed')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_single_process_mode_computes_on_the_local_batch_and_restores_the_placement() -> None:
    def doubling_gather(features: torch.Tensor) -> torch.Tensor:  # a fake second worker with the same rows
        return torch.cat([features, features])

    loss = LOSSES.build(ClipLossConfig(), rank=1, world_size=2, gather=doubling_gather)
    x = torch.randn(3, 4)
    with loss.single_process():
        assert (loss.rank, loss.world_size) == (0, 1)
        assert torch.equal(loss.gather(x), x)
        alone = loss({"image_emb": x, "text_emb": x})["contrastive_loss"]
    assert (loss.rank, loss.world_size) == (1, 2) and loss.gather(x).shape == (6, 4)
    reference = LOSSES.build(ClipLossConfig())({"image_emb": x, "text_emb": x})["contrastive_loss"]
    torch.testing.assert_close(alone, reference)


def test_embedder_represents_a_batch_as_the_pretraining_task_does_without_augmentation() -> None:
    torch.manual_seed(0)
    config = {
        "vision": {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False},
        "text": {"path": "builtin:tiny"},
        "embed_dim": 8,
    }
    model = DualEncoder(parse(ModelConfig, config, "model"), in_channels=1, volume_shape=(16, 32, 32))
    batch = {
        "study_id": ["a", "b"],
        "volume": torch.randint(0, 800, (2, 1, 16, 32, 32), dtype=torch.int16),
        "input_ids": torch.randint(5, 100, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    task = PretrainTask(model, LOSSES.build(ClipLossConfig()), scale_max=800, augment=None).eval()
    embedder = Embedder(model, scale_max=800).eval()
    needs = frozenset({"global"})
    with torch.no_grad():
        want, got = task.represent(batch, needs), embedder.represent(batch, needs)
    assert want.keys() == got.keys() == {"image_emb", "text_emb"}
    for key in want:
        torch.testing.assert_close(got[key], want[key])
