"""Job kinds and the pipeline: reading any job spec (``load_spec``), and linking a pipeline's steps.

Torch-free, like every spec module: ``brainvlp validate`` reads, overrides, validates and links a spec in
well under a second. Running it is ``brainvlp.runner``'s job.

A pipeline runs its ``steps`` in order, each into ``<run_dir>/<step>/``; an input a step leaves unset is
taken from the pipeline's section of the step before it (annotate reads phantom's manifest, ingest
annotate's output manifest or else phantom's, pretrain ingest's shards, downstream, report_generation and
evaluate pretrain's exports), whether that step runs now or ran in an earlier invocation with the same run
name. Named pretrainings (``pretrain: {brat: ..., clip: ...}``) each run into ``<run_dir>/pretrain/<name>/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from brainvlp.annotate.config import AnnotateSpec
from brainvlp.data.ingest import IngestSpec
from brainvlp.data.manifest import ManifestColumns
from brainvlp.downstream.config import DownstreamSpec
from brainvlp.evaluate.config import EvaluateSpec
from brainvlp.phantom.config import PhantomSpec
from brainvlp.reportgen.config import ReportGenSpec
from brainvlp.spec import JobSpec, SpecError, apply_overrides, parse, read_yaml
from brainvlp.train.config import PretrainSpec
from brainvlp.tune.config import TuneSpec

STEP_KINDS = (
    "phantom",
    "annotate",
    "ingest",
    "pretrain",
    "tune",
    "downstream",
    "report_generation",
    "evaluate",
)


@dataclass
class PipelineSpec(JobSpec):
    kind: Literal["pipeline"] = "pipeline"
    steps: tuple[
        Literal[
            "phantom", "annotate", "ingest", "pretrain", "tune", "downstream", "report_generation", "evaluate"
        ],
        ...,
    ] = ()  # default: those given
    phantom: PhantomSpec | None = None
    annotate: AnnotateSpec | None = None  # reports -> findings (and rewrites) before ingest
    ingest: IngestSpec | None = None
    # One pretraining, or several by name (each into pretrain/<name>/) for comparisons downstream.
    pretrain: PretrainSpec | dict[str, PretrainSpec] | None = None
    tune: TuneSpec | None = None
    downstream: DownstreamSpec | None = None
    report_generation: ReportGenSpec | None = None
    evaluate: EvaluateSpec | None = None

    def validate(self, path: str) -> None:
        if not self.steps:
            self.steps = tuple(k for k in STEP_KINDS if getattr(self, k) is not None)
        for step in self.steps:
            sub = getattr(self, step)
            if sub is None:
                raise SpecError(f"steps: {step!r} is listed but the spec has no {step!r} section", "")
            for name, part in sub.items() if isinstance(sub, dict) else [(None, sub)]:
                if part.run_name is not None:
                    where = f"{step}.{name}" if name else step
                    raise SpecError(
                        f"{where}.run_name", "set run_name and output_root on the pipeline, not a step"
                    )


JOB_KINDS: dict[str, type] = {
    "phantom": PhantomSpec,
    "ingest": IngestSpec,
    "pretrain": PretrainSpec,
    "tune": TuneSpec,
    "downstream": DownstreamSpec,
    "report_generation": ReportGenSpec,
    "evaluate": EvaluateSpec,
    "annotate": AnnotateSpec,  # listed after the established kinds; as a step it runs before ingest
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
    phantom_manifest = str(run_dir / "phantom" / "manifest.csv") if spec.phantom is not None else None
    if spec.annotate:
        spec.annotate.manifest = spec.annotate.manifest or phantom_manifest
        if spec.annotate.sequences is None and spec.ingest is not None:
            spec.annotate.sequences = spec.ingest.sequences
        if spec.annotate.columns == ManifestColumns() and spec.ingest is not None:
            # Both read the same manifest: annotate resolves the image paths (dicom, mask) ingest will read.
            spec.annotate.columns = dataclasses.replace(spec.ingest.columns)
    if spec.ingest and spec.ingest.manifest is None:
        annotated = str(run_dir / "annotate" / spec.annotate.output_name) if spec.annotate else None
        spec.ingest.manifest = annotated or phantom_manifest
    ingested = str(run_dir / "ingest") if spec.ingest is not None else None
    exports = _pretrain_exports(spec, run_dir)
    for pretrain in pretrain_steps(spec).values():
        pretrain.data.shards = pretrain.data.shards or ingested
    if spec.tune and spec.tune.base["data"]["shards"] is None:
        spec.tune.base["data"]["shards"] = ingested
    for step in (spec.downstream, spec.report_generation):
        if step is None:
            continue
        step.shards = step.shards or ingested
        for entry in step.models:
            source = entry.pretrain or entry.name
            if entry.init == "export" and entry.path is None and source in exports:
                entry.path = exports[source]
    if spec.evaluate:
        spec.evaluate.shards = spec.evaluate.shards or ingested
        downstream = run_dir / "downstream"
        ran = "downstream" in spec.steps or (downstream / "metrics.json").exists()
        if spec.evaluate.downstream is None and spec.downstream is not None and ran:
            spec.evaluate.downstream = str(downstream)
        if spec.evaluate.model is None and not spec.evaluate.models and len(exports) == 1:
            spec.evaluate.model = next(iter(exports.values()))
        elif spec.evaluate.model is None and not spec.evaluate.models:
            spec.evaluate.models = exports
    for step in spec.steps:
        _require_inputs(step, getattr(spec, step))


def pretrain_steps(spec: PipelineSpec) -> dict[str | None, PretrainSpec]:
    """The pipeline's pretrainings by name (None for a single, unnamed one)."""
    if spec.pretrain is None:
        return {}
    return dict(spec.pretrain) if isinstance(spec.pretrain, dict) else {None: spec.pretrain}


def _pretrain_exports(spec: PipelineSpec, run_dir: Path) -> dict[str, str]:
    """Export directory of each pretraining, keyed by its name ("pretrain" for a single one)."""
    return {
        name or "pretrain": str(run_dir / "pretrain" / (name or "") / "export")
        for name in pretrain_steps(spec)
    }


_REQUIRED_INPUTS = {
    "annotate": ("manifest",),
    "ingest": ("manifest",),
    "pretrain": ("data.shards",),
    "tune": ("base.data.shards",),
    "downstream": ("shards",),
    "report_generation": ("shards",),
    "evaluate": ("shards",),
}


def _require_inputs(step: str, spec: Any) -> None:
    if isinstance(spec, dict):  # named pretrainings
        for name, part in spec.items():
            _require_inputs(f"{step}.{name}", part)
        return
    if step == "evaluate" and spec.model is None and not spec.models:
        raise SpecError("evaluate.model", "required (no earlier pipeline step provides it)")
    if step in ("downstream", "report_generation"):
        for index, entry in enumerate(spec.models):
            if entry.init == "export" and entry.path is None:
                raise SpecError(
                    f"{step}.models.{index}.path",
                    f"required: no pretrain step of this pipeline is named {entry.pretrain or entry.name!r}",
                )
    for dotted in _REQUIRED_INPUTS.get(step.split(".")[0], ()):
        value = spec
        for part in dotted.split("."):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        if value is None:
            raise SpecError(f"{step}.{dotted}", "required (no earlier pipeline step provides it)")
