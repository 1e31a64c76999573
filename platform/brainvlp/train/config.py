"""Typed sections of a pretrain spec: data, training schedule, DeepSpeed, augmentation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainvlp.spec import SpecError


@dataclass
class AugmentConfig:
    """Per-sample intensity and geometry augmentation on the trainer.

    No left-right flips: reports name the side of a finding.
    """

    enabled: bool = True
    rotate_degrees: float = 8.0
    scale: float = 0.08
    translate_voxels: float = 3.0
    gamma: tuple[float, float] = (0.8, 1.25)
    bias_field: float = 0.15
    noise_std: float = 0.03


@dataclass
class DataConfig:
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    train_split: str = "train"
    dev_split: str = "dev"  # evaluated every ``train.eval_every`` steps
    shuffle_buffer: int = 256  # rows in each worker's local shuffle buffer
    # Keep the decoded training split in Ray's object store across epochs (small data sets only).
    materialize: bool = False
    # SeLIP: regroup each worker's rows so that no report text repeats within a micro-batch
    # (brainvlp.data.sampler); rows that cannot be placed are dropped and counted per epoch.
    unique_reports: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    threads_per_worker: int | None = None  # torch intra-op threads; Ray sets 1 per CPU by default
    batch_size: int = 32  # global: split evenly over workers
    epochs: int = 10
    max_steps: int | None = None
    lr: float = 1e-3
    text_lr: float | None = None  # the text encoder's own rate (brat: 5e-5 against 5e-4); None: lr
    weight_decay: float = 0.05
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant", "poly"] = "cosine"
    poly_power: float = 0.9  # "poly": lr * (1 - progress) ** poly_power after warm-up (SeLIP Eq. 15)
    log_every: int = 10
    eval_every: int | None = None  # steps between dev-split retrieval evaluations; None: never
    # Which weights the export holds: the last step's, or those with the best mean dev R@5.
    select: Literal["last", "best_dev_R@5"] = "last"
    seed: int = 0

    def validate(self, path: str) -> None:
        if self.num_workers < 1:
            raise SpecError(f"{path}.num_workers", f"must be >= 1, found {self.num_workers}")
        if self.batch_size % self.num_workers:
            raise SpecError(
                f"{path}.batch_size",
                f"{self.batch_size} does not split evenly over {self.num_workers} workers",
            )
        if self.select != "last" and not self.eval_every:
            raise SpecError(f"{path}.select", f"{self.select!r} needs train.eval_every to be set")
        if self.epochs < 1:
            raise SpecError(f"{path}.epochs", f"must be >= 1, found {self.epochs}")
        if self.poly_power <= 0:
            raise SpecError(f"{path}.poly_power", f"must be > 0, found {self.poly_power}")


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_clip: float = 1.0
    gradient_accumulation_steps: int = 1
