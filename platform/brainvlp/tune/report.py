"""Human-readable record of a finished hyperparameter search, written into one folder.

``write_tune_report`` writes:

- ``trials.csv``: one row per trial, best first (trials without the objective last), one column per search
  dimension (empty where a conditional parameter did not apply);
- ``trials.md``: the same table in Markdown, the best trial in bold;
- ``best.yaml``: the complete pretrain spec that reruns the best trial (only when some trial produced the
  objective);
- ``learning_curves.png``: the objective against the training step for every trial;
- ``optimization_history.png``, ``param_importances.png``, ``parallel_coordinate.png``: Optuna's matplotlib
  plots of an in-memory study rebuilt from the trials (each one skipped, with the reason, when the trials
  cannot support it);
- ``report.md``: a summary, the plots and the table.

Ray is not needed: the caller hands over plain ``TrialRecord`` values.
"""

from __future__ import annotations

import csv
import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution

CURVES_FILE = "learning_curves.png"
HISTORY_FILE = "optimization_history.png"
IMPORTANCES_FILE = "param_importances.png"
PARALLEL_FILE = "parallel_coordinate.png"
_DPI = 120
_MAX_LEGEND_TRIALS = 12

_log = logging.getLogger(__name__)


@dataclass
class TrialRecord:
    """One trial of the search, as the tune runner saw it when the search ended."""

    trial_id: str
    params: dict[str, Any]
    status: str
    stop_reason: str
    steps: int
    final: float | None
    best: float | None
    history: list[tuple[int, float]]


def write_tune_report(
    out_dir: Path,
    trials: Sequence[TrialRecord],
    distributions: Mapping[str, BaseDistribution],
    metric: str,
    mode: str,
    best_spec_yaml: str | None,
    title: str,
) -> dict[str, Path]:
    """Write the report files into ``out_dir``; return them by file name (``"trials.csv"`` -> path)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ordered = rank_trials(trials, mode)
    best = ordered[0] if ordered and _has_value(ordered[0]) else None
    dims = sorted(set(distributions) | {key for t in trials for key in t.params})
    header = [
        "rank",
        "trial_id",
        "status",
        "stop_reason",
        "steps",
        f"final_{metric}",
        f"best_{metric}",
        *dims,
    ]
    rows = [_row(i, t, dims) for i, t in enumerate(ordered)]

    written: dict[str, Path] = {}
    written["trials.csv"] = _write_csv(out_dir / "trials.csv", header, rows)
    table = _markdown_table(header, rows, bold_row=0 if best else None)
    written["trials.md"] = _write_text(out_dir / "trials.md", table + "\n")
    if best_spec_yaml is not None:
        written["best.yaml"] = _write_text(out_dir / "best.yaml", best_spec_yaml)

    plots, skipped = _write_plots(out_dir, ordered, best, distributions, metric, mode)
    written.update(plots)
    report = _report_markdown(
        title, ordered, best, metric, mode, table, plots, skipped, has_spec=best_spec_yaml is not None
    )
    written["report.md"] = _write_text(out_dir / "report.md", report)
    return written


def _has_value(trial: TrialRecord) -> bool:
    return trial.best is not None and math.isfinite(trial.best)


def rank_trials(trials: Sequence[TrialRecord], mode: str) -> list[TrialRecord]:
    """Best first by the best objective; ties (a small dev split saturates R@5) go to the better final
    value, then to the trial that trained longer; trials without the objective last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(trial: TrialRecord) -> tuple[int, float, float, int, str]:
        if not _has_value(trial):
            return (1, 0.0, 0.0, 0, trial.trial_id)
        final = sign * trial.final if trial.final is not None and math.isfinite(trial.final) else math.inf
        return (0, sign * float(trial.best), final, -trial.steps, trial.trial_id)  # type: ignore[arg-type]

    return sorted(trials, key=key)


def _row(index: int, trial: TrialRecord, dims: Sequence[str]) -> list[Any]:
    # Trials without the objective have no place in the ranking, so their rank stays empty.
    rank = index + 1 if _has_value(trial) else None
    fixed = [rank, trial.trial_id, trial.status, trial.stop_reason, trial.steps, trial.final, trial.best]
    return fixed + [trial.params.get(dim) for dim in dims]


