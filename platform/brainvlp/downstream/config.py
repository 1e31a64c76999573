"""The ``kind: downstream`` spec and its parts: the task, the models to compare, the fit, the protocol,
resources and bootstrap."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from brainvlp.downstream.labels import TaskConfig
from brainvlp.models.config import VisionConfig
from brainvlp.spec import (
    DropoutFloat,
    JobSpec,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    SpecError,
)


@dataclass
class ModelEntry:
    """One model of the comparison. ``init``:

    - ``export``: the image encoder of a pretrain export (``path``; in a pipeline, when ``path`` is unset, the
      export of the pretrain step named ``pretrain``, by default the entry's own name), with the export's
      backbone and pooling;
    - ``scratch``: ``vision`` randomly initialised;
    - ``state_dict``: ``vision`` loaded from a ``.safetensors`` / ``.pt`` file (``path``), keys starting with
      ``prefix`` (stripped), e.g. MedicalNet weights or another codebase's checkpoint; ``adapter: lavis``
      maps a published brat checkpoint's DenseNet (``models.lavis``) instead.
    """

    name: str
    init: Literal["export", "scratch", "state_dict"] = "export"
    path: str | None = None
    pretrain: str | None = None  # in a pipeline: the named pretrain step whose export to start from
    vision: VisionConfig | None = None  # required for scratch and state_dict; exports carry their own
    image_pool: Literal["mean", "flatten"] | None = None  # default: the export's, else mean
    prefix: str = ""  # state_dict: keep the tensors whose names start with it, without it
    adapter: Literal["none", "lavis"] = "none"  # lavis: a published brat (LAVIS / BLIP-2) checkpoint
    # Segmentation only: the entry's backbone under a U-Net decoder, or MONAI's DynUNet (nnU-Net's network,
    # brat's baseline; init scratch, no vision).
    network: Literal["encoder_unet", "dynunet"] = "encoder_unet"
    base_filters: PositiveInt = 32  # dynunet: the first level's width (nnU-Net's 32), doubling up to 320
    # encoder_unet: the full-resolution skip's width (UNETR's 16); the decoder's full-resolution convolutions
    # cost its square, most of a CPU step at 16
    feature_size: PositiveInt = 16
    mode: Literal["linear_probe", "finetune"] = "finetune"
    freeze_stages: NonNegativeInt = 0  # finetune: freeze the first k backbone stages (pLGG)
    dropout: DropoutFloat = 0.0

    def validate(self, path: str) -> None:
        if self.network == "dynunet":
            if self.init != "scratch" or self.vision is not None:
                raise SpecError(
                    f"{path}.network", "dynunet is a whole network from scratch: init scratch, no vision"
                )
            if self.feature_size != 16:
                raise SpecError(
                    f"{path}.feature_size", "sets network: encoder_unet's decoder; use base_filters"
                )
            return
        if self.base_filters != 32:
            raise SpecError(f"{path}.base_filters", "sets the width of network: dynunet only")
        if self.init != "export" and self.vision is None:
            raise SpecError(f"{path}.vision", f"required for init {self.init!r} (exports carry their own)")
        if self.init == "export" and self.vision is not None:
            raise SpecError(f"{path}.vision", "an export brings its backbone; leave vision unset")
        if self.init == "state_dict" and self.path is None:
            raise SpecError(f"{path}.path", "required for init 'state_dict': a .safetensors or .pt file")
        if self.pretrain is not None and (self.init != "export" or self.path is not None):
            raise SpecError(
                f"{path}.pretrain", "names a pipeline's pretrain step for init 'export' without path"
            )
        if self.init == "scratch" and self.path is not None:
            raise SpecError(f"{path}.path", "a scratch model loads no weights")
        if self.mode == "linear_probe" and self.freeze_stages:
            raise SpecError(f"{path}.freeze_stages", "a linear probe freezes the whole backbone already")


@dataclass
class FitConfig:
    epochs: PositiveInt = 20  # finetune epochs over the run's training rows
    probe_epochs: PositiveInt = 100  # linear probes train only a head on cached features: cheap
    batch_size: PositiveInt = 16
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: PositiveFloat = 1e-3
    probe_lr: PositiveFloat = 1e-2
    weight_decay: NonNegativeFloat = 1e-4
    schedule: Literal["constant", "cosine", "step"] = "cosine"
    step_epochs: PositiveInt = 10  # schedule "step": StepLR every this many epochs (pLGG)
    gamma: PositiveFloat = 0.1  # schedule "step": the rate's factor at each step (0 would stop learning)
    # pLGG's attention threshold for the Dice against lesion masks.
    explain_threshold: Annotated[float, Range(ge=0, lt=1)] = 0.01
    explain_studies: NonNegativeInt = 16  # explained test studies per run (with a lesion): Grad-CAM's cost
    keep_heat_maps: NonNegativeInt = 2  # explanation maps a run returns for the report's overlays
    # Segmentation: training crops (None: whole volumes), and inference over whole volumes, in one pass
    # (fully convolutional networks take any size) or, with ``window``, in sliding windows of that size
    # overlapping by ``sw_overlap`` (for volumes or networks that do not fit the device whole).
    patch_size: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    window: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None
    sw_overlap: Annotated[float, Range(ge=0, lt=1)] = 0.5
    # Segmentation: the share of each run's training studies (by patient) held out to select the epoch
    # with the best mean Dice, evaluated every ``eval_every`` epochs.
    dev_fraction: Annotated[float, Range(gt=0, lt=1)] = 0.15
    eval_every: PositiveInt = 1


@dataclass
class ProtocolConfig:
    folds: Annotated[int, Range(ge=2)] = 5  # k-fold cross-validation by patient, stratified (pLGG: 5)
    # Of each training fold, drawn per seed.
    fractions: tuple[Annotated[float, Range(gt=0, le=1)], ...] = (0.01, 0.1, 1.0)
    seeds: PositiveInt = 10  # brat Table 7
    fold_seed: Seed = 0  # the fold assignment is fixed across seeds and models: runs differ in seed only
    splits: tuple[str, ...] = ("train", "dev", "test")  # shard splits that make the cross-validated data set
    external_test: str | None = None  # a shard split scored by every run in addition to its test fold

    def validate(self, path: str) -> None:
        if not self.fractions:
            raise SpecError(f"{path}.fractions", "list at least one fraction in (0, 1]")
        if self.external_test in self.splits:
            raise SpecError(f"{path}.external_test", "must not be one of the cross-validated splits")


@dataclass
class ResourcesConfig:
    cpus_per_run: PositiveFloat = 1.0
    gpus_per_run: NonNegativeFloat = 0.0
    threads_per_run: PositiveInt = 1  # torch intra-op threads in each run


@dataclass
class BootstrapConfig:
    resamples: PositiveInt = 1000
    level: Annotated[float, Range(gt=0, lt=1)] = 0.95  # of the confidence intervals


@dataclass
class DownstreamSpec(JobSpec):
    kind: Literal["downstream"] = "downstream"
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    task: TaskConfig = field(default_factory=TaskConfig)
    models: tuple[ModelEntry, ...] = ()
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def validate(self, path: str) -> None:
        check_models(self.models, self.shards, path, "list at least one model to train")
        segmentation = self.task.type == "segmentation"
        for index, entry in enumerate(self.models):
            where = f"{path}.models.{index}".lstrip(".")
            if segmentation and entry.mode == "linear_probe":
                raise SpecError(f"{where}.mode", "segmentation fine-tunes (freeze_stages freezes a part)")
            if not segmentation and entry.network != "encoder_unet":
                raise SpecError(f"{where}.network", "a network other than the encoder is for segmentation")


def check_models(models: tuple[ModelEntry, ...], shards: str | None, path: str, none_given: str) -> None:
    """A job's model list: some, uniquely named; run on its own (``path`` empty: no pipeline step provides
    them), its shards and every export's path are set."""
    where = f"{path}.models" if path else "models"
    if not models:
        raise SpecError(where, none_given)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise SpecError(where, f"model names must be unique, found {names}")
    if path:  # a pipeline step: the runner links and checks the inputs
        return
    if shards is None:
        raise SpecError("shards", "required: the output directory of an ingest job")
    for index, entry in enumerate(models):
        if entry.init == "export" and entry.path is None:
            raise SpecError(f"models.{index}.path", "required for init 'export': a pretrain export")
