"""``kind: annotate``: a manifest's reports annotated by a local annotator into a new manifest for ingest.

Method. The driver reads the manifest (``data.manifest.read_records``: CSV, TSV, JSONL or Parquet) and
splits its readable rows, in order, into parts of ``rows_per_shard`` rows. A part is keyed by a digest of
its rows and of the annotator settings that decide the answers (config without its resources, prompt
templates, model file sizes and times); ``<dir>/_parts/part-XXXXX.parquet`` holds its annotations (row
number, rewritten report, findings, status, calls) and ``part-XXXXX.json`` its digest, written after the
Parquet file is in place, both atomically. A rerun skips parts whose record matches, so an interrupted run
resumes, and a changed prompt or model redoes everything.

The remaining rows go through Ray Data: ``from_items`` (row number, part, report text only: the other
columns stay on the driver) and ``map_batches`` with ``base.AnnotateBatch``, ``actors`` actors that each
build the annotator once (``num_gpus`` each for a model). The driver streams the results and writes each
part as soon as all its rows are back.

Output, in ``<dir>`` (``<run_dir>/annotate/`` in a pipeline): ``manifest.parquet`` (or ``.jsonl``, by
``output_format``) with the input's rows and columns, in order, plus the findings column (compact JSON,
empty unless ok) and ``annotation_status``; the report column holds the rewrite when the annotator
rewrites. Image, mask and DICOM paths are made absolute (relative ones were relative to the input
manifest's folder), so ingest finds them from the run directory. Records that could not be read at all are
left out and counted. ``summary.json`` holds counts only (statuses, parts, timing), the throughput and a
projection to brat's 80,000 reports on 8 GPUs from the rate per actor measured here. Neither report text
nor any finding value is printed, logged or put in the summary.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from brainvlp.annotate.base import OK, AnnotateBatch
from brainvlp.annotate.config import DEFAULT_SEQUENCES, AnnotateSpec, read_prompts
from brainvlp.data import storage
from brainvlp.data.manifest import read_records
from brainvlp.data.shards import write_table_atomic
from brainvlp.errors import UserError
from brainvlp.spec import SpecError, to_plain

PARTS_DIR = "_parts"
STATUS_COLUMN = "annotation_status"
PROJECTION_REPORTS, PROJECTION_ACTORS = 80_000, 8  # brat section 8: 80,000 reports; one actor per GPU
VERSION = 1  # of the method and part format: a change redoes every part
# How fast, not what: outside the digest.
_RESOURCES = ("actors", "batch_size", "num_cpus", "num_gpus", "gpu_memory_utilization")
PART_SCHEMA = pa.schema(
    [("row", pa.int64()), ("report", pa.string()), ("findings", pa.string()), ("status", pa.string()),
     ("calls", pa.int64())]
)  # fmt: skip


def run_annotate(spec: AnnotateSpec, run_dir: Path) -> dict[str, Any]:
    """Annotate (or resume annotating) ``spec.manifest`` into ``run_dir``; returns the summary."""
    if spec.manifest is None:
        raise SpecError("manifest", "required: path or URI of a CSV, TSV, JSONL or Parquet manifest")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = spec.manifest if storage.is_uri(spec.manifest) else os.path.abspath(spec.manifest)
    columns, rows, unreadable = _read_manifest(spec, manifest)
    prompts = read_prompts(spec.annotator)
    settings = _settings(spec, prompts)
    size = spec.rows_per_shard
    chunks = [rows[start : start + size] for start in range(0, len(rows), size)]
    digests = [_digest(chunk, settings) for chunk in chunks]
    parts = run_dir / PARTS_DIR
    todo = _todo(parts, digests)
    if len(todo) < len(chunks):
        print(f"annotate: resuming, {len(chunks) - len(todo)} of {len(chunks)} parts already done")
    started = time.perf_counter()
    if todo:
        _annotate_parts(spec, prompts, chunks, todo, digests, parts)
    seconds = time.perf_counter() - started
    results = [result for index in range(len(chunks)) for result in _read_part(parts, index)]
    output = _write_output(spec, manifest, columns, rows, results, run_dir)
    annotated = sum(len(chunks[index]) for index in todo)
    summary = _summary(spec, results, annotated, seconds, (len(chunks), len(todo)), unreadable)
    summary["output"] = str(output)
    _write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, sort_keys=True))
    _print_summary(summary)
    return summary


def _read_manifest(spec: AnnotateSpec, manifest: str) -> tuple[list[str], list[dict[str, Any]], int]:
    """(columns, readable rows in order, number of unreadable records) of the manifest."""
    ids = [spec.columns.patient_id, spec.columns.study_id]
    records = read_records(manifest, spec.manifest_encoding, ids)
    if not records.rows:
        raise UserError(f"manifest {manifest} has no readable rows")
    if spec.columns.report not in records.columns:
        raise UserError(
            f"manifest {manifest}: no report column {spec.columns.report!r} (columns.report); "
            f"found columns {records.columns}"
        )
    if records.bad:
        # Line numbers only: an unreadable record may hold anything. Ingest of the input would reject them.
        lines = ", ".join(str(line) for line, _ in records.bad[:10])
        print(f"annotate: {len(records.bad)} unreadable manifest records left out (lines {lines})")
    return records.columns, [row for _, row in records.rows], len(records.bad)


def _settings(spec: AnnotateSpec, prompts: Mapping[str, str]) -> dict[str, Any]:
    """What decides a part's annotations besides its rows."""
    annotator = {k: v for k, v in to_plain(spec.annotator).items() if k not in _RESOURCES}
    return {
        "version": VERSION,
        "annotator": annotator,
        "files": spec.annotator.fingerprint(),
        "prompts": dict(prompts),
        "report_column": spec.columns.report,
    }


