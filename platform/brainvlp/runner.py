"""Job kinds, pipelines, and running a spec: validate everything, then start Ray, then run.

Every run writes to ``<output_root>/<run_name>/`` and saves ``spec.resolved.yaml`` there. A pipeline runs its
``steps`` in order, each into ``<run_dir>/<step>/``; an input a step leaves unset is taken from the step
before it (ingest reads phantom's manifest, pretrain ingest's shards, evaluate pretrain's export).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from brainvlp.data.ingest import IngestSpec
from brainvlp.data.phantom import PhantomConfig
from brainvlp.evaluate.job import EvaluateSpec
from brainvlp.spec import SpecError, apply_overrides, dump_resolved, parse, read_yaml
from brainvlp.train.trainer import PretrainSpec
from brainvlp.tune.job import TuneSpec

log = logging.getLogger(__name__)


@dataclass
class PhantomSpec:
    kind: Literal["phantom"] = "phantom"
    run_name: str | None = None
    output_root: str = "runs"
    dataset: PhantomConfig = field(default_factory=PhantomConfig)


STEP_KINDS = ("phantom", "ingest", "pretrain", "tune", "evaluate")


@dataclass
class PipelineSpec:
    kind: Literal["pipeline"] = "pipeline"
    run_name: str | None = None
    output_root: str = "runs"
    steps: tuple[
        Literal["phantom", "ingest", "pretrain", "tune", "evaluate"], ...
    ] = ()  # default: those given
    phantom: PhantomSpec | None = None
    ingest: IngestSpec | None = None
    pretrain: PretrainSpec | None = None
    tune: TuneSpec | None = None
    evaluate: EvaluateSpec | None = None

    def validate(self, path: str) -> None:
        if not self.steps:
            self.steps = tuple(k for k in STEP_KINDS if getattr(self, k) is not None)
        for step in self.steps:
            sub = getattr(self, step)
            if sub is None:
                raise SpecError(f"steps: {step!r} is listed but the spec has no {step!r} section", "")
            if sub.run_name is not None:
                raise SpecError(
                    f"{step}.run_name", "set run_name and output_root on the pipeline, not a step"
                )


JOB_KINDS: dict[str, type] = {
    "phantom": PhantomSpec,
    "ingest": IngestSpec,
    "pretrain": PretrainSpec,
    "tune": TuneSpec,
    "evaluate": EvaluateSpec,
    "pipeline": PipelineSpec,
}


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Any:
    """Read, override and validate a job spec. Raises SpecError before anything starts."""
    data = apply_overrides(read_yaml(path), overrides)
    kind = data.get("kind")
    if kind not in JOB_KINDS:
        raise SpecError("kind", f"{kind!r} is not one of: {', '.join(JOB_KINDS)}")
    spec = parse(JOB_KINDS[kind], data)
    if spec.run_name is None:
        spec.run_name = Path(path).stem
    if kind == "pipeline":
        link_pipeline(spec)
    return spec


def link_pipeline(spec: PipelineSpec) -> None:
    """Fill each step's unset inputs with the outputs of the steps before it."""
    run_dir = Path(spec.output_root) / spec.run_name
    steps = set(spec.steps)
    if spec.ingest and spec.ingest.manifest is None and "phantom" in steps:
        spec.ingest.manifest = str(run_dir / "phantom" / "manifest.csv")
    if spec.pretrain and spec.pretrain.data.shards is None and "ingest" in steps:
        spec.pretrain.data.shards = str(run_dir / "ingest")
    if spec.tune and spec.tune.base["data"]["shards"] is None and "ingest" in steps:
        spec.tune.base["data"]["shards"] = str(run_dir / "ingest")
    if spec.evaluate:
        if spec.evaluate.shards is None and "ingest" in steps:
            spec.evaluate.shards = str(run_dir / "ingest")
        if spec.evaluate.model is None and "pretrain" in steps:
            spec.evaluate.model = str(run_dir / "pretrain" / "export")
    for step in spec.steps:
        _require_inputs(step, getattr(spec, step))


_REQUIRED_INPUTS = {
    "ingest": ("manifest",),
    "pretrain": ("data.shards",),
    "tune": ("base.data.shards",),
    "evaluate": ("model", "shards"),
}


def _require_inputs(step: str, spec: Any) -> None:
    for dotted in _REQUIRED_INPUTS.get(step, ()):
        value = spec
        for part in dotted.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        if value is None:
            raise SpecError(f"{step}.{dotted}", "required (no earlier pipeline step provides it)")


def _run_phantom(spec: PhantomSpec, run_dir: Path) -> Any:
    import ray

    from brainvlp.data.phantom import generate_phantom

    summary = ray.get(ray.remote(num_cpus=1)(generate_phantom).remote(spec.dataset, str(run_dir)))
    print(f"phantom: {summary.num_studies} studies of {summary.num_patients} patients in {run_dir}")
    return summary


def _runner(kind: str) -> Callable[[Any, Path], Any]:
    from brainvlp.data.ingest import run_ingest
    from brainvlp.evaluate.job import run_evaluate
    from brainvlp.train.trainer import run_pretrain
    from brainvlp.tune.job import run_tune

    return {
        "phantom": _run_phantom,
        "ingest": run_ingest,
        "pretrain": run_pretrain,
        "tune": run_tune,
        "evaluate": run_evaluate,
    }[kind]


def run(spec: Any) -> dict[str, Any]:
    """Run a validated spec (starting or attaching to Ray); returns each step's result."""
    from brainvlp.runtime import init_ray

    run_dir = Path(spec.output_root) / spec.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_resolved(spec, run_dir / "spec.resolved.yaml")
    mode = init_ray()
    if mode == "cluster" and not Path(spec.output_root).is_absolute():
        log.warning(
            "output_root %r is relative: under `ray job submit` it resolves inside the job's copy of the "
            "working directory; set an absolute path on shared storage (--set output_root=/shared/runs)",
            spec.output_root,
        )
    print(f"brainvlp: {spec.kind} run {spec.run_name!r} in {run_dir.resolve()} (ray: {mode})")
    steps = (
        [(k, getattr(spec, k), run_dir / k) for k in spec.steps]
        if spec.kind == "pipeline"
        else [(spec.kind, spec, run_dir)]
    )
    results = {}
    for kind, step_spec, step_dir in steps:
        step_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        results[kind] = _runner(kind)(step_spec, step_dir)
        print(f"{kind}: done in {time.perf_counter() - start:.1f} s")
    return results
