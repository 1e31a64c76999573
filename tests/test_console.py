"""The console a person reads: the platform's lines only, Ray's and the libraries' in the run's log file."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from brainvlp.console import LOG_FILE, Progress, RunLog

REPO = Path(__file__).resolve().parents[1]
# Lines that only Ray or a library writes: worker prefixes, Ray's log format, Train's report dicts.
RAY_MARKS = (
    "(RayTrainWorker",
    "(TrainController",
    "(SplitCoordinator",
    "TrainingReport(",
    " -- ",
    "core_worker",
)


def _brainvlp(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "BRAINVLP_VERBOSE")}
    env["PYTHONPATH"] = f"{REPO / 'platform'}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "brainvlp.cli", "run", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_pipeline_console_shows_only_the_platform_and_the_log_file_holds_the_rest(
    tmp_path: Path, tiny_pipeline
) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_pipeline(tmp_path, epochs=2)))
    proc = _brainvlp(str(spec_file))
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    lines = console.splitlines()
    assert len(lines) < 30, console
    assert "Traceback" not in console
    assert not [line for line in lines if any(mark in line for mark in RAY_MARKS)], console
    assert any(line.startswith("pretrain: 6/6 steps") for line in lines), console  # the driver's progress
    log_file = tmp_path / "runs" / "tiny" / LOG_FILE
    assert (
        f"in {log_file.parent.resolve()} (ray: embedded; its and the libraries' logs in {LOG_FILE}" in console
    )
    logged = log_file.read_text()
    for mark in ("(RayTrainWorker", "(TrainController", "TrainingReport(", "Started a local Ray instance"):
        assert mark in logged, mark

    # --verbose: Ray's lines on the console as well (a phantom of two studies, to keep the test short).
    small = tmp_path / "small.yaml"
    small.write_text(
        yaml.safe_dump(
            {
                "kind": "phantom",
                "run_name": "small",
                "output_root": str(tmp_path),
                "dataset": {"num_studies": 2, "num_patients": 2, "shape": [16, 16, 16]},
            }
        )
    )
    verbose = _brainvlp(str(small), "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert "Started a local Ray instance" in verbose.stdout + verbose.stderr


def test_run_log_routes_library_records_and_restores_the_loggers(tmp_path: Path, capsys) -> None:
    library = logging.getLogger("some_library")
    console = logging.StreamHandler(sys.stderr)
    library.addHandler(console)
    library.propagate = False
    try:
        with RunLog(tmp_path):
            library.warning("library detail")
            logging.getLogger("brainvlp.test").warning("a platform warning")
            logging.getLogger("brainvlp.test").info("a platform detail")
        assert library.handlers == [console]  # restored for whatever runs next in the process
    finally:
        library.removeHandler(console)
    err = capsys.readouterr().err
    assert err == "brainvlp: warning: a platform warning\n"
    logged = (tmp_path / LOG_FILE).read_text()
    assert "some_library: library detail" in logged
    assert "brainvlp.test: a platform warning" in logged and "a platform detail" in logged


def test_verbose_keeps_library_records_on_the_console(tmp_path: Path, capsys) -> None:
    library = logging.getLogger("another_library")
    library.addHandler(logging.StreamHandler(sys.stderr))
    library.propagate = False
    with RunLog(tmp_path, verbose=True):
        library.warning("shown")
    assert "shown" in capsys.readouterr().err
    assert "shown" in (tmp_path / LOG_FILE).read_text()


def test_progress_prints_every_quarter_in_a_log_and_always_the_end() -> None:
    out = io.StringIO()
    progress = Progress("pretrain", 100, "steps", stream=out, interval_s=3600)
    for step in range(1, 101):
        progress.update(step, f"loss {1 / step:.3f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 5  # the first update, one per quarter (the fourth is the last)
    assert lines[0].startswith("pretrain: 1/100 steps  loss 1.000")
    assert lines[-1].startswith("pretrain: 100/100 steps") and "eta" not in lines[-1]
    assert "eta" in lines[2]


def test_progress_in_a_terminal_rewrites_one_line() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress("ingest", 4, "studies", stream=out)
    for done in range(1, 5):
        progress.update(done)
    text = out.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("\n")
    assert "[####################]" in text


def test_hugging_face_progress_bars_are_off_during_a_run_and_restored(tmp_path: Path) -> None:
    """'Loading weights' bars write to the console past every logger (an export's text encoder loads)."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    with RunLog(tmp_path):
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with RunLog(tmp_path, verbose=True):
        assert hf_logging.is_progress_bar_enabled()
