"""End to end as a user does it: `ray start --head`, `ray job submit` a pipeline spec, check the artefacts.

Stops only the Ray it started (its own process group), never other Ray instances on the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head():
    port, dashboard = _free_port(), _free_port()
    # Every port Ray would otherwise take at a fixed default gets a free one: another Ray on the machine
    # (a user's, a benchmark's) holds 52365 and 10001, and a head whose dashboard agent cannot bind
    # answers every submission with "No available agent".
    own_ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", f"--dashboard-port={dashboard}", *own_ports,
         "--dashboard-host=127.0.0.1", "--num-cpus=2", "--disable-usage-stats"],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while subprocess.run([RAY, "job", "list", "--address", address], capture_output=True).returncode:
            if time.monotonic() > deadline or head.poll() is not None:
                pytest.fail("the Ray head did not come up within 120 s")
            time.sleep(2)
        yield address
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow
def test_ray_job_submit_runs_a_pipeline(tmp_path: Path, ray_head: str, tiny_pipeline) -> None:
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_pipeline(tmp_path, epochs=2)))
    proc = subprocess.run(
        [RAY, "job", "submit", "--address", ray_head, "--working-dir", str(REPO), "--",
         sys.executable, "-m", "jobs.run", str(spec_file)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "(ray: cluster;" in proc.stdout  # the job attached to our head instead of starting its own Ray
    run_dir = tmp_path / "runs" / "tiny"
    # The job log people read shows the platform's lines; Ray's and the workers' are in the run's log file.
    job_log = proc.stdout.split("brainvlp: pipeline run", 1)[1]
    assert (
        "Traceback" not in job_log and "TrainingReport(" not in job_log and "(RayTrainWorker" not in job_log
    )
    assert "pretrain: 6/6 steps" in job_log and len(job_log.splitlines()) < 40
    assert "(RayTrainWorker" in (run_dir / "ray.log").read_text()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert metrics["metrics"]["text_to_image"]["num_candidates"] > 0
    assert (run_dir / "pretrain" / "export" / "model.safetensors").exists()
    assert (run_dir / "spec.resolved.yaml").exists()
