"""Ingest: a manifest of NIfTI studies and reports -> Parquet shards + rejects + index, as Ray tasks.

The driver reads the manifest (rejecting rows that cannot be processed at all: missing ids, duplicate study
ids), splits by patient, pseudonymises patients and plans shards (``plan.py``). One Ray task per shard
then runs on the cluster's CPUs; each preprocesses its studies, writes the shard atomically and then a
small progress record with the shard's rows, checksum and rejects. A re-run with the same inputs recomputes
the same plan and skips shards whose record exists, so an interrupted ingest resumes where it stopped. At
the end the driver checks that every input study is in exactly one shard or in the rejects, and that no
patient spans two splits, before it writes ``index.json``: the index is the mark of a complete ingest.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
import traceback
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from brainvlp.data import manifest as manifest_io
from brainvlp.data.dicom_ingest import dicom_sources, write_selection
from brainvlp.data.errors import RejectError
from brainvlp.data.ingest_tasks import run_tasks
from brainvlp.data.limits import IngestLimits, time_budget
from brainvlp.data.nifti import VolumeConfig, load_study
from brainvlp.data.plan import plan_digest, plan_shards, shard_capacity
from brainvlp.data.reports import ReportConfig, TokenizedReport, prepare_report
from brainvlp.data.series_select import DEFAULT_RULES, SelectionRule
from brainvlp.data.shards import (
    REJECT_SCHEMA,
    SCHEMA,
    read_index,
    sha256_file,
    write_index,
    write_table_atomic,
)
from brainvlp.data.splits import SplitConfig, assign_splits, check_no_leakage, pseudonymise
from brainvlp.errors import InputConflictError
from brainvlp.spec import JobSpec, PositiveFloat, PositiveInt, SpecError, to_plain
from brainvlp.tokenization import load_tokenizer

log = logging.getLogger(__name__)

PROGRESS_DIR = "_progress"  # one JSON record per finished shard, plus the plan digest


@dataclass
class IngestSpec(JobSpec):
    kind: Literal["ingest"] = "ingest"
    # CSV, TSV, JSONL or Parquet; a local path or a filesystem URI (s3://, gs://, file://). In a pipeline,
    # the phantom step's manifest by default.
    manifest: str | None = None
    # The manifest's text encoding (CSV, TSV, JSONL), or "auto" to detect it (charset-normalizer).
    manifest_encoding: str = "utf-8"
    sequences: tuple[str, ...] = ("t1c", "flair")  # manifest columns holding image paths, in channel order
    columns: manifest_io.ManifestColumns = field(default_factory=manifest_io.ManifestColumns)
    # DICOM input (columns.dicom): per sequence, the rule that picks its series; unset sequences use
    # data.series_select.DEFAULT_RULES (t1c: brat-style T1 post-contrast patterns, t1, t2, flair).
    series: dict[str, SelectionRule] = field(default_factory=dict)
    missing_sequence: Literal["zero", "reject"] = "zero"
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    tokenizer: str = "builtin:minilm"  # must be the pretraining text encoder's tokenizer
    splits: SplitConfig = field(default_factory=SplitConfig)
    limits: IngestLimits = field(default_factory=IngestLimits)  # per-study time, size and memory budgets
    shard_mb: PositiveFloat = 256.0  # bound on a shard's uncompressed rows
    min_shards: PositiveInt = 32  # small ingests still spread over this many tasks
    workers: PositiveInt | None = None  # concurrent shard tasks; None: every CPU of the cluster
    # The pseudonymisation key comes from this environment variable or else from ``pseudonym_key_file``
    # (a path or URI), never from the spec itself.
    pseudonym_key_env: str = "BRAINVLP_PSEUDONYM_KEY"
    pseudonym_key_file: str | None = None

    def validate(self, path: str) -> None:
        if not self.sequences:
            raise SpecError(f"{path}.sequences", "at least one sequence column is required")
        if self.columns.dicom:
            unruled = [s for s in self.sequences if s not in self.series and s not in DEFAULT_RULES]
            if unruled:
                raise SpecError(f"{path}.series", f"no series rule for {unruled}; defaults exist for "
                                f"{', '.join(DEFAULT_RULES)}")  # fmt: skip
        elif self.series:
            raise SpecError(f"{path}.series", "series rules pick DICOM series: set columns.dicom")
        if not path and self.manifest is None:  # run on its own: no pipeline step will provide it
            raise SpecError("manifest", "required: path or URI of a CSV, TSV, JSONL or Parquet manifest")

    def bytes_per_study(self) -> int:
        voxels = int(np.prod(self.volume.shape))
        mask = voxels if self.columns.mask else 0
        return len(self.sequences) * voxels * 2 + mask + self.report.max_tokens * 8

    def settings(self) -> dict[str, Any]:
        """What determines shard contents beyond the studies themselves (part of the plan digest)."""
        keys = (
            "sequences",
            "columns",
            "series",
            "missing_sequence",
            "volume",
            "report",
            "tokenizer",
            "limits",
        )
        return {key: to_plain(getattr(self, key)) for key in keys}


SELECTION_KEY = "_selection"  # a DICOM study's series choices travel with its row to write_shard
# What an image-only ingest (``columns.report: null``) stores for the text columns: nothing.
NO_REPORT = TokenizedReport(
    input_ids=[], sentence_spans=[], sentence_sections=[], num_sentences=0, truncated=False
)


def _study_row(task: Mapping[str, Any], spec: IngestSpec, tokenizer: Any) -> dict[str, Any]:
    """Preprocess one study into a shard row; raises RejectError for bad input."""
    selection = None
    if task.get("dicom"):
        paths, selection = dicom_sources(task, spec.sequences, spec.series, spec.limits)
    else:
        paths = {seq: task["images"][seq] for seq in spec.sequences}
    study = load_study(
        paths, spec.volume, mask_path=task["mask"], missing=spec.missing_sequence, limits=spec.limits
    )
    report = prepare_report(task["report"], tokenizer, spec.report) if spec.columns.report else NO_REPORT
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
        "sentence_sections": report.sentence_sections,
        "truncated": report.truncated,
        "report_text": report.text if spec.report.keep_text and spec.columns.report else None,
        "findings": task["findings"],
        SELECTION_KEY: selection,  # taken out before the row is written (write_shard)
    }


def _guarded_row(task: Mapping[str, Any], spec: IngestSpec, tokenizer: Any) -> dict[str, Any] | RejectError:
    """One study's row, or the reject it earned, within its time budget; nothing it does escapes."""
    try:
        with time_budget(spec.limits.study_seconds):
            return _study_row(task, spec, tokenizer)
    except RejectError as err:
        return err
    except Exception as exc:  # one study's unforeseen failure must not end the job
        return _internal_error(exc)


