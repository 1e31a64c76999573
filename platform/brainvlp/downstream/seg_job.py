"""The downstream job's segmentation task (``task.type: segmentation``, brat Tables 8-9).

The same protocol as classification (``downstream.job``): the studies of ``protocol.splits`` that have a
mask are split into k folds by patient once (stratified by whether a study has any tumour), and for every
model, label fraction, seed and fold one Ray task trains on the fraction (nested draws) of the other folds
and scores the held-out fold and, if set, the ``external_test`` split (``downstream.seg_fit``). Studies
without a mask are left out and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray

from brainvlp.data.shards import decode_volumes, read_index, split_files
from brainvlp.downstream.config import DownstreamSpec
from brainvlp.downstream.folds import patient_folds
from brainvlp.downstream.runs import Run, gather_runs, in_worker, plan_runs
from brainvlp.downstream.seg_fit import SegData, SegResult, run_segmentation_once
from brainvlp.downstream.weights import resolve_init
from brainvlp.errors import UserError

_COLUMNS = ["patient_pid", "volume", "volume_shape", "mask"]


def load_segmentation_data(spec: DownstreamSpec, splits: Sequence[str]) -> tuple[SegData, Counter]:
    """The studies of ``splits`` with a mask (volumes, label maps, patients); the others counted."""
    index = read_index(spec.shards)
    volumes, masks, patients, excluded = [], [], [], Counter()
    for split in splits:
        for file in split_files(spec.shards, split):
            table = pq.read_table(file, columns=_COLUMNS)
            decoded = decode_volumes(
                table.column("volume").to_pylist(), table.column("volume_shape").to_pylist()
            )
            for volume, mask, patient in zip(
                decoded,
                table.column("mask").to_pylist(),
                table.column("patient_pid").to_pylist(),
                strict=True,
            ):
                if mask is None:
                    excluded["no mask"] += 1
                    continue
                volumes.append(volume)
                masks.append(np.frombuffer(mask, np.uint8).reshape(volume.shape[1:]))
                patients.append(patient)
    if not volumes:
        raise UserError(f"segmentation: no study of splits {list(splits)} has a mask; ingest with masks")
    spacing = index.get("spacing") or (1.0, 1.0, 1.0)  # resized volumes: distances in voxels
    data = SegData(
        volumes_NCDHW=np.stack(volumes),
        masks_NDHW=np.stack(masks),
        patients_N=np.asarray(patients),
        regions=spec.task.region_labels,
        spacing=tuple(float(s) for s in spacing),
        scale_max=float(index["scale_max"]),
    )
    return data, excluded


def _tumour_strata(data: SegData) -> np.ndarray:
    """1 where a study has any labelled voxel: folds and label fractions keep normal studies balanced."""
    return (data.masks_NDHW.reshape(len(data.masks_NDHW), -1) > 0).any(1).astype(np.int64)


def run_segmentation(spec: DownstreamSpec, run_dir: Path) -> dict[str, Any]:
    data, excluded = load_segmentation_data(spec, spec.protocol.splits)
    strata = _tumour_strata(data)
    print(
        f"downstream: segmentation of {', '.join(data.regions)}: {len(strata)} studies of "
        f"{len(set(data.patients_N.tolist()))} patients, {int(strata.sum())} with tumour; left out "
        f"{dict(excluded) or 'none'}"
    )
    folds_N = patient_folds(data.patients_N, strata, spec.protocol.folds, spec.protocol.fold_seed)
    if spec.protocol.external_test:
        external, _ = load_segmentation_data(spec, [spec.protocol.external_test])
        data = _merged(data, external)
        folds_N = np.concatenate([folds_N, np.full(len(external.masks_NDHW), -1)])
        strata = _tumour_strata(data)
    results = _schedule(spec, data, strata, folds_N)
    from brainvlp.downstream.seg_report import write_segmentation_report

    report = write_segmentation_report(run_dir, spec, data, folds_N, results)
    print(f"downstream: report written to {report}")
    return {"runs": len(results), "report": str(report)}


def _merged(data: SegData, external: SegData) -> SegData:
    return SegData(
        volumes_NCDHW=np.concatenate([data.volumes_NCDHW, external.volumes_NCDHW]),
        masks_NDHW=np.concatenate([data.masks_NDHW, external.masks_NDHW]),
        patients_N=np.concatenate([data.patients_N, external.patients_N]),
        regions=data.regions,
        spacing=data.spacing,
        scale_max=data.scale_max,
    )


def _schedule(
    spec: DownstreamSpec, data: SegData, strata: np.ndarray, folds_N: np.ndarray
) -> list[tuple[Run, SegResult]]:
    """Every (model, fraction, seed, fold) run as a Ray task with the spec's resources."""
    res = spec.resources
    task = in_worker.options(num_cpus=res.cpus_per_run, num_gpus=res.gpus_per_run)
    data_ref = ray.put(data)
    shape = data.volumes_NCDHW.shape
    entries = {e.name: e for e in spec.models}
    inits = {
        e.name: None if e.network == "dynunet" else ray.put(resolve_init(e, shape[1], tuple(shape[2:])))
        for e in spec.models
    }
    pending = {}
    for run, rows in plan_runs(spec, strata, folds_N):
        args = (entries[run.model], inits[run.model], data_ref, spec.fit, rows, run.seed)
        pending[task.remote(res.threads_per_run, run_segmentation_once, *args)] = run
    return gather_runs(pending)
