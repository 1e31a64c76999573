"""Reading an ingest manifest (CSV or Parquet) into per-study tasks, and the rejects it finds up front.

Image and mask paths may be absolute or relative to the manifest's folder. Rows without a patient or study
id, and repeated study ids, are rejected here (naming the manifest row), before any image is opened.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from brainvlp.data.errors import RejectError

log = logging.getLogger(__name__)


@dataclass
class ManifestColumns:
    """Manifest column names; image columns are the ingest spec's ``sequences``."""

    patient_id: str = "patient_id"
    study_id: str = "study_id"
    report: str = "report"
    mask: str | None = "mask"  # optional column
    findings: str | None = "findings"  # optional column of findings JSON


def _read_table(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise FileNotFoundError(f"manifest {path} does not exist")
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix in (".csv", ".tsv"):
        # Every column as text: ids such as 00123 must keep their leading zeros.
        options = pa_csv.ConvertOptions(strings_can_be_null=True, column_types=None)
        read = pa_csv.ReadOptions(autogenerate_column_names=False)
        parse = pa_csv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",", newlines_in_values=True)
        header = pa_csv.read_csv(path, read_options=read, parse_options=parse).schema.names
        options.column_types = dict.fromkeys(header, "string")
        return pa_csv.read_csv(
            path, read_options=read, parse_options=parse, convert_options=options
        ).to_pylist()
    raise ValueError(f"manifest {path}: unsupported format {path.suffix!r}; expected .csv, .tsv or .parquet")


def _check_columns(path: Path, rows: list[dict[str, Any]], required: list[str]) -> None:
    available = list(rows[0]) if rows else []
    missing = [c for c in required if c not in available]
    if missing:
        raise ValueError(f"manifest {path}: missing column(s) {missing}; found columns {available}")


def _resolve(path: Any, base: Path) -> str | None:
    if path is None or str(path).strip() == "":
        return None
    return str(path) if os.path.isabs(str(path)) else str(base / str(path))


def read_studies(
    path: Path, columns: ManifestColumns, sequences: tuple[str, ...]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tasks for the studies that can be attempted, and rejects for the rows that cannot."""
    rows = _read_table(path)
    if not rows:
        raise ValueError(f"manifest {path} has no rows")
    _check_columns(path, rows, [columns.patient_id, columns.study_id, columns.report, *sequences])
    studies, rejects, seen = [], [], {}
    for row_number, row in enumerate(rows):
        task = {
            "manifest_row": row_number,
            "study_id": (row.get(columns.study_id) or "").strip(),
            "patient_id": (row.get(columns.patient_id) or "").strip(),
            "images": {seq: _resolve(row.get(seq), path.parent) for seq in sequences},
            "mask": _resolve(row.get(columns.mask), path.parent) if columns.mask else None,
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


def pseudonym_key(env_var: str, run_dir: Path) -> bytes:
    """The pseudonymisation key from ``env_var``; without one, a random key kept beside the shards."""
    value = os.environ.get(env_var)
    if value:
        return value.encode()
    key_file = run_dir / "pseudonym.key"
    if not key_file.exists():
        log.warning("%s is not set: using a random pseudonymisation key stored in %s", env_var, key_file)
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
    return key_file.read_text().encode()
