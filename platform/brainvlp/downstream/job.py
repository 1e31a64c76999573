"""The downstream job (``kind: downstream``): cross-validated classification with several initialisations at
several label fractions and seeds, all runs in parallel on the cluster (METHODS 1.3 and 4).

Protocol. The studies of ``protocol.splits`` that answer the task are split into k folds by patient,
stratified by label, once (``fold_seed``). For every model, fraction, seed and fold, a run trains on the
fraction (drawn per seed, nested: 1 % within 10 % within 100 %) of the other folds and scores the held-out
fold and, if set, the ``external_test`` split. Every run is a Ray task with ``resources`` per run; linear
probes first embed the data once per model (another task) and share it.

Outputs in the run directory: ``report.md`` / ``report.html`` (tables with bootstrap CIs, plots),
``metrics.json`` (every run's metrics and the aggregates), ``predictions.npz`` (out-of-fold scores).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from brainvlp.data.shards import decode_volumes, read_index, split_files
from brainvlp.downstream.config import DownstreamSpec, ModelEntry
from brainvlp.downstream.fit import RunResult, TaskData, build_classifier, embed_tokens, run_once
from brainvlp.downstream.folds import patient_folds
from brainvlp.downstream.labels import TaskLabels, task_labels
from brainvlp.downstream.runs import Run, gather_runs, in_worker, plan_runs
from brainvlp.downstream.weights import resolve_init
from brainvlp.errors import UserError
from brainvlp.spec import SpecError

log = logging.getLogger(__name__)
_COLUMNS = ["patient_pid", "volume", "volume_shape", "mask", "findings"]


def load_task_data(spec: DownstreamSpec, splits: Sequence[str]) -> tuple[TaskData, TaskLabels, np.ndarray]:
    """The task's studies of ``splits`` (volumes, masks, labels) and their patients."""
    index = read_index(spec.shards)
    tables = [pq.read_table(f, columns=_COLUMNS) for split in splits for f in split_files(spec.shards, split)]
    findings = [s for t in tables for s in t.column("findings").to_pylist()]
    labels = task_labels(spec.task, findings)
    volumes, masks, patients = [], [], []
    for table in tables:
        volumes.append(
            decode_volumes(table.column("volume").to_pylist(), table.column("volume_shape").to_pylist())
        )
        shape = volumes[-1].shape[2:]
        for mask in table.column("mask").to_pylist():
            masks.append(None if mask is None else np.frombuffer(mask, np.uint8).reshape(shape))
        patients.extend(table.column("patient_pid").to_pylist())
    keep = labels.rows
    data = TaskData(
        volumes_NCDHW=np.concatenate(volumes)[keep],
        masks=[masks[row] for row in keep],
        y=labels.y,
        task=spec.task.type,
        num_outputs=labels.num_outputs,
        scale_max=float(index["scale_max"]),
    )
    return data, labels, np.asarray(patients)[keep]


def _embed(entry: ModelEntry, init: dict[str, Any], data: TaskData, batch_size: int) -> dict[str, np.ndarray]:
    torch.manual_seed(0)  # a scratch probe's frozen random backbone: the same whichever worker builds it
    return embed_tokens(build_classifier(entry, init, data), data, batch_size)


def run_downstream(spec: DownstreamSpec, run_dir: Path) -> dict[str, Any]:
    if spec.shards is None:
        raise SpecError("shards", "required: the output directory of an ingest job")
    if spec.task.type == "segmentation":
        from brainvlp.downstream.seg_job import run_segmentation

        return run_segmentation(spec, run_dir)
    data, labels, patients = load_task_data(spec, spec.protocol.splits)
    counts = np.bincount(data.y, minlength=len(labels.class_names)) if data.y.ndim == 1 else data.y.sum(0)
    print(
        f"downstream: task {spec.task.name!r}: {len(data.y)} studies of {len(set(patients))} patients; "
        f"per class {dict(zip(labels.class_names, counts.tolist(), strict=True))}; left out {labels.excluded}"
    )
    folds_N = patient_folds(patients, data.y, spec.protocol.folds, spec.protocol.fold_seed)
    if spec.protocol.external_test:
        data, folds_N = _with_external(spec, data, labels, folds_N)
    results = _schedule(spec, data, folds_N)
    from brainvlp.downstream.report import write_downstream_report

    report = write_downstream_report(run_dir, spec, data, labels, folds_N, results)
    print(f"downstream: report written to {report}")
    return {"runs": len(results), "report": str(report)}


def _with_external(
    spec: DownstreamSpec, data: TaskData, labels: TaskLabels, folds_N: np.ndarray
) -> tuple[TaskData, np.ndarray]:
    """Append the external test studies in fold -1: no run trains on them, every run scores them."""
    external, external_labels, _ = load_task_data(spec, [spec.protocol.external_test])
    if external_labels.class_names != labels.class_names:
        raise UserError(
            f"external split {spec.protocol.external_test!r} has classes {external_labels.class_names}, "
            f"the cross-validated data {labels.class_names}: list task.classes to fix them"
        )
    merged = TaskData(
        volumes_NCDHW=np.concatenate([data.volumes_NCDHW, external.volumes_NCDHW]),
        masks=data.masks + external.masks,
        y=np.concatenate([data.y, external.y]),
        task=data.task,
        num_outputs=data.num_outputs,
        scale_max=data.scale_max,
    )
    return merged, np.concatenate([folds_N, np.full(len(external.y), -1)])


def _schedule(spec: DownstreamSpec, data: TaskData, folds_N: np.ndarray) -> list[tuple[Run, RunResult]]:
    """Submit every run as a Ray task (probes after their model's embedding task) and gather the results."""
    res = spec.resources
    options = {"num_cpus": res.cpus_per_run, "num_gpus": res.gpus_per_run}
    data_ref = ray.put(data)
    shape = data.volumes_NCDHW.shape
    entries = {e.name: e for e in spec.models}
    inits = {e.name: ray.put(resolve_init(e, shape[1], tuple(shape[2:]))) for e in spec.models}
    task = in_worker.options(**options)
    cached = {
        e.name: task.remote(res.threads_per_run, _embed, e, inits[e.name], data_ref, spec.fit.batch_size)
        for e in spec.models
        if e.mode == "linear_probe"
    }
    pending = {}
    for run, rows in plan_runs(spec, data.y, folds_N):
        rows = {**rows, "explain": _explained(data, rows["test"], spec.fit.explain_studies)}
        args = (
            entries[run.model],
            inits[run.model],
            data_ref,
            spec.fit,
            rows,
            run.seed,
            cached.get(run.model),
        )
        pending[task.remote(res.threads_per_run, run_once, *args)] = run
    return gather_runs(pending)


def _explained(data: TaskData, test_rows: np.ndarray, limit: int) -> np.ndarray:
    with_lesion = [row for row in test_rows if data.masks[row] is not None and data.masks[row].any()]
    return np.asarray(with_lesion[:limit], np.int64)
