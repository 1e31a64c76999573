"""Start or attach to Ray: embedded locally, or the cluster named by ``ray job submit`` or RAY_ADDRESS."""

from __future__ import annotations

import os
import socket

# Raylet settings the platform runs with: set here for an embedded Ray, and by cluster/Dockerfile for every
# Ray process in the cluster image. Ray frees released objects in batches, every
# free_objects_period_milliseconds (1000 by default), so the object store also holds up to a second of
# streamed blocks that training has already consumed. Streaming 1 MiB volumes at ~600 MiB/s into 2 CPU
# workers, that doubled the store's peak (benchmarks/memory.py: 673 -> 353 MiB with 100 ms); a GPU node
# streaming GiB/s would hold GiBs. Freeing every 100 ms costs ten small batches a second.
RAYLET_ENV = {"RAY_free_objects_period_milliseconds": "100"}
# Quiet, fast defaults for an embedded single-machine Ray; a real cluster keeps its own settings.
_EMBEDDED_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # else every ray.train.report waits ~2 s for the controller
    "RAY_usage_stats_enabled": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}

# A single CPU machine's test and benchmark runs: DeepSpeed's CPU accelerator, no token auth for the local
# Ray, fast Train health checks, every worker's log line kept, no hub access, no tokenizer thread pools.
CPU_LOCAL_ENV = {
    "DS_ACCELERATOR": "cpu",
    "RAY_AUTH_MODE": "disabled",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_DEDUP_LOGS": "0",
    "RAY_usage_stats_enabled": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def use_cpu_local_env() -> None:
    """Default ``CPU_LOCAL_ENV`` (values already set win); call before ray or deepspeed is imported."""
    for key, value in CPU_LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def init_ray() -> str:
    """Attach to the cluster named by RAY_ADDRESS (set by ``ray job submit``), else start a local Ray."""
    import ray  # here, not at the top: the CLI imports this module, and validating a spec starts no Ray

    if ray.is_initialized():
        return "existing"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return "cluster"
    for key, value in {**_EMBEDDED_ENV, **RAYLET_ENV}.items():
        os.environ.setdefault(key, value)
    # The dashboard (on a free local port) serves Ray's state API, which Ray Train's placement-group cleaner
    # asks whether a run's controller still lives: without it, every Train run whose driver is killed (a
    # tune trial stopped early, a time budget) keeps its workers' CPUs reserved until Ray shuts down.
    # Workers find the API through RAY_API_SERVER_ADDRESS (a stale /tmp/ray file would mislead them).
    port = _free_port()
    ray.init(
        address="local",  # never attach to another Ray that happens to run on this machine
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=port,
        runtime_env={"env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}},
        log_to_driver=True,
    )
    return "embedded"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
