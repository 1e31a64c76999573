"""The ``kind: tune`` spec: the base pretrain spec, the search space, the search and ASHA settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from brainvlp.spec import (
    JobSpec,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    SpecError,
    parse,
    read_yaml,
    to_plain,
)
from brainvlp.train.config import PretrainSpec
from brainvlp.tune.space import Dimension, check_domains, check_space, parse_space

Metric = Literal["dev_R@5", "dev_t2i_R@5", "dev_i2t_R@5", "dev_loss"]


@dataclass
class SearchConfig:
    num_samples: PositiveInt = 12  # trials in all
    seed: Seed = 0  # Optuna's TPE sampler
    metric: Metric = "dev_R@5"  # mean of text->image and image->text dev R@5; dev_loss is minimised
    # 0: as many trials at once as the cluster's CPUs (and GPUs) fit, each trial's workers plus one CPU
    # for its Ray Data reads (a Train run can only start once all its workers fit).
    max_concurrent_trials: NonNegativeInt = 0
    time_budget_s: PositiveFloat | None = None  # stop starting and running trials after this long
    # An Optuna storage URL (e.g. sqlite:////shared/studies.db) to keep the study outside Tune's own state,
    # for inspection with optuna-dashboard or reuse in long studies; default: in memory, saved by Tune.
    storage: str | None = None

    @property
    def mode(self) -> str:
        return "min" if self.metric == "dev_loss" else "max"


@dataclass
class AshaConfig:
    enabled: bool = True
    grace_steps: PositiveInt | None = None  # steps before a trial can be stopped; default: base eval_every
    # Keep the best 1/reduction_factor of the trials at each rung; ASHA needs it > 1 (1 keeps them all).
    reduction_factor: Annotated[float, Range(gt=1)] = 2.0


@dataclass
class TuneSpec(JobSpec):
    kind: Literal["tune"] = "tune"
    base: str | dict[str, Any] = field(default_factory=dict)  # a pretrain spec: path, or inline
    space: dict[str, Any] = field(default_factory=dict)  # dotted spec path -> distribution (tune/space.py)
    search: SearchConfig = field(default_factory=SearchConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    # Resources of each trial's driver (the Tune function that runs TorchTrainer.fit and waits on it): no
    # CPU by default, since it only waits, and a CPU taken from the read tasks can hang a small machine;
    # Tune needs some request to place it, so 1 MiB of memory. A custom resource can pin drivers to safe
    # (non-spot) nodes.
    driver_resources: dict[str, NonNegativeFloat] = field(
        default_factory=lambda: {"CPU": 0.0, "memory": 2.0**20}
    )
    dims: dict[str, Dimension] = field(init=False, default_factory=dict, repr=False)

    def validate(self, path: str) -> None:
        where = f"{path}.base".lstrip(".")
        data = read_yaml(self.base) if isinstance(self.base, str) else dict(self.base)
        if data.setdefault("kind", "pretrain") != "pretrain":
            raise SpecError(f"{where}.kind", f"the base must be a pretrain spec, found {data['kind']!r}")
        base = parse(PretrainSpec, data, where)
        if not base.train.eval_every:
            message = "the search's objective is a dev-set metric: set eval_every > 0"
            raise SpecError(f"{where}.train.eval_every", message)
        if not path and base.data.shards is None:  # run on its own: no pipeline step will provide them
            raise SpecError(f"{where}.data.shards", "required: the output directory of an ingest job")
        self.base = to_plain(base)  # saved resolved with the run: the search reruns without the file
        where = f"{path}.space".lstrip(".")
        self.dims = parse_space(self.space, where)
        check_domains(PretrainSpec, self.base, self.dims, where)
        check_space(PretrainSpec, self.base, self.dims, where)
