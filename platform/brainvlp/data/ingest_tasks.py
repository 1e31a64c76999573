"""Running an ingest's shard tasks on the cluster, and finding the study that kills its worker.

Plain Ray tasks, one per shard: the work is an embarrassingly parallel map with no data flowing between
tasks, where Ray Data's streaming executor only added a busy driver (2 workers ran 1.35x faster than 1
through Ray Data, 1.83x as tasks; benchmarks/ingest.py). ``workers`` caps how many run at once.

Ray retries a task whose worker dies (a node lost, the OOM killer): that is the common case and the retry
succeeds. A study that kills its worker every time (a native crash in a library, memory that no budget
foresaw) would fail its shard's every attempt and end the job; instead its shard's studies are then run
one per task, the ones whose worker dies again become ``worker_died`` rejects, and the shard is written
without them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from brainvlp.console import Progress

log = logging.getLogger(__name__)

SHARD_RETRIES = 3
# A study is condemned only if its worker dies in both of two solo attempts: one kill from outside (a
# preempted node) must not turn a good study into a reject.
PROBE_RETRIES = 1


def run_tasks(
    todo: list[dict[str, Any]],
    spec: Any,
    run_dir: Path,
    num_studies: int,
    *,
    shard_fn: Callable[..., dict[str, Any]],
    probe_fn: Callable[..., str],
) -> None:
    """Process the shards still to do on the cluster, printing progress as they finish."""
    if not todo:
        return
    import ray

    log.info("ingest: %d studies in %d shards to write", num_studies, len(todo))
    task = ray.remote(num_cpus=1, max_retries=SHARD_RETRIES)(shard_fn)
    spec_ref, limit = ray.put(spec), spec.workers or len(todo)
    queue, running = list(reversed(todo)), {}

    def results() -> Iterator[dict[str, Any]]:
        while queue or running:
            while queue and len(running) < limit:
                plan = queue.pop()
                running[task.remote(plan, spec_ref, str(run_dir))] = plan
            ready, _ = ray.wait(list(running), num_returns=1)
            plan = running.pop(ready[0])
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayTaskError:
                raise  # an error outside any study (e.g. the shard cannot be written): not a study's fault
            except ray.exceptions.RayError as err:
                yield _isolate(plan, spec_ref, run_dir, task, ray.remote(num_cpus=1)(probe_fn), err)

    progress = Progress("ingest", num_studies, "studies")
    shards = studies = rejected = 0
    for result in results():
        shards, studies, rejected = shards + 1, studies + result["studies"], rejected + result["rejects"]
        progress.update(studies, f"{shards}/{len(todo)} shards, {rejected} rejected")
    progress.close()


def _isolate(
    plan: dict[str, Any], spec_ref: Any, run_dir: Path, task: Any, probe: Any, err: Exception
) -> dict:
    """Run the failed shard's studies one per task; write the shard without those whose worker died."""
    import ray

    log.warning(
        "ingest: shard %s lost its worker in %d attempts (%s); running its studies one by one",
        plan["file"], SHARD_RETRIES + 1, type(err).__name__,
    )  # fmt: skip
    probes = {
        study["study_id"]: probe.options(max_retries=PROBE_RETRIES).remote(study, spec_ref)
        for study in plan["studies"]
    }
    excluded = {}
    for study_id, ref in probes.items():
        try:
            ray.get(ref)
        except ray.exceptions.RayError as probe_err:
            excluded[study_id] = (
                f"its worker died in {PROBE_RETRIES + 1} attempts alone ({type(probe_err).__name__})"
            )
    log.warning("ingest: %d studies of shard %s killed their worker; rejected", len(excluded), plan["file"])
    return ray.get(task.remote(plan, spec_ref, str(run_dir), excluded))
