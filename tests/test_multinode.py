"""Multi-node on one machine: a ``ray.cluster_utils.Cluster`` of a CPU-less head and 1-CPU "nodes", each its
own raylet with a custom ``trainer`` resource (standing in for a GPU label) that places the training workers.

- Ingest runs on the worker nodes (the head has no CPUs, as on KubeRay with ``num-cpus: "0"``), and a
  2-worker pretraining spreads over two nodes, reading the shards written by ingest tasks on the other nodes
  through the shared path (on a real cluster: the storage every pod mounts).
- A node killed during pretraining: Ray Train restarts the worker on another node (the spare one, standing
  in for an autoscaler's replacement) and resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import ray
import yaml
from ray.util.state import list_actors, list_tasks

from brainvlp.pipeline import load_spec
from brainvlp.runner import run
from conftest import ingest_tiny

pytestmark = pytest.mark.slow
TRAINER_NODE = {"num_cpus": 1, "resources": {"trainer": 1}}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator:
    from ray.cluster_utils import Cluster

    port = _free_port()
    # The dashboard serves the state API that the test (and Ray Train's cleanup) asks where things ran.
    head = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": port}
    nodes = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(3):
        nodes.add_node(**TRAINER_NODE)
    nodes.wait_for_nodes()
    ray.init(
        address=nodes.address,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
    )
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def ingested(cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[str]]:
    """The tiny phantom ingested on the cluster, and the nodes its tasks ran on."""
    started = time.time()
    shards = ingest_tiny(tmp_path_factory.mktemp("multinode"))
    tasks = list_tasks(detail=True, limit=10000)
    return shards, {t.node_id for t in tasks if (t.start_time_ms or 0) / 1000 >= started and t.node_id}


def _pretrain_spec(tmp_path: Path, shards: Path, tiny_pipeline, name: str, workers: int, **train) -> Path:
    spec = tiny_pipeline(tmp_path, num_workers=workers, epochs=4)["pretrain"]
    spec.update(kind="pretrain", run_name=name, output_root=str(tmp_path / "runs"))
    spec["data"].update(shards=str(shards))
    spec["train"].update(
        {"cpus_per_worker": 0.5, "resources_per_worker": {"trainer": 1}, "eval_every": None, "select": "last"}
    )
    spec["train"].update(train)
    spec_file = tmp_path / f"{name}.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    return spec_file


def _train_workers() -> dict[str, str]:
    """Actor id -> node id of every Ray Train worker so far, alive or dead."""
    actors = list_actors(filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000)
    return {a.actor_id: a.node_id for a in actors}


def test_ingest_and_two_worker_pretraining_spread_over_nodes(
    cluster, ingested, tmp_path: Path, tiny_pipeline
) -> None:
    shards, ingest_nodes = ingested
    head_id = cluster.head_node.node_id
    assert head_id not in ingest_nodes and len(ingest_nodes) >= 2, ingest_nodes

    earlier = _train_workers()
    run(load_spec(_pretrain_spec(tmp_path, shards, tiny_pipeline, "spread", workers=2)))
    worker_nodes = {node for actor, node in _train_workers().items() if actor not in earlier}
    assert len(worker_nodes) == 2 and head_id not in worker_nodes  # one per node: each needs `trainer`
    # Every training node read shards that tasks on another node wrote.
    assert all(ingest_nodes - {node} for node in worker_nodes)
    history = (tmp_path / "runs" / "spread" / "metrics.jsonl").read_text().splitlines()
    assert history and (tmp_path / "runs" / "spread" / "export" / "model.safetensors").exists()


def _raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def _train_worker_node(cluster, since: float):
    """The cluster node whose raylet spawned the newest Ray Train worker process."""
    for process in psutil.process_iter(["cmdline", "create_time"]):
        command = process.info["cmdline"] or []
        if any("RayTrainWorker" in part for part in command) and process.info["create_time"] > since:
            parents = {p.pid for p in process.parents()}
            return next((n for n in cluster.worker_nodes if _raylet_pid(n) in parents), None)
    return None


def test_a_killed_node_is_replaced_and_training_resumes_from_its_checkpoint(
    cluster, ingested, tmp_path: Path, tiny_pipeline, capfd: pytest.CaptureFixture
) -> None:
    shards, _ = ingested
    earlier = _train_workers()
    spec_file = _pretrain_spec(
        tmp_path, shards, tiny_pipeline, "node-killed", workers=1, checkpoint_every=4, max_failures=2
    )
    run_dir, killed, started = tmp_path / "runs" / "node-killed", [], time.time()

    def kill_the_training_node() -> None:
        deadline = time.monotonic() + 300
        while len(list((run_dir / "train").glob("checkpoint_*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        victim = _train_worker_node(cluster, started)
        if victim is not None:
            # The third trainer node stands in for the replacement an autoscaler would start (a node
            # cannot be added from this thread: Ray installs signal handlers on the main thread).
            cluster.remove_node(victim, allow_graceful=False)
            killed.append(victim.node_id)

    killer = threading.Thread(target=kill_the_training_node, daemon=True)
    killer.start()
    run(load_spec(spec_file))
    killer.join()
    assert killed, "no node with a training worker was found to kill"
    assert "resuming at step" in capfd.readouterr().out
    nodes = {node for actor, node in _train_workers().items() if actor not in earlier}
    assert killed[0] in nodes and len(nodes) == 2  # restarted on another node
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and (run_dir / "export" / "model.safetensors").exists()
