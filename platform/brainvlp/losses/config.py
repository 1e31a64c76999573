"""Every loss's config, registered by name in ``LOSSES``, with what the loss reads and how it scores.

Torch-free on purpose: a spec is validated, and the trainer and dev evaluation learn a loss's ``inputs``
and ``scoring`` from its config, without building (or importing) the loss. Each config names the class
that implements it in its own file under ``brainvlp.losses``.

``inputs``: the representations the loss reads (see ``brainvlp.losses.scoring.NEEDS``; plus ``"itg"`` for
generation logits). ``scoring``: the image-report score that retrieval evaluation must use for this method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from brainvlp.registry import Registry
from brainvlp.spec import FractionFloat, NonNegativeFloat, PositiveFloat, PositiveInt, Range

LOSSES = Registry("loss")

# A softmax temperature: 0 divides by zero, and at 10 and above the logits are flat enough to learn nothing.
Temperature = Annotated[float, Range(gt=0, lt=10)]
Diversity = Literal["dpp", "repulsion", "none"]


@dataclass
class LossConfig:
    """Base of every loss config; ``name`` selects the registered loss."""

    registry: ClassVar[Registry] = LOSSES
    scoring: ClassVar[str] = "dot"
    inputs: ClassVar[frozenset[str]] = frozenset({"global"})
    name: str


@LOSSES.register("clip", "brainvlp.losses.clip:ClipLoss")
@dataclass
class ClipLossConfig(LossConfig):
    name: str = "clip"
    temperature: Temperature = 0.07  # initial; CLIP 0.07, brat reference and ConVIRT 0.1
    learnable_temperature: bool = True
    max_logit_scale: PositiveFloat = 100.0  # CLIP clamps exp(t) at 100 for stability (its log is taken)


@LOSSES.register("convirt", "brainvlp.losses.convirt:ConvirtLoss")
@dataclass
class ConvirtLossConfig(LossConfig):
    name: str = "convirt"
    temperature: Temperature = 0.1
    image_to_text_weight: FractionFloat = 0.75  # ConVIRT's lambda; the text -> image term gets 1 - lambda


@LOSSES.register("convirt_sections", "brainvlp.losses.convirt_sections:ConvirtSectionsLoss")
@dataclass
class ConvirtSectionsLossConfig(ConvirtLossConfig):
    inputs: ClassVar[frozenset[str]] = frozenset({"global", "sections"})
    name: str = "convirt_sections"
    findings_to_impression_weight: FractionFloat = 0.75  # alpha; impression -> findings gets 1 - alpha
    local_weight: FractionFloat = 0.75  # lambda of the total; the global term gets 1 - lambda


@LOSSES.register("brat", "brainvlp.losses.brat:BratLoss")
@dataclass
class BratLossConfig(LossConfig):
    name: str = "brat"
    temperature: Temperature = 0.1  # brat's reference initialises the learnable temperature at 0.1
    learnable_temperature: bool = True
    matching: Literal["pva", "colbert"] = "pva"
    diversity: Diversity = "dpp"
    diversity_weight: NonNegativeFloat = 1.0
    dpp_eps: NonNegativeFloat = 1e-6
    itg_weight: NonNegativeFloat = 1.0  # 0 turns image-grounded text generation off
    # The ingest's report.max_sentences: sentences are padded to it for gathering.
    max_sentences: PositiveInt = 20

    @property  # type: ignore[override]
    def scoring(self) -> str:
        return self.matching

    @property  # type: ignore[override]
    def inputs(self) -> frozenset[str]:
        return frozenset({"views", "sentences"} | ({"itg"} if self.itg_weight > 0 else set()))


@LOSSES.register("qformer_itc", "brainvlp.losses.qformer_itc:QFormerItcLoss")
@dataclass
class QFormerItcLossConfig(LossConfig):
    scoring: ClassVar[str] = "max_query"
    inputs: ClassVar[frozenset[str]] = frozenset({"views", "report"})
    name: str = "qformer_itc"
    temperature: Temperature = 0.1
    learnable_temperature: bool = True
    diversity: Diversity = "none"
    diversity_weight: NonNegativeFloat = 1.0
    dpp_eps: NonNegativeFloat = 1e-6


@LOSSES.register("selip", "brainvlp.losses.selip:SelipLoss")
@dataclass
class SelipLossConfig(LossConfig):
    inputs: ClassVar[frozenset[str]] = frozenset({"global", "clauses"})
    name: str = "selip"
    temperature: Temperature = 0.07  # initial; learnable as in CLIP
    clip_weight: NonNegativeFloat = 1.0  # alpha
    similarity_weight: NonNegativeFloat = 1.0  # beta
    max_clauses: PositiveInt = 16  # padding for the cross-worker gather; more is an error, not a truncation
    max_words: PositiveInt = 32


@LOSSES.register("triplet", "brainvlp.losses.triplet:TripletLoss")
@dataclass
class TripletLossConfig(LossConfig):
    name: str = "triplet"
    margin: NonNegativeFloat = 0.25
    candidates: PositiveInt = 2  # random negatives per anchor, the nearest kept; >= G - 1: hard negatives
    location_weight: bool = True  # Eq. 1; false reproduces the reference code (w = 1)
    same_location_coefficient: Annotated[float, Range(gt=0, le=1)] = 0.5  # the paper's c
    global_weight: NonNegativeFloat = 1.0  # alpha of Eq. 3
    local_weight: NonNegativeFloat = 0.0  # beta of Eq. 3; > 0 needs model.local
    local_margin: NonNegativeFloat = 0.4  # the reference code's margin for the local term
    max_tokens: PositiveInt = 256  # report tokens the local term pads to (ingest's report.max_tokens)

    @property  # type: ignore[override]
    def inputs(self) -> frozenset[str]:
        return frozenset({"global", "location"} | ({"local"} if self.local_weight > 0 else set()))
