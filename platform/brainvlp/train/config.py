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
    # Rows in each worker's local shuffle buffer, on top of the per-epoch file order (train/shuffle.py: row
    # handles, no copies; its blocks stay mapped from the object store: it costs memory, not speed).
    shuffle_buffer: int = 64
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

    def validate(self, path: str) -> None:
        if self.shuffle_buffer < 0:
            raise SpecError(
                f"{path}.shuffle_buffer", f"must be >= 0 rows (0 turns it off), found {self.shuffle_buffer}"
            )


@dataclass
class TrainConfig:
    num_workers: int = 1
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    # Custom Ray resources each worker needs, e.g. {"h100": 1} to place workers on nodes started with
    # --resources='{"h100": 8}' (CPU and GPU come from cpus_per_worker and use_gpu).
    resources_per_worker: dict[str, float] = field(default_factory=dict)
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
    checkpoint_every: int | None = None  # steps between checkpoints (resume points); None: only the last
    keep_checkpoints: int = 2  # the newest N checkpoints are kept in the run directory
    max_failures: int = 0  # worker failures Ray Train recovers from (restart from the last checkpoint)
    eval_every: int | None = None  # steps between dev-split retrieval evaluations; None: never
    # Which weights the export holds: the last step's, or those with the best mean dev R@5 / lowest dev loss.
    select: Literal["last", "best_dev_R@5", "best_dev_loss"] = "last"
    seed: int = 0

    def validate(self, path: str) -> None:
        if self.num_workers < 1:
            raise SpecError(f"{path}.num_workers", f"must be >= 1, found {self.num_workers}")
        for name, amount in self.resources_per_worker.items():
            if name in ("CPU", "GPU"):
                raise SpecError(f"{path}.resources_per_worker.{name}", "use cpus_per_worker / use_gpu")
            if amount <= 0:
                raise SpecError(f"{path}.resources_per_worker.{name}", f"must be > 0, found {amount}")
        if self.batch_size % self.num_workers:
            raise SpecError(
                f"{path}.batch_size",
                f"{self.batch_size} does not split evenly over {self.num_workers} workers",
            )
        if self.select != "last" and not self.eval_every:
            raise SpecError(f"{path}.select", f"{self.select!r} needs train.eval_every to be set")
        if self.epochs < 1:
            raise SpecError(f"{path}.epochs", f"must be >= 1, found {self.epochs}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise SpecError(
                f"{path}.checkpoint_every", f"must be >= 1 or null, found {self.checkpoint_every}"
            )
        if self.keep_checkpoints < 1:
            raise SpecError(f"{path}.keep_checkpoints", f"must be >= 1, found {self.keep_checkpoints}")
        if self.max_failures < -1:
            raise SpecError(
                f"{path}.max_failures", f"must be >= 0 (or -1: unlimited), found {self.max_failures}"
            )
        if self.poly_power <= 0:
            raise SpecError(f"{path}.poly_power", f"must be > 0, found {self.poly_power}")


@dataclass
class DeepSpeedConfig:
    zero_stage: Literal[0, 1, 2, 3] = 2
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    grad_clip: float = 1.0  # 0: no clipping
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step

    def validate(self, path: str) -> None:
        if self.grad_clip < 0:
            raise SpecError(
                f"{path}.grad_clip", f"must be >= 0 (0 turns clipping off), found {self.grad_clip}"
            )
        if self.gradient_accumulation_steps < 1:
            raise SpecError(
                f"{path}.gradient_accumulation_steps",
                f"must be >= 1, found {self.gradient_accumulation_steps}",
            )
