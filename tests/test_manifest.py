"""Manifest reading: clear errors naming the file, up-front rejects naming the row, relative paths."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brainvlp.data.manifest import ManifestColumns, read_studies

ROWS = [
    {"patient_id": "MRN1", "study_id": "A1", "t1c": "img/a1.nii.gz", "report": "FINDINGS: ok.", "mask": ""},
    {"patient_id": "", "study_id": "A2", "t1c": "img/a2.nii.gz", "report": "FINDINGS: ok.", "mask": ""},
    {
        "patient_id": "MRN3",
        "study_id": "A1",
        "t1c": "/abs/a3.nii",
        "report": "FINDINGS: ok.",
        "mask": "m.nii",
    },
    {"patient_id": "MRN4", "study_id": "", "t1c": "x.nii", "report": "FINDINGS: ok.", "mask": ""},
    {"patient_id": "007", "study_id": "A5", "t1c": "x.nii", "report": "Line one.\nLine, two.", "mask": ""},
]
COLUMNS = ManifestColumns(findings=None)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_rejects_up_front_and_resolves_paths(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"manifest.{fmt}"
    if fmt == "csv":
        write_csv(path, ROWS)
    else:
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    studies, rejects = read_studies(path, COLUMNS, ("t1c",))
    assert [s["study_id"] for s in studies] == ["A1", "A5"]
    assert [(r["manifest_row"], r["reason"]) for r in rejects] == [
        (1, "missing_patient_id"),
        (2, "duplicate_study_id"),
        (3, "missing_study_id"),
    ]
    assert "manifest row 0" in rejects[1]["detail"]
    assert studies[0]["images"]["t1c"] == str(tmp_path / "img" / "a1.nii.gz")
    assert studies[0]["mask"] is None
    assert studies[1]["patient_id"] == "007"  # ids stay text: leading zeros survive
    assert studies[1]["report"] == "Line one.\nLine, two."  # multi-line quoted text survives
    assert not any("MRN" in str(value) for r in rejects for value in r.values())


def test_missing_column_names_the_file_and_the_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "m.csv", [{k: v for k, v in ROWS[0].items() if k != "report"}])
    with pytest.raises(ValueError, match=r"m\.csv: missing column\(s\) \['report', 'flair'\]"):
        read_studies(path, COLUMNS, ("t1c", "flair"))


def test_unsupported_or_absent_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_studies(tmp_path / "nope.csv", COLUMNS, ("t1c",))
    (tmp_path / "m.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"unsupported format '\.xlsx'"):
        read_studies(tmp_path / "m.xlsx", COLUMNS, ("t1c",))
