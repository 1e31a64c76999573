"""Every model config: the vision backbones (registered by name in ``VISION``), the text encoder, the
Q-Former, local alignment, and the dual encoder that holds them.

Torch-free on purpose, like ``brainvlp.losses.config``: specs are parsed and validated without importing
torch or MONAI. Each backbone config names the class that implements it in its own file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from brainvlp.registry import Registry
from brainvlp.sections import SECTION_KEYS
from brainvlp.spec import DropoutFloat, NonNegativeInt, PositiveFloat, PositiveInt, SpecError

VISION = Registry("vision backbone")


@dataclass
class VisionConfig:
    """Base of every vision-backbone config; ``name`` selects the registered backbone."""

    registry: ClassVar[Registry] = VISION
    name: str


@VISION.register("densenet121", "brainvlp.models.densenet:DenseNetBackbone")
@dataclass
class DenseNetConfig(VisionConfig):
    name: str = "densenet121"
    init_features: PositiveInt = 64
    growth_rate: PositiveInt = 32
    block_config: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (6, 12, 24, 16)
    # brat's reference averages the last feature map over depth before flattening it into tokens.
    average_depth: bool = False


@VISION.register("resnet", "brainvlp.models.resnet:ResNetBackbone")
@dataclass
class ResNetConfig(VisionConfig):
    name: str = "resnet"
    block: Literal["basic", "bottleneck"] = "basic"
    # ResNet-18; ResNet-50 is bottleneck (3, 4, 6, 3). MONAI builds one block for a 0, so 0 is refused.
    layers: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (2, 2, 2, 2)
    widths: tuple[PositiveInt, PositiveInt, PositiveInt, PositiveInt] = (64, 128, 256, 512)
    stem_stride: PositiveInt = 2
    max_pool: bool = True


@VISION.register("resnet_attention", "brainvlp.models.resnet_attention:ResNetAttentionBackbone")
@dataclass
class ResNetAttentionConfig(ResNetConfig):
    name: str = "resnet_attention"
    num_heads: PositiveInt = 8  # 64 channels per head on ResNet-18's 512-wide last stage

    def validate(self, path: str) -> None:
        width = self.widths[-1] * (4 if self.block == "bottleneck" else 1)
        if width % self.num_heads:
            raise SpecError(
                f"{path}.num_heads", f"must divide the last stage's width {width}, found {self.num_heads}"
            )


@VISION.register("unet_encoder", "brainvlp.models.unet_encoder:UNetEncoderBackbone")
@dataclass
class UNetEncoderConfig(VisionConfig):
    name: str = "unet_encoder"
    # Channels per level; every level after the first halves each axis (5 levels: 16x downsampling).
    channels: tuple[PositiveInt, ...] = (16, 32, 64, 128, 256)
    dropout: DropoutFloat = 0.0

    def validate(self, path: str) -> None:
        if not self.channels:
            raise SpecError(f"{path}.channels", "needs one or more widths")


@VISION.register("vit", "brainvlp.models.vit:ViTBackbone")
@dataclass
class ViTConfig(VisionConfig):
    """ViT-B defaults (Dosovitskiy et al.); tests and CPU runs shrink every width."""

    name: str = "vit"
    # One size for all axes, or (D, H, W).
    patch_size: PositiveInt | tuple[PositiveInt, PositiveInt, PositiveInt] = 16
    hidden_size: PositiveInt = 768
    num_layers: PositiveInt = 12
    num_heads: PositiveInt = 12
    mlp_dim: PositiveInt = 3072
    qkv_bias: bool = False  # MONAI ViT's default
    dropout: DropoutFloat = 0.0

    @property
    def patch_dhw(self) -> tuple[int, int, int]:
        size = self.patch_size
        return (size, size, size) if isinstance(size, int) else tuple(size)

    def validate(self, path: str) -> None:
        if self.hidden_size % self.num_heads:
            raise SpecError(
                f"{path}.hidden_size",
                f"must be divisible by num_heads ({self.num_heads}), found {self.hidden_size}",
            )
        if self.hidden_size % 6:  # sin and cos of each of the three axes share the width
            raise SpecError(
                f"{path}.hidden_size",
                f"3D sin-cos positions need a multiple of 6, found {self.hidden_size}",
            )


@dataclass
class TextConfig:
    path: str = "builtin:minilm"
    pooling: Literal["mean", "cls"] = "mean"
    freeze: bool = False  # a frozen encoder runs in eval mode and its features can be cached per study
    # Encode these sections separately; the report embedding is the mean of their projected embeddings.
    sections: tuple[str, ...] = ()

    def validate(self, path: str) -> None:
        self.sections = tuple(self.sections)  # YAML gives lists
        unknown = [name for name in self.sections if name not in SECTION_KEYS]
        if unknown:
            raise SpecError(f"{path}.sections", f"{unknown} not among the report sections {SECTION_KEYS}")
        if len(set(self.sections)) != len(self.sections):
            raise SpecError(f"{path}.sections", f"names a section twice: {list(self.sections)}")


@dataclass
class QFormerConfig:
    num_queries: PositiveInt = 32
    cross_attention_every: PositiveInt = 2  # layers between cross-attentions to the image (a modulo)
    num_layers: PositiveInt | None = None  # None: as many as the text encoder has
    init_from_text: bool = True
    attention_dropout: DropoutFloat = 0.0


@dataclass
class LocalAlignConfig:
    dim: PositiveInt = 128  # E: the projected local width both attention modules work in
    num_heads: PositiveInt = 1
    dropout: DropoutFloat = 0.0

    def validate(self, path: str) -> None:
        if self.dim % self.num_heads:  # nn.MultiheadAttention splits the width evenly over the heads
            raise SpecError(f"{path}.num_heads", f"must divide dim {self.dim}, found {self.num_heads}")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=ResNetConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: PositiveInt = 128
    proj_hidden: PositiveInt | None = 256  # None: a linear projection; else Linear-ReLU-Linear (ConVIRT)
    # "flatten" keeps where a finding is (the whole last feature map feeds the head); "mean" pools it away.
    image_pool: Literal["mean", "flatten"] = "mean"
    # Separate rates: features of a frozen text encoder differ little between templated reports, and
    # dropout on them drowns those differences, while the image head needs it against overfitting.
    image_dropout: DropoutFloat = 0.0
    text_dropout: DropoutFloat = 0.0
    qformer: QFormerConfig | None = None  # set for brat, qformer_itc and their ablations
    local: LocalAlignConfig | None = None  # set for the pLGG triplet loss's local term
    # Recompute backbone stages and transformer layers in backward: less activation memory, ~1/3 more compute.
    activation_checkpointing: bool = False


@dataclass
class LanguageModelConfig:
    """The report writer: a Hugging Face causal LM from a local directory (Llama-3.2-1B in brat), or
    ``path: scratch``, a small Llama built here from the sizes below (CPU runs and tests)."""

    path: str = "scratch"
    # "train": a byte-level BPE trained on the training split's reports (brainvlp.models.language); "model":
    # the tokenizer saved with the LM at ``path``; else a local tokenizer directory.
    tokenizer: str = "train"
    vocab_size: PositiveInt = 2000  # of a trained tokenizer
    hidden_size: PositiveInt = 256  # the scratch model's sizes
    num_layers: PositiveInt = 4
    num_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 512
    max_positions: PositiveInt = 1024  # prefix + prompt + report tokens
    # "full" trains every weight, "lora" low-rank adapters only (peft), "frozen" none (only the bridge).
    finetune: Literal["full", "lora", "frozen"] = "full"
    lora_rank: PositiveInt = 16
    lora_alpha: PositiveFloat = 32.0
    lora_dropout: DropoutFloat = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # Llama's attention

    def validate(self, path: str) -> None:
        self.lora_targets = tuple(self.lora_targets)
        if self.path == "scratch" and self.tokenizer == "model":
            raise SpecError(f"{path}.tokenizer", "a scratch model has no tokenizer of its own: use 'train'")
        if self.hidden_size % self.num_heads:
            raise SpecError(f"{path}.num_heads", f"must divide hidden_size {self.hidden_size}")
        if self.finetune == "lora" and not self.lora_targets:
            raise SpecError(f"{path}.lora_targets", "LoRA needs one or more module names to adapt")


@dataclass
class DecodingConfig:
    """``generate()``'s settings: greedy with ``num_beams: 1``, else beam search."""

    num_beams: PositiveInt = 1
    max_new_tokens: PositiveInt = 256
    repetition_penalty: PositiveFloat = 1.0  # 1: none (CTRL's penalty, Keskar et al. 2019)
    no_repeat_ngram_size: NonNegativeInt = 0  # 0: off


@dataclass
class ReportGeneratorConfig:
    """brat's report generator (section 5): image features -> bridging MLP -> soft prefix tokens of a
    causal LM, then a text prompt, then the report."""

    # "tokens": the backbone's token map B x P x F; "views": the Q-Former's views B x Q x H (brat exports).
    inputs: Literal["tokens", "views"] = "tokens"
    bridge_hidden: PositiveInt | None = 1024  # None: a linear bridge; else Linear-GELU-Linear
    prompt: str = "Report:"
    language_model: LanguageModelConfig = field(default_factory=LanguageModelConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
