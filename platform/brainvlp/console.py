"""The console of a run: the platform's own lines for people, everything else in the run's log file.

A run is read in a terminal or, under ``ray job submit``, in the job log (``ray job logs``). Both show:

- stdout: each phase's start and summary, and one live ``Progress`` per phase (a bar in a terminal; in a
  job log, a line at the start, at every quarter of the work and at least every five minutes), with its
  rate and ETA;
- stderr: the platform's warnings and errors (``brainvlp`` loggers, WARNING and up).

Everything else goes to ``<run_dir>/ray.log`` (``RunLog``): the output of every Ray worker and actor (Train
workers and controller, Ray Data's coordinators, tune trials, ingest tasks), the driver's log records of
Ray and the libraries (Ray Data and Train, DeepSpeed, transformers, Optuna, Python warnings) and the
platform's own INFO records. ``--verbose`` or ``BRAINVLP_VERBOSE=1`` shows them on the console as well.

Nothing is filtered by its text: whole streams are routed, with Ray's own switches. Ray streams every
worker's output to the driver (``log_to_driver``) and hands each batch of lines to its dispatcher of worker
output, whose handler prints them; for the run, the handler that writes the log file takes that place.
Log records of libraries go by their loggers: console handlers are swapped for the file's handler.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

VERBOSE_ENV = "BRAINVLP_VERBOSE"
LOG_FILE = "ray.log"
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RAY_PRINTER = "ray_print_logs"  # the name Ray's dispatcher gives its console printer of worker output


def verbose_from_env() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class RunLog:
    """For the duration of a run: worker output and library log records to ``<run_dir>/ray.log`` (and to the
    console too when ``verbose``); the platform's warnings to stderr. Restores everything on exit, so that
    runs in one process (tests, a notebook) each get their own file."""

    def __init__(self, run_dir: Path, verbose: bool = False) -> None:
        self.path = run_dir / LOG_FILE
        self.verbose = verbose
        self._file: IO[str] | None = None
        self._handler: logging.Handler | None = None
        self._platform = logging.StreamHandler(sys.stderr)
        self._platform.setLevel(logging.WARNING)
        self._platform.setFormatter(logging.Formatter("brainvlp: warning: %(message)s"))
        self._removed: list[tuple[logging.Logger, logging.Handler]] = []
        self._added: list[logging.Logger] = []
        self._printers: list[tuple[str, Any]] = []
        self._saved_level = logging.NOTSET
        self._bars = False

    def __enter__(self) -> RunLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._handler = _FileLogHandler(self._file)
        platform = logging.getLogger("brainvlp")
        self._saved_level = platform.level
        platform.setLevel(logging.INFO)
        platform.addHandler(self._platform)
        logging.captureWarnings(True)
        self._bars = self._silence_progress_bars()
        self.route()
        return self

    def _silence_progress_bars(self) -> bool:
        """Hugging Face's progress bars ("Loading weights", downloads) write to the console directly, past
        any logger: off for the run unless verbose. Returns whether they were on, to restore them."""
        if self.verbose:
            return False
        from transformers.utils import logging as hf_logging

        was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        return was_on

    def route(self) -> None:
        """Route what exists now; run again after ``ray.init`` (which starts Ray's printer of worker output)
        and once a step has imported libraries that set up their loggers on import. Idempotent."""
        self._route_loggers()
        self._route_worker_output()

    def _route_loggers(self) -> None:
        loggers = [logging.getLogger()] + [
            found for found in logging.root.manager.loggerDict.values() if isinstance(found, logging.Logger)
        ]
        for found in loggers:
            if found.name.startswith("brainvlp"):
                continue
            console = [h for h in found.handlers if _writes_to_console(h)]
            if not self.verbose:
                for handler in console:
                    found.removeHandler(handler)
                    self._removed.append((found, handler))
            # The root's handler also receives every logger that propagates; the others need their own.
            wanted = found is logging.root or (console and not found.propagate)
            if wanted and self._handler not in found.handlers:
                found.addHandler(self._handler)
                self._added.append(found)

    def _route_worker_output(self) -> None:
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
        except ImportError:  # another Ray: its worker output stays on the console
            return
        if not self.verbose:
            self._printers += [pair for pair in dispatcher.handlers if pair[0] == _RAY_PRINTER]
            dispatcher.remove_handler(_RAY_PRINTER)
        if all(name != f"brainvlp:{self.path}" for name, _ in dispatcher.handlers):
            dispatcher.add_handler(f"brainvlp:{self.path}", self._write_worker_lines)

    def _write_worker_lines(self, data: dict[str, Any]) -> None:
        if self._file is None or self._file.closed:
            return
        lines = data.get("lines", [])
        if data.get("pid") == "autoscaler":  # only its events, as Ray's printer shows, not every status
            from ray._private.worker import filter_autoscaler_events

            lines = list(filter_autoscaler_events(lines))
        source = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({source} pid={data.get('pid')}, ip={data.get('ip')})".replace("( ", "(")
        self._file.write("".join(f"{prefix} {line}\n" for line in lines))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

            dispatcher.remove_handler(f"brainvlp:{self.path}")
            for name, printer in self._printers:
                dispatcher.add_handler(name, printer)
        except ImportError:
            pass
        for found in self._added:
            found.removeHandler(self._handler)
        for found, handler in self._removed:
            found.addHandler(handler)
        platform = logging.getLogger("brainvlp")
        platform.removeHandler(self._platform)
        platform.setLevel(self._saved_level)
        logging.captureWarnings(False)
        if self._bars:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        if self._file is not None:
            self._file.close()


class _FileLogHandler(logging.StreamHandler):
    """The log file's handler. It keeps its own format: ``ray.init`` sets Ray's on every handler of the
    ``ray`` logger, and this one handler serves every routed logger."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        super().setFormatter(logging.Formatter(_FORMAT))

    def setFormatter(self, fmt: logging.Formatter | None) -> None:
        pass


def _writes_to_console(handler: logging.Handler) -> bool:
    """A handler that prints to the terminal (Ray's handlers look up sys.stderr when they emit)."""
    if isinstance(handler, logging.FileHandler):
        return False
    stream = getattr(handler, "stream", None)
    return stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) or type(handler).__name__ in (
        "PlainRayHandler",
        "_StderrHandler",
    )


