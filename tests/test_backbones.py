"""ViT, U-Net encoder and ResNet + self-attention: token maps, gradients, attention maps, spec errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, ViT

from brainvlp.models.config import VISION, ModelConfig
from brainvlp.models.dual_encoder import DualEncoder
from brainvlp.spec import SpecError, parse

SHAPE = (16, 32, 32)
TEXT = {"text": {"path": "builtin:tiny"}, "embed_dim": 8, "proj_hidden": 16}
VIT = {"name": "vit", "patch_size": 8, "hidden_size": 12, "num_layers": 1, "num_heads": 2, "mlp_dim": 24}
UNET = {"name": "unet_encoder", "channels": [2, 4, 8, 16]}
RESNET_ATTENTION = {
    "name": "resnet_attention", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16], "max_pool": False,
    "num_heads": 2,
}  # fmt: skip
# Each tiny backbone on a 16 x 32 x 32 volume with its expected (P, F).
CASES = [
    (VIT, (2 * 4 * 4, 12)),  # 8^3 patches
    ({**VIT, "patch_size": [8, 16, 16]}, (2 * 2 * 2, 12)),  # per-axis patches
    (UNET, (2 * 4 * 4, 16)),  # 3 max-pools: 8x downsampling
    ({"name": "unet_encoder"}, (1 * 2 * 2, 256)),  # the default 5 levels: 16x
    (RESNET_ATTENTION, (1 * 2 * 2, 16)),  # stem stride 2, then 3 strided stages
]


def build(vision: dict, in_channels: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return VISION.build(
        parse(ModelConfig, {**TEXT, "vision": vision}, "model").vision, in_channels=in_channels
    )


@pytest.mark.parametrize(("vision", "tokens"), CASES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_token_map_shape(vision: dict, tokens: tuple[int, int], in_channels: int) -> None:
    backbone = build(vision, in_channels)
    out = backbone(torch.rand(2, in_channels, *SHAPE))
    assert out.shape == (2, *tokens) and backbone.out_dim == tokens[1]


@pytest.mark.parametrize("vision", [VIT, UNET, RESNET_ATTENTION], ids=["vit", "unet", "resnet_attention"])
def test_gradients_reach_first_layer_and_eval_is_deterministic(vision: dict) -> None:
    backbone = build(vision)
    volume = torch.rand(2, 2, *SHAPE)
    out = backbone(volume)
    # A random readout: a plain sum of squares is constant after the ViT's final LayerNorm.
    (out * torch.randn_like(out)).sum().backward()
    first = next(backbone.parameters())
    assert first.dim() == 5 and first.grad is not None and first.grad.abs().sum() > 0  # the first conv
    backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone(volume), backbone(volume), rtol=0, atol=0)


def test_vit_matches_monai_vit_with_sincos_positions() -> None:
    ours = build(VIT).eval()
    theirs = ViT(in_channels=2, img_size=SHAPE, patch_size=8, hidden_size=12, mlp_dim=24, num_layers=1,
                 num_heads=2, pos_embed_type="sincos").eval()  # fmt: skip
    renamed = {
        ("patch_embedding." if k.startswith("patch_embeddings") else "") + k: v
        for k, v in ours.state_dict().items()
    }
    missing, unexpected = theirs.load_state_dict(renamed, strict=False)
    assert missing == ["patch_embedding.position_embeddings"] and not unexpected  # fixed, not learned
    volume = torch.rand(2, 2, *SHAPE)
    with torch.no_grad():
        torch.testing.assert_close(ours(volume), theirs(volume)[0])


def test_unet_encoder_loads_basic_unet_encoder_weights() -> None:
    backbone = build({"name": "unet_encoder", "channels": [2, 2, 4, 8, 16]})
    unet = BasicUNet(spatial_dims=3, in_channels=2, out_channels=1, features=(2, 2, 4, 8, 16, 2))
    encoder = {k: v for k, v in unet.state_dict().items() if k.startswith(("conv_0.", "down_"))}
    backbone.encoder.load_state_dict(encoder, strict=True)


def test_resnet_attention_exposes_a_row_stochastic_map() -> None:
    backbone = build(RESNET_ATTENTION).eval()
    assert backbone.last_attention_BPP is None
    with torch.no_grad():
        tokens = backbone(torch.rand(3, 2, *SHAPE))
    attention = backbone.last_attention_BPP
    assert attention.shape == (3, 4, 4) and backbone.last_grid_dhw == (1, 2, 2)
    assert not attention.requires_grad
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, 4))
    assert tokens.shape == (3, 4, 16)


@pytest.mark.parametrize("vision", [VIT, UNET, RESNET_ATTENTION], ids=["vit", "unet", "resnet_attention"])
def test_dual_encoder_gives_unit_embeddings(vision: dict) -> None:
    model = DualEncoder(parse(ModelConfig, {**TEXT, "vision": vision}, "model"), in_channels=2,
                        volume_shape=SHAPE)  # fmt: skip
    image = model.encode_image(torch.rand(3, 2, *SHAPE))
    assert image.shape == (3, 8)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize(
    ("vision", "field"),
    [
        ({**VIT, "num_heads": 5}, "model.vision.hidden_size"),
        ({**VIT, "hidden_size": 8, "num_heads": 2}, "model.vision.hidden_size"),  # sin-cos: multiple of 6
        ({**VIT, "patch_size": [8, 0, 8]}, "model.vision.patch_size"),
        ({**VIT, "patch_size": [8, 8]}, "model.vision.patch_size"),
        ({"name": "unet_encoder", "channels": []}, "model.vision.channels"),
        ({**RESNET_ATTENTION, "num_heads": 3}, "model.vision.num_heads"),
    ],
)  # fmt: skip
def test_bad_configs_name_the_field(vision: dict, field: str) -> None:
    with pytest.raises(SpecError, match=field):
        parse(ModelConfig, {**TEXT, "vision": vision}, "model")


@pytest.mark.parametrize(
    ("vision", "shape", "field"),
    [
        ({**VIT, "patch_size": 16}, (20, 32, 32), "vision.patch_size"),
        ({"name": "unet_encoder"}, (8, 32, 32), "vision.channels"),  # 16x downsampling empties D
    ],
)
def test_volume_the_backbone_cannot_take_fails_at_build(vision: dict, shape: tuple, field: str) -> None:
    config = parse(ModelConfig, {**TEXT, "vision": vision}, "model")
    with pytest.raises(ValueError, match=field):
        DualEncoder(config, in_channels=1, volume_shape=shape)
