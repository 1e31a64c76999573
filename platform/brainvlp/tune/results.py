"""A finished (or stopped) search as one record per trial, and the files written from them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from brainvlp.spec import parse, to_plain
from brainvlp.train.config import PretrainSpec
from brainvlp.train.loop import total_steps
from brainvlp.tune.report import TrialRecord, rank_trials, write_tune_report
from brainvlp.tune.space import apply_params, distributions

if TYPE_CHECKING:
    from ray.tune import ResultGrid

    from brainvlp.tune.config import TuneSpec


def trial_dirname(trial: Any) -> str:
    """Tune's directory of a trial: its id, as under ``trials/`` (Tune's default spells out every value)."""
    return trial.trial_id


def collect_trials(grid: ResultGrid, spec: TuneSpec, index: dict[str, Any]) -> list[TrialRecord]:
    """Every trial's values, status, why it stopped, and its objective over the steps."""
    metric, rows = spec.search.metric, index["splits"]
    records = []
    for result in grid:
        params = dict(result.config or {})
        frame = result.metrics_dataframe
        history: list[tuple[int, float]] = []
        if frame is not None and metric in frame and "step" in frame:
            found = frame[["step", metric]].dropna()
            history = [(int(step), float(value)) for step, value in found.itertuples(index=False)]
        steps = history[-1][0] if history else 0
        trial_spec = parse(PretrainSpec, apply_params(spec.base, params))
        planned = total_steps(trial_spec.train, rows[trial_spec.data.train_split])
        values = [value for _, value in history if math.isfinite(value)]
        best = (min if spec.search.mode == "min" else max)(values) if values else None
        records.append(
            TrialRecord(
                trial_id=Path(result.path).name,
                params=params,
                status="ERROR" if result.error else "TERMINATED",
                stop_reason=_stop_reason(result.error, steps, planned, spec.asha.enabled),
                steps=steps,
                final=history[-1][1] if history else None,
                best=best,
                history=history,
            )
        )
    return records


def _stop_reason(error: BaseException | None, steps: int, planned: int, asha: bool) -> str:
    if error is not None:
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return f"error: {type(error).__name__}: {first_line}"
    if steps >= planned:
        return "completed"
    if steps == 0:
        return "stopped before its first evaluation"
    return f"stopped early by ASHA at step {steps}" if asha else f"stopped at step {steps} (time budget)"


def write_results(trials: list[TrialRecord], spec: TuneSpec, run_dir: Path) -> dict[str, Any]:
    """trials.csv / .md, best.yaml, plots and report.md in ``run_dir``; returns the best trial."""
    mode = spec.search.mode
    name = spec.run_name or run_dir.parent.name  # a pipeline's tune step runs under the pipeline's name
    ranked = rank_trials(trials, mode)
    best = ranked[0] if ranked and ranked[0].best is not None else None
    best_yaml = None
    if best is not None:
        best_spec = parse(PretrainSpec, apply_params(spec.base, best.params))
        best_spec.run_name, best_spec.output_root = f"{name}-best", str(run_dir.parent)  # beside the search
        header = (
            f"# The best trial ({best.trial_id}, {spec.search.metric} = {best.best:.4f}) of tune run "
            f"{name!r}, as a complete pretrain spec.\n# Run: brainvlp run {run_dir / 'best.yaml'}\n"
        )
        best_yaml = header + yaml.safe_dump(to_plain(best_spec), sort_keys=False)
    written = write_tune_report(
        run_dir,
        trials,
        distributions(spec.dims),
        metric=spec.search.metric,
        mode=mode,
        best_spec_yaml=best_yaml,
        title=f"Tune run {name}",
    )
    print(f"tune: {len(trials)} trials; report in {written.get('report.md', run_dir)}")
    if best is None:
        print(f"tune: no trial reported {spec.search.metric}")
        return {"best": None, "trials": len(trials)}
    print(f"tune: best trial {best.trial_id}: {spec.search.metric} {best.best:.4f} with {best.params}")
    return {
        "best": best.trial_id,
        "params": best.params,
        spec.search.metric: best.best,
        "trials": len(trials),
    }