class Progress:
    """One phase's live progress: ``label  done/total unit  [extra]  rate  eta``. In a terminal one line
    rewritten in place; otherwise (a job log, a file) a line at the first update, at every quarter of the work
    and at least every ``interval_s``, so that a long run's log stays short. The last update always prints."""

    def __init__(
        self, label: str, total: int, unit: str, stream: IO[str] | None = None, interval_s: float = 300.0
    ) -> None:
        self.label, self.total, self.unit, self.interval_s = label, max(1, total), unit, interval_s
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start = self._last = time.perf_counter()
        self._quarter, self._first_done = -1, None
        self._open = False

    def update(self, done: int, extra: str = "", rate: str | None = None) -> None:
        """Show ``done`` of the total; ``rate`` replaces the measured units per second."""
        now = time.perf_counter()
        if self._first_done is None:  # measure the rate and ETA from the first update (a resumed run)
            self._first_done, self._start = done, now
        quarter = 4 * done // self.total
        finished = done >= self.total
        if not self.live and not finished and quarter == self._quarter and now - self._last < self.interval_s:
            return
        self._quarter, self._last = quarter, now
        line = self.format(done, extra, rate, now)
        if self.live:
            self.stream.write("\r\033[2K" + line + ("\n" if finished else ""))
            self._open = not finished
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def format(self, done: int, extra: str, rate: str | None, now: float) -> str:
        elapsed = now - self._start
        step_rate = (done - (self._first_done or 0)) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - done) / step_rate if step_rate > 0 else None
        parts = [f"{self.label}: {done}/{self.total} {self.unit}"]
        if self.live:
            filled = int(20 * done / self.total)
            parts[0] = f"{self.label}: [{'#' * filled}{'.' * (20 - filled)}] {done}/{self.total} {self.unit}"
        if extra:
            parts.append(extra)
        if rate or step_rate > 0:
            parts.append(rate or f"{step_rate:.2f} {self.unit}/s")
        if done < self.total and remaining is not None:
            parts.append(f"eta {_duration(remaining)}")
        return "  ".join(parts)

    def note(self, line: str) -> None:
        """A line of its own (e.g. "resuming at step 40"), not overwritten by the next update."""
        self.close()
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
