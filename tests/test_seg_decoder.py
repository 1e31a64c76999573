"""Segmentation: every registered backbone as a U-Net encoder (shapes, skip wiring, frozen stages, loaded
weights) and the DynUNet baseline. Tiny widths on 32^3 volumes: CPU only, seconds."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

from brainvlp.models.classifier import backbone_stages
from brainvlp.models.config import VISION, VisionConfig
from brainvlp.models.segmenter import (
    UNetSegmenter,
    build_dynunet,
    build_segmenter,
    dynunet_plan,
    stage_features,
    vit_tap_blocks,
)
from brainvlp.spec import parse

IN_CHANNELS, REGIONS = 2, 3
DECODER = {"feature_size": 4}  # the full-resolution stem and ViT pyramid: 4, 8, 16 channels
TINY_RESNET = {"layers": [1, 1, 1, 1], "widths": [4, 8, 8, 8], "max_pool": False}  # 16x downsampling
TINY_VIT = {
    "name": "vit",
    "patch_size": 16,
    "hidden_size": 12,
    "num_layers": 2,
    "num_heads": 2,
    "mlp_dim": 24,
}
# One tiny config per registered backbone (test_every_backbone_has_a_case keeps it so), plus per-axis
# patches, each with its total stride S: volumes are S^3 (a multiple) and (S-2) x (S-4) x S (not one).
CASES = {
    "densenet121": (
        {"name": "densenet121", "init_features": 4, "growth_rate": 4, "block_config": [1, 1, 1, 1]},
        32,
    ),
    "resnet": ({"name": "resnet", **TINY_RESNET}, 16),
    "resnet_attention": ({"name": "resnet_attention", **TINY_RESNET, "num_heads": 2}, 16),
    "unet_encoder": ({"name": "unet_encoder", "channels": [4, 4, 8]}, 8),  # 4x, on grids >= 2 positions
    "vit": (TINY_VIT, 16),  # UNETR's three pyramid levels (strides 2, 4, 8)
    "vit_anisotropic": ({**TINY_VIT, "patch_size": [8, 16, 16]}, 16),
}


def shapes(case: str) -> list[tuple[int, int, int]]:
    stride = CASES[case][1]
    return [(stride,) * 3, (stride - 2, stride - 4, stride)]


def vision(case: str) -> VisionConfig:
    return parse(VisionConfig, CASES[case][0], "vision")


def build(case: str, seed: int = 0, **kwargs: object) -> UNetSegmenter:
    torch.manual_seed(seed)
    return build_segmenter(vision(case), IN_CHANNELS, REGIONS, **DECODER, **kwargs)


@functools.cache
def shared_model(case: str) -> UNetSegmenter:
    """One unfrozen model per case for the tests that only run it."""
    return build(case)


def volume(shape: tuple[int, int, int], batch: int = 1, seed: int = 1) -> torch.Tensor:
    """Train-mode tests use batch 2: batch norm needs two values per channel on a 1^3 last grid."""
    return torch.rand(batch, IN_CHANNELS, *shape, generator=torch.Generator().manual_seed(seed))


def leaves(stage: nn.Module) -> list[nn.Module]:
    """A stage's innermost modules (``backbone_stages`` may wrap a stage in a fresh container)."""
    return [module for module in stage.modules() if not any(True for _ in module.children())]


def test_every_backbone_has_a_case() -> None:
    assert set(VISION.names) <= {config["name"] for config, _ in CASES.values()}