def _write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        # Full precision here (csv writes repr of floats); only the Markdown rounds.
        writer.writerows([["" if value is None else value for value in row] for row in rows])
    return path


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0.0:
            return "0" if value == 0.0 else str(value)
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        if abs(value) >= 1e4:
            return f"{value:.3e}"
        return f"{value:.4f}"
    # Pipes and newlines would break the table row.
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, bold_row: int | None) -> str:
    cells = [[_format_cell(value) for value in row] for row in rows]
    if bold_row is not None:
        cells[bold_row] = [f"**{cell}**" if cell else "" for cell in cells[bold_row]]
    widths = [max(len(line[i]) for line in [list(header), *cells]) for i in range(len(header))]
    lines = [
        _table_line(header, widths),
        "|" + "|".join("-" * (width + 2) for width in widths) + "|",
    ]
    lines.extend(_table_line(line, widths) for line in cells)
    return "\n".join(lines)


def _table_line(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) + " |"


def _write_plots(
    out_dir: Path,
    ordered: Sequence[TrialRecord],
    best: TrialRecord | None,
    distributions: Mapping[str, BaseDistribution],
    metric: str,
    mode: str,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Draw every plot the trials support; the second dict says why each missing one was skipped."""
    written: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    curves = [t for t in ordered if _finite_history(t)]
    if curves:
        written[CURVES_FILE] = _plot_learning_curves(out_dir / CURVES_FILE, curves, best, metric)
    else:
        skipped[CURVES_FILE] = f"no trial reported {metric} during training"

    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # PED-ANOVA warns about sparse conditional parameters; the report already shows how few trials.
            warnings.filterwarnings("ignore", message="Some regimes", category=UserWarning)
            # ... and about too few trials to tell the parameters apart (equal importances are plotted).
            warnings.filterwarnings("ignore", message="Target and region quantiles", category=UserWarning)
            # Matplotlib's note when a parameter took a single value; the axis is widened anyway.
            warnings.filterwarnings("ignore", message="Attempting to set identical", category=UserWarning)
            study = _build_study(ordered, distributions, mode)
            written.update(_optuna_plots(out_dir, study, metric, skipped))
    finally:
        optuna.logging.set_verbosity(previous_verbosity)
    return written, skipped


def _finite_history(trial: TrialRecord) -> list[tuple[int, float]]:
    return sorted((int(s), float(v)) for s, v in trial.history if v is not None and math.isfinite(v))


def _build_study(
    ordered: Sequence[TrialRecord], distributions: Mapping[str, BaseDistribution], mode: str
) -> optuna.Study:
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for trial in ordered:
        params = {k: v for k, v in trial.params.items() if k in distributions}
        dists = {k: distributions[k] for k in params}
        if _has_value(trial):
            frozen_kwargs: dict[str, Any] = {
                "value": float(trial.best),  # type: ignore[arg-type]
                "intermediate_values": dict(_finite_history(trial)),
            }
        else:
            # Kept as failed so the study counts every trial; Optuna's plots only draw completed ones.
            frozen_kwargs = {"state": optuna.trial.TrialState.FAIL}
        try:
            study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, **frozen_kwargs))
        except ValueError:
            # A value outside its declared distribution: leave the trial out of the plots, not the table.
            _log.warning(
                "trial %s left out of the Optuna plots: parameters outside the search space", trial.trial_id
            )
    return study


def _optuna_plots(
    out_dir: Path, study: optuna.Study, metric: str, skipped: dict[str, str]
) -> dict[str, Path]:
    import matplotlib.pyplot as plt  # Optuna's plots draw through pyplot; imported only when needed.
    from optuna.visualization import matplotlib as optuna_plots

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    no_trial = f"no trial produced {metric}"
    plans = {
        HISTORY_FILE: (optuna_plots.plot_optimization_history, no_trial if not complete else None),
        IMPORTANCES_FILE: (optuna_plots.plot_param_importances, _importances_blocker(complete)),
        PARALLEL_FILE: (optuna_plots.plot_parallel_coordinate, no_trial if not complete else None),
    }
    if complete and not any(trial.params for trial in complete):
        plans[PARALLEL_FILE] = (plans[PARALLEL_FILE][0], "the completed trials have no parameters")
    written: dict[str, Path] = {}
    for name, (plot, blocker) in plans.items():
        if blocker is not None:
            skipped[name] = blocker
            continue
        try:
            with plt.ioff():  # never pop up a window in an interactive session
                ax = plot(study, target_name=metric)
        except Exception as error:  # a plot the library refuses must not cost the researcher the report
            skipped[name] = f"Optuna could not draw it ({type(error).__name__})"
            continue
        figure = ax.figure
        if name == PARALLEL_FILE:
            figure.set_size_inches(max(6.4, 1.4 * (len(ax.get_xticks()) + 1)), 4.8)
        try:
            figure.savefig(out_dir / name, dpi=_DPI, bbox_inches="tight")
            written[name] = out_dir / name
        finally:
            plt.close(figure)
    return written


def _importances_blocker(complete: Sequence[optuna.trial.FrozenTrial]) -> str | None:
    """Why parameter importances cannot be estimated from ``complete``, or None when they can."""
    if len(complete) < 2:
        return f"parameter importances need at least 2 completed trials, this search has {len(complete)}"
    shared = set.intersection(*(set(trial.params) for trial in complete))
    varied = [name for name in shared if len({repr(trial.params[name]) for trial in complete}) > 1]
    if not varied:
        return (
            "parameter importances need a parameter that every completed trial sampled with differing values"
        )
    return None


def _short_id(trial_id: str) -> str:
    # Ray ids are "<experiment hash>_<index>"; the index alone is unique within one search.
    return trial_id.rsplit("_", 1)[-1]


def _plot_learning_curves(
    path: Path, curves: Sequence[TrialRecord], best: TrialRecord | None, metric: str
) -> Path:
    figure = Figure(figsize=(7.2, 4.4), layout="constrained")  # no pyplot: renders with Agg, no global state
    ax = figure.add_subplot()
    legend = len(curves) <= _MAX_LEGEND_TRIALS
    for trial in curves:
        steps, values = zip(*_finite_history(trial), strict=True)
        is_best = best is not None and trial.trial_id == best.trial_id
        label = f"{_short_id(trial.trial_id)} (best)" if is_best else _short_id(trial.trial_id)
        (line,) = ax.plot(
            steps,
            values,
            linewidth=3.0 if is_best else 1.2,
            alpha=1.0 if is_best else 0.7,
            zorder=3 if is_best else 2,
            color="black" if is_best else None,
            label=label if legend or is_best else None,
            marker="." if len(steps) == 1 else None,  # a single report would draw no line at all
        )
        if trial.stop_reason.startswith("stopped early"):
            ax.plot(steps[-1], values[-1], marker="x", markersize=8, color=line.get_color(), zorder=4)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (× = stopped early)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best", ncol=2 if len(curves) > 6 else 1)
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _summary(ordered: Sequence[TrialRecord], best: TrialRecord | None, metric: str, mode: str) -> str:
    counts = Counter(trial.status.lower() for trial in ordered)
    parts = [f"{count} {status}" for status, count in counts.most_common()]
    early = sum(trial.stop_reason.startswith("stopped early") for trial in ordered)
    text = f"{len(ordered)} trials ({', '.join(parts) or 'none'})"
    if early:
        text += f"; {early} stopped early by the scheduler"
    text += "."
    if best is None:
        return text + f" No trial reported {metric}, so there is no best trial."
    params = ", ".join(f"`{key} = {_format_cell(best.params[key])}`" for key in sorted(best.params))
    goal = "higher" if mode == "max" else "lower"
    return (
        text
        + f" Best trial: `{best.trial_id}` with {metric} = {_format_cell(best.best)} ({goal} is better), "
        f"after {best.steps} steps" + (f", with {params}." if params else ".")
    )


def _report_markdown(
    title: str,
    ordered: Sequence[TrialRecord],
    best: TrialRecord | None,
    metric: str,
    mode: str,
    table: str,
    plots: Mapping[str, Path],
    skipped: Mapping[str, str],
    *,
    has_spec: bool,
) -> str:
    captions = {
        CURVES_FILE: ("Learning curves", f"{metric} against training step, one line per trial"),
        HISTORY_FILE: ("Optimisation history", f"best {metric} of each trial in order, and the best so far"),
        IMPORTANCES_FILE: ("Parameter importances", f"how much each parameter explains {metric}"),
        PARALLEL_FILE: ("Parallel coordinates", f"each completed trial's parameters and {metric}"),
    }
    lines = [f"# {title}", "", _summary(ordered, best, metric, mode), "", "## Plots", ""]
    for name, (plot_title, caption) in captions.items():
        if name in plots:
            lines.append(f"![{plot_title}: {caption}]({name})")
        else:
            lines.append(f"*{plot_title} not drawn: {skipped.get(name, 'unknown reason')}.*")
        lines.append("")
    lines += ["## Trials", "", table, ""]
    if has_spec:
        lines += [
            "## Rerun the best trial",
            "",
            "[best.yaml](best.yaml) is the complete pretrain spec of the best trial; rerun it with "
            "`brainvlp run best.yaml`.",
            "",
        ]
    return "\n".join(lines)
