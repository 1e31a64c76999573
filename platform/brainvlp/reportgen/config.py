"""The ``kind: report_generation`` spec (brat section 5, Table 4): which image encoders to compare, the
report generator, its training, the protocol and the scoring.

Torch-free, like every spec module. brat's full-size settings are the defaults: AdamW, cosine decay after a
warm-up over 30 % of the steps, lr 2e-4, a global batch of 1024 studies (micro-batches x workers x
gradient accumulation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainvlp.downstream.config import BootstrapConfig, ModelEntry, check_models
from brainvlp.evaluate.clinical import EXTRACTORS
from brainvlp.evaluate.green_judge import JudgeConfig
from brainvlp.models.config import ReportGeneratorConfig
from brainvlp.spec import (
    FractionFloat,
    JobSpec,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    SpecError,
)
from brainvlp.train.config import DeepSpeedConfig, WorkerResources

NLG_METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


@dataclass
class ReportTrainConfig(WorkerResources):
    batch_size: PositiveInt = 1024  # global, per optimizer step: micro-batch x workers x accumulation
    epochs: PositiveInt = 10
    lr: PositiveFloat = 2e-4
    weight_decay: NonNegativeFloat = 0.05
    warmup_ratio: FractionFloat = 0.3  # of all optimizer steps (brat)
    schedule: Literal["cosine", "constant"] = "cosine"
    max_report_tokens: PositiveInt = 256  # of the LM's tokenizer; longer reports keep their start
    # The weights that are scored on the test split: the last epoch's, or those of the epoch with the best
    # dev loss or dev NLG metric (greedy decoding of the dev split after each epoch).
    select: Literal["last", "dev_loss", "BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"] = "dev_loss"


@dataclass
class ScoringConfig:
    # Turns a generated report into structured findings for the clinical comparison (brainvlp.evaluate.
    # clinical): "phantom" reads the phantom's report grammar exactly; None skips the comparison.
    extractor: str | None = "phantom"
    # GREEN itself: a local judge LM counts each generated report's errors (brainvlp.evaluate.green_judge),
    # one Ray task on a GPU; its counts replace the extractor's in the table (examples keep the extractor).
    judge: JudgeConfig | None = None
    # Example reports beside their ground truth in the report (brat Fig. 10). Report text: off unless asked.
    show_examples: bool = False
    num_examples: PositiveInt = 4
    bootstrap: BootstrapConfig = field(default_factory=BootstrapConfig)

    def validate(self, path: str) -> None:
        if self.extractor is not None and self.extractor not in EXTRACTORS:
            raise SpecError(
                f"{path}.extractor",
                f"unknown extractor {self.extractor!r}; choose one of: {', '.join(EXTRACTORS)}",
            )
        if self.judge is not None and not self.judge.path:
            raise SpecError(f"{path}.judge.path", "the local directory of the judge model is required")


@dataclass
class ReportGenSpec(JobSpec):
    kind: Literal["report_generation"] = "report_generation"
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    # The image encoders to compare (Table 4's rows): exports, state dicts or scratch. ``mode`` and the
    # classification settings of a downstream entry do not apply; a pretrained encoder is frozen.
    models: tuple[ModelEntry, ...] = ()
    generator: ReportGeneratorConfig = field(default_factory=ReportGeneratorConfig)
    train: ReportTrainConfig = field(default_factory=ReportTrainConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    seeds: PositiveInt = 3
    train_split: str = "train"
    dev_split: str = "dev"
    test_split: str = "test"
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    @property
    def micro_batch(self) -> int:
        return self.train.batch_size // (self.train.num_workers * self.deepspeed.gradient_accumulation_steps)

    def validate(self, path: str) -> None:
        parts = self.train.num_workers * self.deepspeed.gradient_accumulation_steps
        if self.train.batch_size % parts:
            raise SpecError(
                f"{path}.train.batch_size".lstrip("."),
                f"{self.train.batch_size} does not split into {self.train.num_workers} workers x "
                f"{self.deepspeed.gradient_accumulation_steps} accumulation steps",
            )
        if self.generator.inputs == "views" and any(m.init != "export" for m in self.models):
            raise SpecError(f"{path}.generator.inputs".lstrip("."), "views come from exports with a Q-Former")
        check_models(self.models, self.shards, path, "list at least one image encoder (init: scratch is one)")
