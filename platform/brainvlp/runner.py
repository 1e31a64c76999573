"""Running a validated spec (``brainvlp.pipeline.load_spec``): start Ray, then run each step.

Every run writes to ``<output_root>/<run_name>/`` and saves ``spec.resolved.yaml`` there. A pipeline runs its
``steps`` in order, each into ``<run_dir>/<step>/``; an input a step leaves unset is taken from the
pipeline's section of the step before it (annotate reads phantom's manifest, ingest annotate's or else
phantom's, pretrain ingest's shards, downstream and evaluate pretrain's exports), whether that step runs
now or ran in an earlier invocation with the same run name: ``--set steps=[downstream,evaluate]`` reruns
the last steps on earlier outputs.
Named pretrainings (``pretrain: {brat: ..., clip: ...}``) each run into ``<run_dir>/pretrain/<name>/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainvlp.phantom.config import PhantomSpec
from brainvlp.pipeline import pretrain_steps
from brainvlp.spec import dump_resolved

log = logging.getLogger(__name__)


def _run_phantom(spec: PhantomSpec, run_dir: Path) -> Any:
    import ray

    from brainvlp.phantom.generate import generate_phantom

    summary = ray.get(ray.remote(num_cpus=1)(generate_phantom).remote(spec.dataset, str(run_dir)))
    print(f"phantom: {summary.num_studies} studies of {summary.num_patients} patients in {run_dir}")
    return summary


def _runner(kind: str) -> Callable[[Any, Path], Any]:
    from brainvlp.annotate.job import run_annotate
    from brainvlp.data.ingest import run_ingest
    from brainvlp.downstream.job import run_downstream
    from brainvlp.evaluate.job import run_evaluate
    from brainvlp.reportgen.job import run_report_generation
    from brainvlp.train.trainer import run_pretrain
    from brainvlp.tune.job import run_tune

    return {
        "phantom": _run_phantom,
        "annotate": run_annotate,
        "ingest": run_ingest,
        "pretrain": run_pretrain,
        "tune": run_tune,
        "downstream": run_downstream,
        "report_generation": run_report_generation,
        "evaluate": run_evaluate,
    }[kind]


def run(spec: Any, verbose: bool | None = None) -> dict[str, Any]:
    """Run a validated spec (starting or attaching to Ray); returns each step's result. The console shows
    the platform's lines; Ray's and the libraries' go to ``<run_dir>/ray.log`` (``brainvlp.console``), and
    to the console too when ``verbose`` (default: BRAINVLP_VERBOSE)."""
    from brainvlp.console import RunLog, verbose_from_env
    from brainvlp.runtime import init_ray

    run_dir = Path(spec.output_root) / spec.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_resolved(spec, run_dir / "spec.resolved.yaml")
    steps = _steps(spec, run_dir)
    # Imported before the logs are routed: Ray and the libraries set up their console loggers on import.
    runners = {kind: _runner(kind) for kind, *_ in steps}
    with RunLog(run_dir, verbose_from_env() if verbose is None else verbose) as run_log:
        mode = init_ray()
        run_log.route()
        if mode == "cluster" and not Path(spec.output_root).is_absolute():
            log.warning(
                "output_root %r is relative: under `ray job submit` it resolves inside the job's copy of the "
                "working directory; set an absolute path on shared storage (--set output_root=/shared/runs)",
                spec.output_root,
            )
        print(
            f"brainvlp: {spec.kind} run {spec.run_name!r} in {run_dir.resolve()} "
            f"(ray: {mode}; its and the libraries' logs in {run_log.path.name} there)"
        )
        results = {}
        for kind, label, step_spec, step_dir in steps:
            step_dir.mkdir(parents=True, exist_ok=True)
            run_log.route()  # an earlier step may have imported a library that logs to the console
            start = time.perf_counter()
            results[label] = runners[kind](step_spec, step_dir)
            print(f"{label}: done in {time.perf_counter() - start:.1f} s")
    return results


def _steps(spec: Any, run_dir: Path) -> list[tuple[str, str, Any, Path]]:
    """(kind, label, spec, directory) of every step to run, named pretrainings each their own step."""
    if spec.kind != "pipeline":
        return [(spec.kind, spec.kind, spec, run_dir)]
    steps = []
    for kind in spec.steps:
        if kind == "pretrain":
            for name, pretrain in pretrain_steps(spec).items():
                label = f"pretrain.{name}" if name else "pretrain"
                steps.append((kind, label, pretrain, run_dir / "pretrain" / (name or "")))
        else:
            steps.append((kind, kind, getattr(spec, kind), run_dir / kind))
    return steps