def probe_study(task: dict[str, Any], spec: IngestSpec) -> str:
    """Ray task: process one study and discard it. Run alone, study by study, after a shard's worker died
    in every attempt, it finds the study that kills workers (``ingest_tasks``)."""
    outcome = _guarded_row(task, spec, load_tokenizer(spec.tokenizer))
    return outcome.reason if isinstance(outcome, RejectError) else "ok"


def write_shard(
    plan: dict[str, Any], spec: IngestSpec, out_dir: str, excluded: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Ray task: preprocess one planned shard's studies, write the shard, then its record. Studies in
    ``excluded`` (study id -> detail) killed their worker when run alone and go straight to the rejects."""
    start = time.perf_counter()
    tokenizer = load_tokenizer(spec.tokenizer)
    rows, rejects, selection, truncated, slowest = [], [], [], 0, 0.0
    for task in plan["studies"]:
        began = time.perf_counter()
        if excluded and task["study_id"] in excluded:
            outcome = RejectError("worker_died", excluded[task["study_id"]])
        else:
            outcome = _guarded_row(task, spec, tokenizer)
        if isinstance(outcome, RejectError):
            rejects.append(manifest_io.reject_record(task, outcome))
        else:
            selection += outcome.pop(SELECTION_KEY) or []
            rows.append(outcome)
            truncated += outcome["truncated"]
        slowest = max(slowest, time.perf_counter() - began)
    record = {"file": plan["file"], "split": plan["split"], "rows": len(rows), "sha256": "", "bytes": 0}
    if rows:
        path = Path(out_dir) / plan["file"]
        write_table_atomic(rows, SCHEMA, path)
        record.update(sha256=sha256_file(path), bytes=path.stat().st_size)
    record.update(
        rejects=rejects,
        selection=selection,
        truncated=truncated,
        seconds=round(time.perf_counter() - start, 3),
        slowest_study_seconds=round(slowest, 3),
        # The worker's lifetime peak: an upper bound of what any of its studies needed.
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    # Written after the shard is in place: a record always describes a complete shard.
    _write_json_atomic(Path(out_dir) / PROGRESS_DIR / f"{plan['file']}.json", record)
    return {"file": plan["file"], "studies": len(plan["studies"]), "rejects": len(rejects)}


def _internal_error(exc: Exception) -> RejectError:
    """A reject for an unforeseen failure: the exception type and where it arose, never its message (which
    may quote a path, an id or report text)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    log.warning("ingest: a study failed with %s%s; rejected as internal_error", type(exc).__name__, where)
    return RejectError("internal_error", f"{type(exc).__name__}{where}")


def _write_json_atomic(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(content, sort_keys=True))
    os.replace(tmp, path)


def run_ingest(spec: IngestSpec, run_dir: Path) -> dict[str, Any]:
    """Run (or resume) the ingest job into ``run_dir``; returns the index it wrote."""
    if spec.manifest is None:
        raise SpecError("manifest", "required: path or URI of a CSV, TSV, JSONL or Parquet manifest")
    start = time.perf_counter()
    studies, early_rejects = manifest_io.read_studies(
        spec.manifest, spec.columns, spec.sequences, encoding=spec.manifest_encoding, limits=spec.limits
    )
    num_input = len(studies) + len(early_rejects)
    assign_splits(studies, spec.splits)
    key = manifest_io.pseudonym_key(spec.pseudonym_key_env, spec.pseudonym_key_file, run_dir)
    for study in studies:
        study["patient_pid"] = pseudonymise(study.pop("patient_id"), key)
    tokenizer = load_tokenizer(spec.tokenizer)  # fail here, not inside every task, if it cannot load
    plans = plan_shards(
        studies,
        capacity=shard_capacity(spec.bytes_per_study(), spec.shard_mb),
        min_shards=spec.min_shards,
        seed=spec.splits.seed,
    )
    digest = plan_digest(plans, spec.settings())
    done = _prepare_run_dir(run_dir, digest, plans)
    if done is None:
        print(f"ingest: {run_dir} already holds this ingest, complete; nothing to do")
        return read_index(run_dir)
    todo = [plan for plan in plans if plan["file"] not in done]
    if done:
        print(f"ingest: resuming, {len(done)} of {len(plans)} shards already done")
    processed = sum(len(p["studies"]) for p in todo)
    run_tasks(todo, spec, run_dir, processed, shard_fn=write_shard, probe_fn=probe_study)
    records = [_read_record(run_dir, plan["file"]) for plan in plans]
    rejects = early_rejects + [r for record in records for r in record.pop("rejects")]
    selection = [r for record in records for r in record.pop("selection", [])]
    write_table_atomic(
        sorted(rejects, key=lambda r: r["manifest_row"]), REJECT_SCHEMA, run_dir / "rejects.parquet"
    )
    shards = [r for r in records if r["rows"]]
    _verify(run_dir, shards, num_input, len(rejects))
    index = _index(spec, num_input, shards, rejects, len(tokenizer), tokenizer.pad_token_id or 0)
    if spec.columns.dicom:
        index["selection"] = write_selection(selection, run_dir)
    write_index(run_dir, {"manifest": spec.manifest, "plan_sha256": digest, **index})
    _print_summary(index, records, processed, seconds=time.perf_counter() - start)
    return read_index(run_dir)


def _prepare_run_dir(run_dir: Path, digest: str, plans: list[dict[str, Any]]) -> set[str] | None:
    """Shards already done in ``run_dir`` (None: the whole ingest is); an error if it holds another plan."""
    progress = run_dir / PROGRESS_DIR
    digest_file = progress / "plan.sha256"
    found = [digest_file.read_text()] if digest_file.exists() else []
    if (run_dir / "index.json").exists():
        found.append(read_index(run_dir).get("plan_sha256"))
    if any(previous != digest for previous in found):
        raise InputConflictError(
            f"{run_dir} holds an ingest of another manifest, spec or pseudonymisation key (the plan "
            "differs): write to another run_name or output_root, or delete that directory to start over"
        )
    if (run_dir / "index.json").exists():
        return None
    progress.mkdir(parents=True, exist_ok=True)
    digest_file.write_text(digest)
    for stale in [*run_dir.glob(".tmp-*"), *progress.glob(".tmp-*")]:  # left by an interrupted run
        stale.unlink()
    done = set()
    for plan in plans:
        record_file = progress / f"{plan['file']}.json"
        if record_file.exists():
            record = json.loads(record_file.read_text())
            shard = run_dir / plan["file"]
            if record["rows"] == 0 or (shard.exists() and shard.stat().st_size == record["bytes"]):
                done.add(plan["file"])
    return done


def _read_record(run_dir: Path, file: str) -> dict[str, Any]:
    return json.loads((run_dir / PROGRESS_DIR / f"{file}.json").read_text())


def _verify(run_dir: Path, shards: list[dict[str, Any]], num_input: int, num_rejects: int) -> None:
    """Re-read ids and splits from the shards themselves: no study lost or duplicated, no patient leaked."""
    tables = [
        pq.read_table(run_dir / s["file"], columns=["study_id", "patient_pid", "split"]) for s in shards
    ]
    study_ids = [sid for table in tables for sid in table["study_id"].to_pylist()]
    if len(study_ids) + num_rejects != num_input or len(set(study_ids)) != len(study_ids):
        raise RuntimeError(
            f"ingest lost or duplicated studies: {num_input} in, {len(study_ids)} rows in shards "
            f"({len(set(study_ids))} distinct) + {num_rejects} rejected"
        )
    check_no_leakage(
        pair
        for table in tables
        for pair in zip(table["patient_pid"].to_pylist(), table["split"].to_pylist(), strict=True)
    )


def _print_summary(
    index: dict[str, Any], records: list[dict[str, Any]], processed: int, seconds: float
) -> None:
    """Totals of the whole ingest; the rate covers the studies processed by this run."""
    splits = ", ".join(f"{name} {count}" for name, count in index["splits"].items())
    reasons = ", ".join(f"{reason} {n}" for reason, n in index["rejects"]["by_reason"].items()) or "none"
    print(
        f"ingest: {index['input_studies']} studies in -> {sum(index['splits'].values())} in "
        f"{len(index['shards'])} shards ({splits}) + {index['rejects']['count']} rejected ({reasons})"
    )
    # Records written before the budgets existed lack these figures.
    slowest = max((r.get("slowest_study_seconds", 0.0) for r in records), default=0.0)
    peak = max((r.get("peak_rss_mb", 0.0) for r in records), default=0.0)
    print(
        f"ingest: {processed} studies processed in {seconds:.1f} s ({processed / max(seconds, 1e-9):.2f}/s), "
        f"{sum(r['bytes'] for r in records) / 1e6:.1f} MB written, {index['truncated_reports']} reports "
        f"truncated; slowest study {slowest:.1f} s, peak shard-worker memory {peak:.0f} MB"
    )
    selection = index.get("selection")
    if selection:  # a DICOM ingest: how often each sequence found its series
        counts = ", ".join(
            f"{sequence} {n['chosen']} chosen / {n['unmatched']} unmatched"
            for sequence, n in selection["by_sequence"].items()
        )
        print(f"ingest: series selection: {counts} (each choice and its reason in {selection['file']})")


def _index(
    spec: IngestSpec, num_input: int, shards: list[dict], rejects: list[dict], vocab_size: int, pad_id: int
) -> dict[str, Any]:
    splits: Counter[str] = Counter()
    for shard in shards:
        splits[shard["split"]] += shard["rows"]
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
        "shards": [{key: s[key] for key in ("file", "split", "rows", "sha256", "bytes")} for s in shards],
        "truncated_reports": sum(s["truncated"] for s in shards),
        "report_text": spec.report.keep_text and spec.columns.report is not None,
        # False: image-only shards (columns.report: null), for segmentation; pretraining refuses them.
        "reports": spec.columns.report is not None,
        "rejects": {
            "count": len(rejects),
            "by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
            "file": "rejects.parquet",
        },
    }
