"""Ingest: a manifest of NIfTI studies and reports -> Parquet shards + rejects + index, with Ray Data.

The driver reads the manifest, rejects rows that cannot be processed at all (missing ids, duplicate study
ids), pseudonymises patients, splits by patient and plans shards of ``shard_size`` studies of one split.
Ray Data then runs one task per planned shard on the cluster's CPUs: each loads and preprocesses its
studies, writes its shard atomically and returns its row count, checksum and rejects. Every input row ends
in exactly one of the shards or the rejects table; the index counts both.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from brainvlp.data import manifest as manifest_io
from brainvlp.data.errors import RejectError
from brainvlp.data.nifti import VolumeConfig, load_study
from brainvlp.data.reports import ReportConfig, prepare_report
from brainvlp.data.shards import REJECT_SCHEMA, SCHEMA, sha256_file, write_index, write_table_atomic
from brainvlp.data.splits import SplitConfig, assign_splits, pseudonymise
from brainvlp.data.tokenizers import load_tokenizer
from brainvlp.spec import SpecError

log = logging.getLogger(__name__)


@dataclass
class IngestSpec:
    kind: Literal["ingest"] = "ingest"
    run_name: str | None = None
    output_root: str = "runs"
    manifest: str | None = None  # CSV or Parquet; in a pipeline, the phantom step's manifest by default
    sequences: tuple[str, ...] = ("t1c", "flair")  # manifest columns holding image paths, in channel order
    columns: manifest_io.ManifestColumns = field(default_factory=manifest_io.ManifestColumns)
    missing_sequence: Literal["zero", "reject"] = "zero"
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tokenizer: str = "builtin:minilm"  # must be the pretraining text encoder's tokenizer
    splits: SplitConfig = field(default_factory=SplitConfig)
    shard_size: int = 64
    # The pseudonymisation key is read from this environment variable, never from the spec itself.
    pseudonym_key_env: str = "BRAINVLP_PSEUDONYM_KEY"

    def validate(self, path: str) -> None:
        if not self.sequences:
            raise SpecError(f"{path}.sequences", "at least one sequence column is required")
        if self.shard_size < 1:
            raise SpecError(f"{path}.shard_size", f"must be >= 1, found {self.shard_size}")


def _study_row(task: Mapping[str, Any], spec: IngestSpec, tokenizer: Any) -> dict[str, Any]:
    """Preprocess one study into a shard row; raises RejectError for bad input."""
    paths = {seq: task["images"][seq] for seq in spec.sequences}
    study = load_study(paths, spec.volume, mask_path=task["mask"], missing=spec.missing_sequence)
    report = prepare_report(task["report"], tokenizer, spec.report)
    return {
        "study_id": task["study_id"],
        "patient_pid": task["patient_pid"],
        "split": task["split"],
        "fold": task["fold"],
        "volume": np.ascontiguousarray(study.volume, dtype=np.int16).tobytes(),
        "volume_shape": list(study.volume.shape),
        "spacing": list(study.spacing),
        "present": list(study.present),
        "mask": None if study.mask is None else np.ascontiguousarray(study.mask, dtype=np.uint8).tobytes(),
        "input_ids": report.input_ids,
        "sentence_spans": [list(span) for span in report.sentence_spans],
        "truncated": report.truncated,
        "findings": task["findings"],
    }


def write_shard(plan: dict[str, Any], spec: IngestSpec, out_dir: str) -> dict[str, Any]:
    """Ray Data map function: preprocess one planned shard's studies and write the shard."""
    tokenizer = load_tokenizer(spec.tokenizer)
    rows, rejects = [], []
    for task in plan["studies"]:
        try:
            rows.append(_study_row(task, spec, tokenizer))
        except RejectError as err:
            rejects.append(manifest_io.reject_record(task, err))
    result = {
        "file": plan["file"],
        "split": plan["split"],
        "rows": len(rows),
        "sha256": "",
        "rejects": rejects,
    }
    if rows:
        path = Path(out_dir) / plan["file"]
        write_table_atomic(rows, SCHEMA, path)
        result["sha256"] = sha256_file(path)
    return result


def plan_shards(tasks: list[dict[str, Any]], shard_size: int) -> list[dict[str, Any]]:
    """Group studies by split into shards of at most ``shard_size``, in manifest order."""
    plans = []
    for split in sorted({t["split"] for t in tasks}):
        in_split = [t for t in tasks if t["split"] == split]
        for number, start in enumerate(range(0, len(in_split), shard_size)):
            chunk = in_split[start : start + shard_size]
            plans.append({"file": f"{split}-{number:05d}.parquet", "split": split, "studies": chunk})
    return plans


def run_ingest(spec: IngestSpec, run_dir: Path) -> dict[str, Any]:
    """Run the ingest job into ``run_dir``; returns the index it wrote."""
    import ray

    if spec.manifest is None:
        raise SpecError("manifest", "required: path of a CSV or Parquet manifest")
    manifest_path = Path(spec.manifest)
    studies, rejects = manifest_io.read_studies(manifest_path, spec.columns, spec.sequences)
    num_input = len(studies) + len(rejects)
    assign_splits(studies, spec.splits)
    key = manifest_io.pseudonym_key(spec.pseudonym_key_env, run_dir)
    for study in studies:
        study["patient_pid"] = pseudonymise(study.pop("patient_id"), key)
    tokenizer = load_tokenizer(spec.tokenizer)  # fail here, not inside every task, if it cannot load
    plans = plan_shards(studies, spec.shard_size)
    log.info("ingest: %d studies in %d shards (%d rejected up front)", len(studies), len(plans), len(rejects))
    results = (
        ray.data.from_items(plans, override_num_blocks=max(1, len(plans)))
        .map(write_shard, fn_kwargs={"spec": spec, "out_dir": str(run_dir)}, num_cpus=1)
        .take_all()
    )
    for result in results:
        rejects.extend(result.pop("rejects"))
    shards = sorted((r for r in results if r["rows"]), key=lambda r: r["file"])
    write_table_atomic(
        sorted(rejects, key=lambda r: r["manifest_row"]), REJECT_SCHEMA, run_dir / "rejects.parquet"
    )
    index = _index(spec, num_input, shards, rejects, len(tokenizer), tokenizer.pad_token_id or 0)
    write_index(run_dir, {"manifest": str(manifest_path), **index})
    total = sum(s["rows"] for s in shards)
    print(f"ingest: {num_input} studies in, {total} in {len(shards)} shards, {len(rejects)} rejected")
    return index


def _index(
    spec: IngestSpec, num_input: int, shards: list[dict], rejects: list[dict], vocab_size: int, pad_id: int
) -> dict[str, Any]:
    splits: Counter[str] = Counter()
    for shard in shards:
        splits[shard["split"]] += shard["rows"]
    if num_input != sum(splits.values()) + len(rejects):  # the no-silent-loss invariant
        raise RuntimeError(
            f"ingest lost studies: {num_input} in, {sum(splits.values())} + {len(rejects)} out"
        )
    return {
        "input_studies": num_input,
        "sequences": list(spec.sequences),
        "volume_shape": [len(spec.sequences), *spec.volume.shape],
        "spacing": list(spec.volume.spacing),
        "scale_max": spec.volume.scale_max,
        "tokenizer": spec.tokenizer,
        "vocab_size": vocab_size,
        "pad_token_id": pad_id,
        "splits": dict(sorted(splits.items())),
        "shards": shards,
        "rejects": {
            "count": len(rejects),
            "by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
            "file": "rejects.parquet",
        },
    }