def _digest(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> str:
    text = json.dumps({"rows": list(rows), "settings": settings}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _part(parts: Path, index: int, suffix: str) -> Path:
    return parts / f"part-{index:05d}.{suffix}"


def _todo(parts: Path, digests: Sequence[str]) -> list[int]:
    """Parts to annotate: those without a record of the same digest beside a complete Parquet file."""
    todo = []
    for index, digest in enumerate(digests):
        record, table = _part(parts, index, "json"), _part(parts, index, "parquet")
        try:
            found = json.loads(record.read_text())
            done = found["digest"] == digest and table.stat().st_size == found["bytes"]
        except (OSError, ValueError, KeyError):
            done = False
        if not done:
            todo.append(index)
    return todo


def _annotate_parts(
    spec: AnnotateSpec,
    prompts: Mapping[str, str],
    chunks: Sequence[Sequence[Mapping[str, Any]]],
    todo: Sequence[int],
    digests: Sequence[str],
    parts: Path,
) -> None:
    """Ray Data over the rows of the ``todo`` parts; each part is written as soon as it is complete."""
    import ray

    parts.mkdir(parents=True, exist_ok=True)
    for stale in parts.glob(".tmp-*"):  # left by an interrupted run
        stale.unlink()
    size, column, annotator = spec.rows_per_shard, spec.columns.report, spec.annotator
    items = [
        {"row": index * size + offset, "part": index, "report": row.get(column)}
        for index in todo
        for offset, row in enumerate(chunks[index])
    ]
    dataset = ray.data.from_items(items).map_batches(
        AnnotateBatch,
        fn_constructor_kwargs={"config": annotator, "prompts": dict(prompts)},
        batch_size=annotator.batch_size,
        compute=ray.data.ActorPoolStrategy(size=annotator.actors),  # fixed: each actor loads its model once
        num_cpus=annotator.num_cpus,
        num_gpus=annotator.num_gpus,
    )
    pending: dict[int, list[dict[str, Any]]] = {index: [] for index in todo}
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for row, part, report, findings, status, calls in zip(
            *(batch[key] for key in ("row", "part", "report", "findings", "status", "calls")), strict=True
        ):
            pending[int(part)].append(
                {"row": int(row), "report": _text(report), "findings": _text(findings),
                 "status": str(status), "calls": int(calls)}
            )  # fmt: skip
            if len(pending[int(part)]) == len(chunks[int(part)]):
                _write_part(parts, int(part), digests[int(part)], pending.pop(int(part)))
    if pending:
        raise RuntimeError(f"annotate: parts {sorted(pending)} came back incomplete from Ray Data")


def _text(value: Any) -> str | None:
    """A text cell back from Ray Data: a column of nulls only may arrive as NaN floats."""
    return value if isinstance(value, str) else None


def _write_part(parts: Path, index: int, digest: str, results: list[dict[str, Any]]) -> None:
    table = _part(parts, index, "parquet")
    write_table_atomic(sorted(results, key=lambda r: r["row"]), PART_SCHEMA, table)
    # Written after the part is in place: a record always describes a complete part.
    record = {"digest": digest, "rows": len(results), "bytes": table.stat().st_size}
    _write_atomic(_part(parts, index, "json"), json.dumps(record, sort_keys=True))


def _read_part(parts: Path, index: int) -> list[dict[str, Any]]:
    return pq.read_table(_part(parts, index, "parquet")).to_pylist()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _write_output(
    spec: AnnotateSpec,
    manifest: str,
    columns: Sequence[str],
    rows: Sequence[Mapping[str, Any]],
    results: Sequence[Mapping[str, Any]],
    run_dir: Path,
) -> Path:
    """The annotated manifest (see the module docstring), written atomically."""
    if [r["row"] for r in results] != list(range(len(rows))):
        raise RuntimeError(f"annotate: {len(results)} annotations for {len(rows)} rows, or out of order")
    findings = spec.columns.findings or "findings"
    names = list(dict.fromkeys([*columns, findings, STATUS_COLUMN]))
    base = storage.parent(manifest)
    candidates = (*(spec.sequences or DEFAULT_SEQUENCES), spec.columns.mask, spec.columns.dicom)
    paths = [c for c in candidates if c and c in columns]
    out = []
    for row, result in zip(rows, results, strict=True):
        new = {name: row.get(name) for name in columns}
        for name in paths:
            if isinstance(new[name], str) and new[name].strip():
                new[name] = storage.join(base, new[name].strip())
        if result["report"] is not None:
            new[spec.columns.report] = result["report"]
        new[findings], new[STATUS_COLUMN] = result["findings"], result["status"]
        out.append(new)
    path = run_dir / spec.output_name
    if spec.output_format == "parquet":
        write_table_atomic(out, pa.schema([(name, pa.string()) for name in names]), path)
    else:
        lines = (json.dumps({name: row.get(name) for name in names}, ensure_ascii=False) for row in out)
        _write_atomic(path, "".join(f"{line}\n" for line in lines))
    return path


def _summary(
    spec: AnnotateSpec,
    results: Sequence[Mapping[str, Any]],
    annotated: int,
    seconds: float,
    parts: tuple[int, int],
    unreadable: int,
) -> dict[str, Any]:
    """Counts, throughput and projection (no text, no finding value)."""
    statuses = Counter(r["status"] for r in results)
    actors = spec.annotator.actors
    rate = annotated / seconds if annotated and seconds > 0 else None
    per_actor = rate / actors if rate else None
    hours = PROJECTION_REPORTS / (per_actor * PROJECTION_ACTORS) / 3600 if per_actor else None
    return {
        "annotator": spec.annotator.name,
        "rows": len(results),
        "ok": statuses[OK],
        "invalid": {reason: n for reason, n in sorted(statuses.items()) if reason != OK},
        "retried": sum(r["calls"] > 1 for r in results),
        "unreadable_records": unreadable,
        "parts": {"total": parts[0], "annotated": parts[1], "reused": parts[0] - parts[1]},
        "annotated_rows": annotated,
        "seconds": round(seconds, 3),
        "reports_per_s": rate,
        "actors": actors,
        "reports_per_s_per_actor": per_actor,
        "projection": {
            "reports": PROJECTION_REPORTS,
            "gpus": PROJECTION_ACTORS,
            "hours": hours,
            "basis": f"{PROJECTION_REPORTS} / (rate per actor x {PROJECTION_ACTORS}), the rate measured on "
            f"this hardware with annotator {spec.annotator.name!r} (start-up and model loading included); "
            "null when this run annotated nothing",
        },
    }


def _print_summary(summary: Mapping[str, Any]) -> None:
    invalid = summary["invalid"]
    reasons = ", ".join(f"{reason} {n}" for reason, n in invalid.items()) or "none"
    print(
        f"annotate: {summary['rows']} reports -> {summary['ok']} with findings, {sum(invalid.values())} "
        f"without ({reasons}); {summary['retried']} retried once"
    )
    rate, name = summary["reports_per_s"], summary["annotator"]
    if rate is None:
        print("annotate: throughput not measured: every part was already annotated")
        return
    print(
        f"annotate: throughput {rate:.2f} reports/s = {summary['reports_per_s_per_actor']:.2f} per actor x "
        f"{summary['actors']} actor(s) ({summary['annotated_rows']} reports in {summary['seconds']:.1f} s, "
        f"start-up included), measured on this hardware with annotator {name!r}"
    )
    hours = summary["projection"]["hours"]
    print(
        f"annotate: projection: {PROJECTION_REPORTS:,} reports on {PROJECTION_ACTORS} GPUs (one actor each) "
        f"= {PROJECTION_REPORTS:,} / ({summary['reports_per_s_per_actor']:.2f} x {PROJECTION_ACTORS}) s "
        f"= {hours:.2f} h, extrapolated from this run's rate per actor (this hardware, annotator {name!r})"
    )
