"""Reading an ingest manifest (CSV, TSV, JSONL or Parquet) into per-study tasks, and the rejects it finds
up front.

The manifest and the paths in it may be local paths or filesystem URIs (``s3://``, ``gs://``, ``file://``);
image and mask paths may be absolute or relative to the manifest's folder. Rows without a patient or study
id, and repeated study ids, are rejected here (naming the manifest row), before any image is opened.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from brainvlp.data import storage
from brainvlp.data.errors import RejectError
from brainvlp.findings import study_clauses

log = logging.getLogger(__name__)

MANIFEST_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class ManifestColumns:
    """Manifest column names; image columns are the ingest spec's ``sequences``."""

    patient_id: str = "patient_id"
    study_id: str = "study_id"
    report: str = "report"
    mask: str | None = "mask"  # optional column
    findings: str | None = "findings"  # optional column of findings JSON


def _read_table(path: str) -> list[dict[str, Any]]:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in MANIFEST_FORMATS:
        raise ValueError(
            f"manifest {path}: unsupported format {suffix!r}; expected one of {MANIFEST_FORMATS}"
        )
    try:
        data = storage.read_bytes(path, gunzip=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"manifest {path} does not exist") from None
    if suffix == ".parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if suffix == ".jsonl":
        return _read_jsonl(path, data)
    try:
        return _read_csv(data, delimiter="\t" if suffix == ".tsv" else ",")
    except pa.ArrowInvalid as exc:
        # pyarrow quotes the offending row, which may hold a patient id or report text: keep only the
        # structural part of the message ("Expected 5 columns, got 3").
        reason = str(exc).split(":", 2)[1].strip() if str(exc).count(":") >= 2 else "malformed CSV"
        raise ValueError(f"manifest {path}: CSV parse error: {reason} (row content withheld)") from None


def _read_csv(data: bytes, delimiter: str) -> list[dict[str, Any]]:
    # Every column as text: ids such as 00123 must keep their leading zeros.
    read = pa_csv.ReadOptions(autogenerate_column_names=False)
    parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True)
    header = pa_csv.read_csv(io.BytesIO(data), read_options=read, parse_options=parse).schema.names
    convert = pa_csv.ConvertOptions(strings_can_be_null=True, column_types=dict.fromkeys(header, "string"))
    return pa_csv.read_csv(
        io.BytesIO(data), read_options=read, parse_options=parse, convert_options=convert
    ).to_pylist()


def _read_jsonl(path: str, data: bytes) -> list[dict[str, Any]]:
    rows = []
    for line_number, line in enumerate(data.decode("utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            # The message names the position only: the line itself may hold a report or a patient id.
            raise ValueError(f"manifest {path}, line {line_number}: invalid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"manifest {path}, line {line_number}: expected a JSON object per line")
        rows.append(row)
    return rows


def _text(value: Any) -> str | None:
    """A cell as text: Parquet and JSONL may type ids as numbers and findings as objects."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _check_columns(path: str, rows: list[dict[str, Any]], required: list[str]) -> None:
    available = list(rows[0]) if rows else []
    missing = [c for c in required if c not in available]
    if missing:
        raise ValueError(f"manifest {path}: missing column(s) {missing}; found columns {available}")


def check_findings(text: str, where: str) -> None:
    """Reject findings that are not a JSON object or whose clauses are malformed (training would fail on
    them much later, in the middle of a run)."""
    if not text:
        return
    try:
        findings = json.loads(text)
        if not isinstance(findings, dict):
            raise ValueError(f"expected a JSON object, found {type(findings).__name__}")
        study_clauses(findings)
    except ValueError as err:  # JSONDecodeError is a ValueError; its message holds no cell content
        raise RejectError("bad_findings", f"{where}: {err}") from None


def _resolve(path: str | None, base: str) -> str | None:
    if path is None or path.strip() == "":
        return None
    return storage.join(base, path.strip())


def read_studies(
    path: str | Path, columns: ManifestColumns, sequences: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tasks for the studies that can be attempted, and rejects for the rows that cannot."""
    path = str(path)
    base = storage.parent(path)
    rows = [{key: _text(value) for key, value in row.items()} for row in _read_table(path)]
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    _check_columns(path, rows, [columns.patient_id, columns.study_id, columns.report, *sequences])
    studies, rejects, seen = [], [], {}
    for row_number, row in enumerate(rows):
        task = {
            "manifest_row": row_number,
            "study_id": (row.get(columns.study_id) or "").strip(),
            "patient_id": (row.get(columns.patient_id) or "").strip(),
            "images": {seq: _resolve(row.get(seq), base) for seq in sequences},
            "mask": _resolve(row.get(columns.mask), base) if columns.mask else None,
            "report": row.get(columns.report),
            "findings": (row.get(columns.findings) or "") if columns.findings else "",
        }
        try:
            if not task["study_id"]:
                raise RejectError(
                    "missing_study_id", f"manifest row {row_number}: empty {columns.study_id!r}"
                )
            if not task["patient_id"]:
                raise RejectError(
                    "missing_patient_id", f"manifest row {row_number}: empty {columns.patient_id!r}"
                )
            if task["study_id"] in seen:
                raise RejectError(
                    "duplicate_study_id", f"same study id as manifest row {seen[task['study_id']]}"
                )
            check_findings(task["findings"], f"manifest row {row_number}: {columns.findings!r}")
        except RejectError as err:
            rejects.append(reject_record(task, err))
            continue
        seen[task["study_id"]] = row_number
        studies.append(task)
    return studies, rejects


def reject_record(task: dict[str, Any], err: RejectError) -> dict[str, Any]:
    """A rejects-table row: study id and manifest row, never the patient id or report text."""
    return {
        "study_id": task["study_id"],
        "manifest_row": task["manifest_row"],
        "reason": err.reason,
        "detail": err.detail,
    }


def pseudonym_key(env_var: str, key_file: str | None, run_dir: Path) -> bytes:
    """The pseudonymisation key: from ``env_var`` if set, else from ``key_file``; without either, a random
    key kept beside the shards (re-ingests into the same run directory then reuse it)."""
    value = os.environ.get(env_var)
    if value:
        return value.encode()
    if key_file:
        try:
            key = storage.read_bytes(key_file, gunzip=False).strip()
        except OSError as exc:
            raise ValueError(f"pseudonym_key_file {key_file}: cannot read ({type(exc).__name__})") from None
        if len(key) < 16:
            raise ValueError(
                f"pseudonym_key_file {key_file}: a key needs at least 16 bytes, found {len(key)}"
            )
        return key
    generated = run_dir / "pseudonym.key"
    if not generated.exists():
        log.warning(
            "neither %s nor pseudonym_key_file is set: using a random key stored in %s", env_var, generated
        )
        generated.write_text(secrets.token_hex(32))
        generated.chmod(0o600)
    return generated.read_text().encode()