@pytest.mark.parametrize("case", CASES)
def test_output_matches_input_shape_and_stage_grids(case: str) -> None:
    model = shared_model(case).eval()  # batch 1 (train mode: test_frozen_stages...)
    encoder = model.encoder
    assert len(encoder.channels) == len(encoder.strides) >= 2
    for shape in shapes(case):
        with torch.no_grad():
            assert model(volume(shape)).shape == (1, REGIONS, *shape)
    # Each stage at its stride on the padded (here exact) grid, as wide as the decoder expects.
    with torch.no_grad():
        fmaps = encoder(volume(shapes(case)[0]))
    assert [f.shape[1] for f in fmaps] == encoder.channels
    for fmap, stride in zip(fmaps, encoder.strides, strict=True):
        assert fmap.shape[2:] == tuple(size // s for size, s in zip(shapes(case)[0], stride, strict=True))
    assert all(fine <= deep for fine, deep in zip(encoder.strides, encoder.strides[1:], strict=False))


@pytest.mark.parametrize("case", CASES)
def test_every_skip_reaches_the_output(case: str) -> None:
    model = shared_model(case).eval()
    x = volume(shapes(case)[1])
    with torch.no_grad():
        base = model(x)
    skips = [(model.encoder, i) for i in range(len(model.encoder.channels))]
    skips += [(model.stem, None)] if model.stem is not None else []
    assert len(model.ups) == len(skips) - 1  # one up block per skip below the bottleneck
    for module, index in skips:

        def perturb(_m: nn.Module, _args: tuple, out: object, index: int | None = index) -> object:
            # Noise, not a constant: instance norm after the skip's convolution would remove a shift.
            if index is None:
                return out + torch.randn_like(out)
            return [f + torch.randn_like(f) if i == index else f for i, f in enumerate(out)]

        handle = module.register_forward_hook(perturb)
        try:
            with torch.no_grad():
                changed = model(x)
        finally:
            handle.remove()
        assert not torch.allclose(changed, base), f"skip {index} does not reach the output"
    model.train()


def _batch_norm_state(modules: list[nn.Module]) -> list[torch.Tensor]:
    return [
        buffer.clone()
        for module in modules
        for norm in module.modules()
        if isinstance(norm, nn.modules.batchnorm._BatchNorm)
        for buffer in (norm.running_mean, norm.running_var)
    ]


@pytest.mark.parametrize("case", CASES)
def test_frozen_stages_get_no_gradient_and_keep_statistics(case: str) -> None:
    model = build(case, freeze_stages=2)
    stages = backbone_stages(model.encoder.backbone)
    frozen, trained = stages[:2], stages[2:]
    before = _batch_norm_state(frozen)
    assert before or case.startswith(("unet", "vit"))  # instance and layer norms keep no statistics
    model.eval().train()  # train() must leave the frozen stages in eval mode
    assert not any(m.training for stage in frozen for m in leaves(stage))
    assert all(m.training for stage in trained for m in leaves(stage))
    out = model(volume(shapes(case)[1], batch=2))
    assert out.shape == (2, REGIONS, *shapes(case)[1])
    (out * torch.randn_like(out)).sum().backward()

    for parameter in (p for stage in frozen for p in stage.parameters()):
        assert not parameter.requires_grad and parameter.grad is None
    for stage in trained:
        grads = [p.grad for p in stage.parameters()]
        if grads:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
    backbone_ids = {id(p) for p in model.encoder.backbone.parameters()}
    decoder = [p for p in model.parameters() if id(p) not in backbone_ids]
    assert decoder and all(p.grad is not None for p in decoder)
    assert sum(p.grad.abs().sum() for p in decoder) > 0
    for old, new in zip(before, _batch_norm_state(frozen), strict=True):
        torch.testing.assert_close(new, old, rtol=0, atol=0)


def test_impossible_frozen_stage_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot freeze 9 stages"):
        build("unet_encoder", freeze_stages=9)
    with pytest.raises(ValueError, match="0 or more"):
        build("unet_encoder", freeze_stages=-1)


@pytest.mark.parametrize("case", CASES)
def test_loaded_encoder_reproduces_the_source_backbone(case: str) -> None:
    torch.manual_seed(5)
    source = VISION.build(vision(case), in_channels=IN_CHANNELS)
    for norm in source.modules():  # statistics unlike a fresh build's, so buffers must load too
        if isinstance(norm, nn.modules.batchnorm._BatchNorm):
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    model = build(case, seed=6, state_dict=source.state_dict())
    source.eval()
    model.eval()
    x = volume(shapes(case)[0])  # the bare backbone takes only multiples of its stride
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.backbone(x), source(x), rtol=0, atol=0)
        for ours, theirs in zip(
            stage_features(model.encoder.backbone, x), stage_features(source, x), strict=True
        ):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("case", ["resnet", "densenet121"])
def test_activation_checkpointing_keeps_gradients(case: str) -> None:
    plain = build(case)
    checkpointed = copy.deepcopy(plain)
    checkpointed.encoder.backbone.activation_checkpointing = True
    shape = shapes(case)[0]
    x, weights = volume(shape, batch=2), torch.randn(2, REGIONS, *shape)
    for model in (plain, checkpointed):
        (model(x) * weights).sum().backward()
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, msg=name)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="no stage taps for Conv3d"):
        stage_features(nn.Conv3d(1, 1, 1), torch.zeros(1, 1, 4, 4, 4))


def test_vit_taps_follow_unetr() -> None:
    assert vit_tap_blocks(12, 4) == [3, 6, 9, 12]
    assert vit_tap_blocks(2, 4) == [1, 1, 2, 2]  # fewer blocks than taps: blocks are shared


def test_dynunet_plan_halves_axes_of_8_or_more() -> None:
    assert dynunet_plan((128, 128, 128)) == [(1, 1, 1)] + [(2, 2, 2)] * 5  # at most 5 halvings
    assert dynunet_plan((30, 28, 32)) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 1, 2)]
    assert dynunet_plan((16, 64, 64)) == [(1, 1, 1), (2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 2, 2)]
    with pytest.raises(ValueError, match="too small"):
        build_dynunet(IN_CHANNELS, REGIONS, (4, 6, 7))


@pytest.mark.parametrize("shape", [(16, 16, 16), (15, 13, 16)])  # strides (2, 2, 2), (1, 1, 2): pads
def test_dynunet_output_shape(shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = build_dynunet(IN_CHANNELS, REGIONS, shape, base_filters=4)
    out = net(volume(shape, batch=2))  # train mode: one tensor, no deep-supervision heads
    assert isinstance(out, torch.Tensor) and out.shape == (2, REGIONS, *shape)
    out.sum().backward()
