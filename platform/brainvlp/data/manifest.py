"""Reading an ingest manifest (CSV, TSV, JSONL or Parquet) into per-study tasks, and the rejects it finds
up front.

The manifest and the paths in it may be local paths or filesystem URIs (``s3://``, ``gs://``, ``file://``);
image and mask paths may be absolute or relative to the manifest's folder. Rows without a patient or study
id, repeated study ids, unreadable records (``manifest_formats``), over-long reports and findings off the
schema are rejected here (naming the manifest row and line), before any image is opened.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from brainvlp.data import manifest_formats, storage
from brainvlp.data.errors import RejectError
from brainvlp.data.limits import IngestLimits
from brainvlp.errors import MissingInputError, UserError
from brainvlp.findings import validate_findings

log = logging.getLogger(__name__)

MANIFEST_FORMATS = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class ManifestColumns:
    """Manifest column names; image columns are the ingest spec's ``sequences``."""

    patient_id: str = "patient_id"
    study_id: str = "study_id"
    report: str | None = "report"  # None: images without reports (BraTS), shards for segmentation only
    mask: str | None = "mask"  # optional column
    findings: str | None = "findings"  # optional column of findings JSON
    # DICOM input: the column of each study's DICOM folder, zip or tar (instead of a column per sequence;
    # ingest picks each sequence's series by the spec's rules, ``data.dicom_ingest``).
    dicom: str | None = None


def read_records(path: str, encoding: str, id_columns: list[str]) -> manifest_formats.Records:
    """The manifest's records by format (``manifest_formats``); errors that concern the whole file."""
    suffix = posixpath.splitext(path)[1].lower()
    if suffix not in MANIFEST_FORMATS:
        raise UserError(f"manifest {path}: unsupported format {suffix!r}; expected one of {MANIFEST_FORMATS}")
    try:
        data = storage.read_bytes(path, gunzip=False)
    except FileNotFoundError:
        raise MissingInputError(f"manifest {path} does not exist") from None
    except OSError as exc:
        raise UserError(f"manifest {path}: cannot read it ({type(exc).__name__})") from None
    if suffix == ".parquet":
        try:
            return manifest_formats.read_parquet(data)
        except (pa.ArrowInvalid, OSError) as exc:
            raise UserError(f"manifest {path}: not a readable Parquet file ({type(exc).__name__})") from None
    text = manifest_formats.decode(path, data, encoding)
    if suffix == ".jsonl":
        return manifest_formats.read_jsonl(text)
    return manifest_formats.read_csv(text, "\t" if suffix == ".tsv" else ",", id_columns)


def _check_columns(path: str, available: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in available]
    if missing:
        raise UserError(f"manifest {path}: missing column(s) {missing}; found columns {available}")


def check_findings(text: str, where: str, max_chars: int) -> None:
    """Reject findings that are too long, not one JSON object, or off the schema (training would fail on
    them much later, in the middle of a run); details name the rule, never a value."""
    if not text:
        return
    if len(text) > max_chars:
        raise RejectError("bad_findings", f"{where}: over the {max_chars} character budget")
    findings = manifest_formats.json_object(text, where, "bad_findings")
    try:
        validate_findings(findings)
    except ValueError as err:  # findings.py's messages name fields and rules, not values
        raise RejectError("bad_findings", f"{where}: {err}") from None


def _resolve(path: str | None, base: str) -> str | None:
    if path is None or path.strip() == "":
        return None
    return storage.join(base, path.strip())


