"""The ``kind: evaluate`` spec: which exports to score on which split of the shards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from brainvlp.spec import JobSpec, NonNegativeFloat, PositiveInt, SpecError


@dataclass
class EvaluateSpec(JobSpec):
    kind: Literal["evaluate"] = "evaluate"
    model: str | None = None  # a pretrain export directory; in a pipeline, the pretrain step's
    models: dict[str, str] = field(default_factory=dict)  # several exports by name, compared side by side
    downstream: str | None = None  # a downstream run directory whose tables join the report
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    split: str = "test"
    batch_size: PositiveInt = 16
    gpus_per_model: NonNegativeFloat = 0.0  # each model scores the split in one Ray task; > 0: on a GPU

    def validate(self, path: str) -> None:
        if self.model is not None and self.models:
            raise SpecError(f"{path}.models".lstrip("."), "set model (one export) or models, not both")
        if path:  # a pipeline step: the runner links and checks the inputs
            return
        if self.model is None and not self.models:  # run on its own: no pipeline step will provide it
            raise SpecError("model", "required: a pretrain export directory (or models: {name: export})")
        if self.shards is None:
            raise SpecError("shards", "required: the output directory of an ingest job")
