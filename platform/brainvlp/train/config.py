"""The ``kind: pretrain`` spec and its sections: data, model, loss, training schedule, DeepSpeed,
augmentation, tracking; and the checks of a spec against the shards it will read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from brainvlp.losses.config import ClipLossConfig, LossConfig
from brainvlp.models.config import ModelConfig
from brainvlp.spec import (
    JobSpec,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    SpecError,
)
from brainvlp.train.tracking import TrackingConfig


@dataclass
class AugmentConfig:
    """Per-sample intensity and geometry augmentation on the trainer.

    No left-right flips: reports name the side of a finding.
    """

    enabled: bool = True
    rotate_degrees: Annotated[float, Range(ge=0, le=180)] = 8.0  # drawn from [-r, r]
    scale: Annotated[float, Range(ge=0, lt=1)] = 0.08  # zoom drawn from [1 - s, 1 + s]: s = 1 can zoom to 0
    translate_voxels: NonNegativeFloat = 3.0
    gamma: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.25)  # contrast exponent drawn from [low, high]
    bias_field: NonNegativeFloat = 0.15
    noise_std: NonNegativeFloat = 0.03

    def validate(self, path: str) -> None:
        if self.gamma[0] > self.gamma[1]:
            raise SpecError(f"{path}.gamma", f"must be [low, high], low <= high, found {list(self.gamma)}")


@dataclass
class DataConfig:
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    train_split: str = "train"
    dev_split: str = "dev"  # evaluated every ``train.eval_every`` steps
    # Rows in each worker's local shuffle buffer, on top of the per-epoch file order (train/shuffle.py: row
    # handles, no copies; its blocks stay mapped from the object store: it costs memory, not speed).
    shuffle_buffer: NonNegativeInt = 64
    # Keep the decoded training split in Ray's object store across epochs (small data sets only).
    materialize: bool = False
    # Read blocks in a reproducible order (Ray Data's preserve_order, files in a fixed order, shuffled only in
    # the local buffer seeded per epoch), so that a resumed epoch skips exactly the batches it had trained
    # on; costs some read parallelism.
    deterministic: bool = False
    # SeLIP: regroup each worker's rows so that no report text repeats within a micro-batch
    # (brainvlp.data.sampler); rows that cannot be placed are dropped and counted per epoch.
    unique_reports: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class WorkerResources:
    """What each Ray Train worker of a job gets, and how many failures the job survives (pretraining and
    report generation share these fields, flat in their ``train:`` section)."""

    num_workers: PositiveInt = 1
    cpus_per_worker: PositiveFloat = 1.0
    use_gpu: bool = False
    # Custom Ray resources each worker needs, e.g. {"h100": 1} to place workers on nodes started with
    # --resources='{"h100": 8}' (CPU and GPU come from cpus_per_worker and use_gpu).
    resources_per_worker: dict[str, PositiveFloat] = field(default_factory=dict)
    threads_per_worker: PositiveInt | None = None  # torch intra-op threads; Ray sets 1 per CPU by default
    # Worker failures Ray Train recovers from (restart from the last checkpoint); -1: unlimited.
    max_failures: Annotated[int, Range(ge=-1)] = 0

    def ray_resources(self) -> dict[str, float]:
        """Each worker's Ray resources besides the GPU (``ScalingConfig.resources_per_worker``)."""
        return {"CPU": self.cpus_per_worker, **self.resources_per_worker}

    def validate(self, path: str) -> None:
        for name in self.resources_per_worker:
            if name in ("CPU", "GPU"):
                raise SpecError(f"{path}.resources_per_worker.{name}", "use cpus_per_worker / use_gpu")


@dataclass
class TrainConfig(WorkerResources):
    batch_size: PositiveInt = 32  # global: split evenly over workers
    epochs: PositiveInt = 10
    max_steps: PositiveInt | None = None  # None: every step of the epochs
    lr: PositiveFloat = 1e-3
    text_lr: PositiveFloat | None = None  # the text encoder's own rate (brat: 5e-5 against 5e-4); None: lr
    weight_decay: NonNegativeFloat = 0.05
    warmup_steps: NonNegativeInt = 0
    schedule: Literal["cosine", "constant", "poly"] = "cosine"
    poly_power: PositiveFloat = 0.9  # "poly": lr * (1 - progress) ** poly_power after warm-up (SeLIP Eq. 15)
    log_every: PositiveInt = 10  # steps between logged metrics (a modulo: 0 cannot work)
    checkpoint_every: PositiveInt | None = None  # steps between checkpoints (resume points); None: the last
    keep_checkpoints: PositiveInt = 2  # the newest N checkpoints are kept in the run directory
    eval_every: PositiveInt | None = None  # steps between dev-split retrieval evaluations; None: never
    # Which weights the export holds: the last step's, or those with the best mean dev R@5 / lowest dev loss.
    select: Literal["last", "best_dev_R@5", "best_dev_loss"] = "last"
    seed: Seed = 0

    def validate(self, path: str) -> None:
        super().validate(path)
        if self.batch_size % self.num_workers:
            raise SpecError(
                f"{path}.batch_size",
                f"{self.batch_size} does not split evenly over {self.num_workers} workers",
            )
        if self.select != "last" and not self.eval_every:
            raise SpecError(f"{path}.select", f"{self.select!r} needs train.eval_every to be set")


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_clip: NonNegativeFloat = 1.0  # 0: no clipping
    gradient_accumulation_steps: PositiveInt = 1  # micro-batches per optimizer step


@dataclass
class PretrainSpec(JobSpec):
    kind: Literal["pretrain"] = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=ClipLossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def validate(self, path: str) -> None:
        if not path and self.data.shards is None:  # run on its own: no pipeline step will provide them
            raise SpecError("data.shards", "required: the output directory of an ingest job")
        inputs = self.loss.inputs
        if "sections" in inputs and len(self.model.text.sections) != 2:
            raise SpecError(
                f"{path}.model.text.sections".lstrip("."),
                f"loss {self.loss.name!r} contrasts two report sections; set e.g. [findings, impression], "
                f"found {list(self.model.text.sections)}",
            )
        if "local" in inputs and self.model.local is None:
            message = f"loss {self.loss.name!r} has a local term (local_weight > 0); set model.local"
            raise SpecError(f"{path}.model.local".lstrip("."), message)
        if inputs & {"views", "itg"} and self.model.qformer is None:
            message = f"loss {self.loss.name!r} needs a Q-Former; set model.qformer"
            raise SpecError(f"{path}.model.qformer".lstrip("."), message)


def check_against_shards(spec: PretrainSpec, index: dict[str, Any]) -> None:
    """Errors a run would otherwise hit inside a worker, raised before any worker starts."""
    if index.get("reports") is False:
        raise SpecError("data.shards", "the shards hold images without reports (ingest columns.report: null)")
    if index["tokenizer"] != spec.model.text.path:
        raise SpecError(
            "model.text.path",
            f"{spec.model.text.path!r} differs from the tokenizer the shards were made with "
            f"({index['tokenizer']!r}); re-ingest or use the same text encoder",
        )
    if spec.train.eval_every and not index["splits"].get(spec.data.dev_split):
        raise SpecError("data.dev_split", f"no {spec.data.dev_split!r} studies in the shards to evaluate on")
    rows = index["splits"].get(spec.data.train_split, 0)
    if rows < spec.train.batch_size:
        raise SpecError("train.batch_size", f"{spec.train.batch_size} exceeds the {rows} training studies")
