"""The search's live progress on the driver's console: trials finished of all, and the best objective so
far. Tune's own status tables (``RunConfig(verbose=...)``) go quiet; trial output goes to the run's log."""

from __future__ import annotations

from typing import Any

from ray import tune

from brainvlp.console import Progress


class TrialProgress(tune.Callback):
    """A ``console.Progress`` line at each trial's end (completed, stopped early or failed)."""

    def __init__(self, num_trials: int, metric: str, mode: str) -> None:
        self.num_trials, self.metric, self.mode = num_trials, metric, mode
        self._progress: Progress | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config (callbacks included) into the experiment to resume it; a console
        # stream does not pickle, and the resumed driver has its own.
        return {**self.__dict__, "_progress": None}

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._show(trials)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._show(trials)

    def _show(self, trials: list[Any]) -> None:
        if self._progress is None:
            self._progress = Progress("tune", self.num_trials, "trials")
        ended = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        # metric_analysis: Tune's running max / min of each reported metric, per trial
        scores = [
            t.metric_analysis[self.metric][self.mode] for t in ended if self.metric in t.metric_analysis
        ]
        best = (max if self.mode == "max" else min)(scores) if scores else None
        failed = sum(t.status == "ERROR" for t in ended)
        extra = f"best {self.metric} {best:.4f}" if best is not None else ""
        if failed:
            extra += f"  {failed} failed"
        self._progress.update(len(ended), extra.strip())
