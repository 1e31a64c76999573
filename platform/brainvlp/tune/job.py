"""The tune job: Ray Tune + Optuna (TPE) over a base pretrain spec, ASHA on a dev-set metric, a report.

Each trial is a Tune function that builds and fits the pretrain job's ``TorchTrainer`` (Ray Train V2's way
of tuning Train runs) with the trial's values applied to the base spec; a ``TuneReportCallback`` forwards
the dev evaluations to Tune, where ASHA stops weak trials at its rungs and Optuna learns from the results.
Everything lives under ``<output_root>/<run_name>/``: ``tune/`` (Tune's experiment state), ``trials/<id>/``
(each trial's pretrain run: resolved spec, checkpoints, export) and the report (``trials.csv``, ``trials.md``,
``best.yaml``, plots, ``report.md``). Re-running the same spec with the same run name restores the
experiment: finished trials are kept, unfinished ones run again (from their last checkpoint).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

# At import, not in the search: Optuna sets up its console logger when imported, and the runner routes the
# libraries' loggers to the run's log file after importing the job modules (brainvlp.console).
from ray.tune.search.optuna import OptunaSearch

from brainvlp.spec import (
    SpecError,
    parse,
    to_plain,
)
from brainvlp.train.config import PretrainSpec, TrainConfig
from brainvlp.tune.config import TuneSpec

log = logging.getLogger(__name__)


def concurrent_trials(train: TrainConfig, cluster: Mapping[str, float]) -> int:
    """Trials whose Train runs fit the cluster at once: workers' CPUs plus one CPU for the Ray Data read
    tasks (two 1-CPU workers on 2 CPUs leave reads none and hang), and the workers' GPUs."""
    fits = [cluster.get("CPU", 0.0) // (train.num_workers * train.cpus_per_worker + 1)]
    if train.use_gpu:
        fits.append(cluster.get("GPU", 0.0) // train.num_workers)
    return max(1, int(min(fits)))


def run_tune(spec: TuneSpec, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the search, then write the report; returns the best trial's id and values."""
    from brainvlp.data.shards import read_index
    from brainvlp.train.config import check_against_shards
    from brainvlp.train.loop import total_steps
    from brainvlp.tune.progress import TrialProgress
    from brainvlp.tune.results import collect_trials, write_results

    base = parse(PretrainSpec, spec.base, "base")
    if base.data.shards is None:
        raise SpecError("base.data.shards", "required: the output directory of an ingest job")
    index = read_index(base.data.shards)
    check_against_shards(base, index)
    run_dir = run_dir.resolve()
    _check_same_search(spec, run_dir)
    # Trials read the spec's relative paths (shards, a local text encoder) from the job's directory, as a
    # pretrain job does, instead of Tune's default of each trial's own directory (Tune passes it on).
    os.environ["RAY_CHDIR_TO_TRIAL_DIR"] = "0"
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, base=spec.base, run_dir=str(run_dir), metric=spec.search.metric),
        dict(spec.driver_resources),
    )
    experiment = run_dir / "tune"
    if tune.Tuner.can_restore(experiment):
        print(f"tune: resuming the search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True)
    else:
        steps = total_steps(base.train, index["splits"][base.data.train_split])
        concurrent = spec.search.max_concurrent_trials or concurrent_trials(
            base.train, ray.cluster_resources()
        )
        print(f"tune: {spec.search.num_samples} trials, up to {concurrent} at once, {steps} steps each")
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(spec, base, steps, concurrent),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(run_dir),
                verbose=0,  # the console shows TrialProgress; Tune's status tables go to the log file
                callbacks=[TrialProgress(spec.search.num_samples, spec.search.metric, spec.search.mode)],
            ),
        )
    grid = tuner.fit()
    trials = collect_trials(grid, spec, index)
    return write_results(trials, spec, run_dir)


def _tune_config(spec: TuneSpec, base: PretrainSpec, steps: int, concurrent: int) -> Any:
    from brainvlp.tune.results import trial_dirname
    from brainvlp.tune.space import suggest

    search = spec.search
    storage = None
    if search.storage:
        import optuna

        storage = optuna.storages.RDBStorage(search.storage)
    searcher = OptunaSearch(
        space=functools.partial(suggest, space=spec.dims),  # define-by-run: conditional dimensions
        metric=search.metric,
        mode=search.mode,
        seed=search.seed,
        study_name=spec.run_name or "brainvlp",
        storage=storage,
    )
    scheduler = None
    if spec.asha.enabled:
        grace = spec.asha.grace_steps or base.train.eval_every
        # max_t beyond the last step: ASHA stops a trial that reaches max_t, which would kill it between its
        # last evaluation and its final checkpoint and export.
        scheduler = ASHAScheduler(
            time_attr="step", max_t=steps + 1, grace_period=grace, reduction_factor=spec.asha.reduction_factor
        )
    return tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        metric=search.metric,
        mode=search.mode,
        num_samples=search.num_samples,
        max_concurrent_trials=concurrent,
        time_budget_s=search.time_budget_s,
        trial_dirname_creator=trial_dirname,
    )


def _check_same_search(spec: TuneSpec, run_dir: Path) -> None:
    """A rerun under the same name resumes the saved experiment, whose search cannot change: refuse a
    different spec rather than silently continue the old one."""
    saved, current = run_dir / "tune_spec.json", json.dumps(to_plain(spec), sort_keys=True)
    if saved.exists() and saved.read_text() != current:
        raise SpecError(
            "run_name",
            f"{run_dir} holds a search with a different spec; use another run_name to start a new search, "
            f"or the same spec to resume it",
        )
    saved.write_text(current)


def run_trial(config: dict[str, Any], base: dict[str, Any], run_dir: str, metric: str) -> None:
    """One trial (in Tune's trial actor): the base spec with the trial's values, fitted by Ray Train."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from brainvlp.spec import dump_resolved
    from brainvlp.train.trainer import run_pretrain
    from brainvlp.tune.space import apply_params

    class ObjectiveReport(TuneReportCallback):
        """Forward only the reports that hold the objective: Tune requires the searched metric in every
        result, and the training loop also reports loss-only steps and checkpoints."""

        forwarded = False

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metric in metrics[0]:
                self.forwarded = True
                super().after_report(run_context, metrics, checkpoint)

    trial_id = tune.get_context().get_trial_id()
    spec = parse(PretrainSpec, apply_params(base, config))
    spec.run_name = trial_id
    trial_dir = Path(run_dir) / "trials" / trial_id
    trial_dir.mkdir(parents=True, exist_ok=True)
    dump_resolved(spec, trial_dir / "spec.resolved.yaml")
    objective = ObjectiveReport()
    run_pretrain(spec, trial_dir, callbacks=[objective], show_progress=False)
    if not objective.forwarded:
        # A restored trial whose Train run had already finished (the driver died after the run's last
        # report but before Tune saved it) trains nothing now; Tune still needs its objective: the history's.
        tune.report(last_objective(trial_dir / "metrics.jsonl", metric))


def last_objective(history: Path, metric: str) -> dict[str, Any]:
    """The last row of a pretrain run's ``metrics.jsonl`` that holds ``metric``."""
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    found = [row for row in rows if metric in row]
    if not found:
        raise RuntimeError(f"{history} has no row with {metric!r}: the trial's run never evaluated it")
    return found[-1]
