"""The CLI's error contract: an error the user can fix ends with one stderr line and exit status 2, never a
traceback (``--debug`` shows it), an interrupt with one line and 130, a bug keeps its traceback; and
``jobs.run`` checks the spec and its inputs before Ray starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import brainvlp.runtime
from brainvlp import cli, runner
from brainvlp.errors import UserError, one_line

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, data: dict[str, Any], name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"output_root": str(tmp_path / "runs"), **data}))
    return path


def missing_manifest(tmp_path: Path) -> Path:
    return write(
        tmp_path, {"kind": "ingest", "manifest": str(tmp_path / "nope.csv"), "tokenizer": "builtin:tiny"}
    )


def jobs_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.run", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_a_missing_input_is_one_line_and_status_2(tmp_path: Path) -> None:
    spec = missing_manifest(tmp_path)
    proc = jobs_run(str(spec))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"brainvlp: {spec}: manifest: {tmp_path / 'nope.csv'} does not exist"]
    assert proc.stdout == ""  # nothing started


def test_a_bad_override_is_one_line_and_status_2(tmp_path: Path) -> None:
    proc = jobs_run(str(write(tmp_path, {"kind": "phantom"})), "--set", "dataset.num_studies=[1, 2")
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("brainvlp: ") and "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = jobs_run(str(missing_manifest(tmp_path)), "--debug")
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.splitlines()[-1].endswith("nope.csv does not exist")


def test_usage_errors_are_one_line_and_status_2() -> None:
    proc = jobs_run()
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "brainvlp run: the following arguments are required: spec (see brainvlp run --help)"
    ]


def test_validate_as_a_program_flushes_its_line_before_its_fast_exit(tmp_path: Path) -> None:
    def validate(spec: Path) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "brainvlp.cli", "validate", str(spec)]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

    good = validate(write(tmp_path, {"kind": "phantom"}, "phantom.yaml"))
    assert (good.returncode, good.stdout, good.stderr) == (
        0,
        f"{tmp_path / 'phantom.yaml'}: valid phantom spec; inputs checked\n",
        "",
    )
    bad = validate(missing_manifest(tmp_path))
    assert (
        bad.returncode == 2
        and bad.stderr.endswith("nope.csv does not exist\n")
        and len(bad.stderr.splitlines()) == 1
    )


# In-process: the same main() that jobs.run calls.


def test_nothing_starts_ray_before_the_spec_and_its_inputs_pass(tmp_path: Path, monkeypatch, capsys) -> None:
    class RayStarted(Exception):
        pass

    def init_ray() -> str:
        raise RayStarted

    monkeypatch.setattr(brainvlp.runtime, "init_ray", init_ray)
    bad_spec = write(tmp_path, {"kind": "phantom", "dataset": {"num_studys": 3}}, "bad.yaml")
    assert cli.main(["run", str(bad_spec)]) == 2
    assert cli.main(["run", str(missing_manifest(tmp_path))]) == 2
    unwritable = write(tmp_path, {"kind": "phantom"}, "phantom.yaml")
    (tmp_path / "runs").write_text("a file where the run directory should go")
    assert cli.main(["run", str(unwritable)]) == 2
    spec_error, missing, not_writable = capsys.readouterr().err.splitlines()
    assert spec_error.startswith(f"brainvlp: invalid spec {bad_spec}: dataset.num_studys: unknown key")
    assert missing.startswith(f"brainvlp: {tmp_path / 'job.yaml'}: manifest: ")
    assert not_writable.startswith(f"brainvlp: {unwritable}: output_root: cannot create the run directory")
    (tmp_path / "runs").unlink()
    with pytest.raises(RayStarted):  # a good spec does get there: the patch is where run() starts Ray
        cli.main(["run", str(unwritable)])


def test_an_interrupt_is_one_line_and_status_130(tmp_path: Path, monkeypatch, capsys) -> None:
    def interrupted(spec: Any, **_: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run", interrupted)
    assert cli.main(["run", str(write(tmp_path, {"kind": "phantom"}))]) == 130
    assert capsys.readouterr().err == "brainvlp: interrupted\n"


def test_a_user_error_of_the_run_itself_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def fails(spec: Any, **_: Any) -> None:
        raise UserError("runs/x holds an ingest of another manifest:\n  use another run_name")

    monkeypatch.setattr(runner, "run", fails)
    assert cli.main(["run", str(write(tmp_path, {"kind": "phantom"}))]) == 2
    assert (
        capsys.readouterr().err
        == "brainvlp: runs/x holds an ingest of another manifest: use another run_name\n"
    )


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch) -> None:
    def bug(spec: Any, **_: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(runner, "run", bug)
    with pytest.raises(ZeroDivisionError):  # uncaught: Python prints the traceback and exits 1
        cli.main(["run", str(write(tmp_path, {"kind": "phantom"}))])


def test_a_ray_task_error_is_reported_by_its_cause() -> None:
    from ray.exceptions import RayTaskError

    wrapped = RayTaskError("write_shard", "Traceback (most recent call last):\n  ...", UserError("bad key"))
    error = wrapped.as_instanceof_cause()
    assert isinstance(error, UserError)
    assert one_line(error) == "bad key"
