"""Start or attach to Ray: embedded locally, or the cluster named by ``ray job submit`` or RAY_ADDRESS."""

from __future__ import annotations

import os

import ray

# Quiet, fast defaults for an embedded single-machine Ray; a real cluster keeps its own settings.
_EMBEDDED_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",  # else every ray.train.report waits ~2 s for the controller
    "RAY_usage_stats_enabled": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def init_ray() -> str:
    """Attach to the cluster named by RAY_ADDRESS (set by ``ray job submit``), else start a local Ray."""
    if ray.is_initialized():
        return "existing"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return "cluster"
    for key, value in _EMBEDDED_ENV.items():
        os.environ.setdefault(key, value)
    # address="local" never attaches to another Ray that happens to run on this machine.
    ray.init(address="local", include_dashboard=False, log_to_driver=True)
    return "embedded"