def read_studies(
    path: str | Path,
    columns: ManifestColumns,
    sequences: tuple[str, ...],
    *,
    encoding: str = "utf-8",
    limits: IngestLimits | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tasks for the studies that can be attempted, and rejects for the records that cannot.

    Every record of the manifest is one or the other: the structural count (``manifest_formats``) must
    equal tasks + rejects, or this raises rather than lose a study without a record.
    """
    path, limits = str(path), limits or IngestLimits()
    base = storage.parent(path)
    records = read_records(path, encoding, [columns.patient_id, columns.study_id])
    if records.count == 0:
        raise UserError(f"manifest {path} has no rows")
    # A column no row has is a naming mistake in the spec; in JSONL one row without a key is that row's
    # missing value (a missing sequence, report or id), which the row's own rules decide.
    required = [
        columns.patient_id,
        columns.study_id,
        *([columns.report] if columns.report else []),
        *([columns.dicom] if columns.dicom else sequences),
    ]
    _check_columns(path, records.columns, required)
    numbered = sorted(
        [(line, row, None) for line, row in records.rows] + [(line, None, err) for line, err in records.bad],
        key=lambda item: item[0],
    )
    studies, rejects, seen = [], [], {}
    for row_number, (line, row, error) in enumerate(numbered):
        task = _task(row or {}, columns, sequences, base) | {
            "manifest_row": row_number,
            "manifest_line": line,
        }
        try:
            if error is not None:
                raise error
            _check_row(task, columns, limits, seen)
        except RejectError as err:
            rejects.append(reject_record(task, err))
            continue
        seen[task["study_id"]] = row_number
        studies.append(task)
    if len(studies) + len(rejects) != records.count:
        raise UserError(
            f"manifest {path}: {records.count} records by its structure but {len(studies) + len(rejects)} "
            "read; a row's quoting or line breaks fooled the parser, so nothing was ingested"
        )
    return studies, rejects


def _task(row: dict[str, Any], columns: ManifestColumns, sequences: tuple[str, ...], base: str) -> dict:
    return {
        "study_id": (row.get(columns.study_id) or "").strip(),
        "patient_id": (row.get(columns.patient_id) or "").strip(),
        # A sequence column a row lacks (JSONL) is a missing sequence, which the spec already rules on.
        "images": {} if columns.dicom else {seq: _resolve(row.get(seq), base) for seq in sequences},
        "dicom": _resolve(row.get(columns.dicom), base) if columns.dicom else None,
        "mask": _resolve(row.get(columns.mask), base) if columns.mask else None,
        "report": row.get(columns.report) if columns.report else None,
        "findings": (row.get(columns.findings) or "") if columns.findings else "",
    }


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _check_row(task: dict, columns: ManifestColumns, limits: IngestLimits, seen: dict[str, int]) -> None:
    """The checks one row can fail before any file is opened; details never quote a cell."""
    where = f"manifest row {task['manifest_row']}"
    for key, column, missing in (
        ("study_id", columns.study_id, "missing_study_id"),
        ("patient_id", columns.patient_id, "missing_patient_id"),
    ):
        if not task[key]:
            raise RejectError(missing, f"{where}: empty {column!r}")
        if len(task[key]) > limits.max_id_chars or _CONTROL.search(task[key]):
            raise RejectError(
                "bad_id", f"{where}: {column!r} is over {limits.max_id_chars} characters or has control codes"
            )
    if task["study_id"] in seen:
        raise RejectError("duplicate_study_id", f"same study id as manifest row {seen[task['study_id']]}")
    report = task["report"]
    if report is not None and len(report) > limits.max_report_chars:
        raise RejectError(
            "report_too_long", f"{where}: {len(report)} characters, over {limits.max_report_chars}"
        )
    check_findings(task["findings"], f"{where}: {columns.findings!r}", limits.max_findings_chars)


def reject_record(task: dict[str, Any], err: RejectError) -> dict[str, Any]:
    """A rejects-table row: study id and manifest row, never the patient id or report text."""
    return {
        # An id that broke the id rules may be anything (a name typed into the wrong column): left out.
        "study_id": "" if err.reason == "bad_id" else task["study_id"],
        "manifest_row": task["manifest_row"],
        "manifest_line": task.get("manifest_line"),
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
            raise UserError(f"pseudonym_key_file {key_file}: cannot read ({type(exc).__name__})") from None
        if len(key) < 16:
            raise UserError(f"pseudonym_key_file {key_file}: a key needs at least 16 bytes, found {len(key)}")
        return key
    generated = run_dir / "pseudonym.key"
    if not generated.exists():
        log.warning(
            "neither %s nor pseudonym_key_file is set: using a random key stored in %s", env_var, generated
        )
        generated.write_text(secrets.token_hex(32))
        generated.chmod(0o600)
    return generated.read_text().encode()
