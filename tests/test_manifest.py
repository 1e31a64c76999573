"""Manifest reading: clear errors naming the file, up-front rejects naming the row, relative paths."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from brainvlp.data.manifest import ManifestColumns, pseudonym_key, read_studies

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


def write_manifest(path: Path, rows: list[dict]) -> Path:
    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t"
            )
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
@pytest.mark.parametrize("as_uri", [False, True])
def test_rejects_up_front_and_resolves_paths(tmp_path: Path, fmt: str, as_uri: bool) -> None:
    path = write_manifest(tmp_path / f"manifest.{fmt}", ROWS)
    studies, rejects = read_studies(path.as_uri() if as_uri else path, COLUMNS, ("t1c",))
    assert [s["study_id"] for s in studies] == ["A1", "A5"]
    assert [(r["manifest_row"], r["reason"]) for r in rejects] == [
        (1, "missing_patient_id"),
        (2, "duplicate_study_id"),
        (3, "missing_study_id"),
    ]
    assert "manifest row 0" in rejects[1]["detail"]
    base = tmp_path.as_uri() if as_uri else str(tmp_path)
    assert studies[0]["images"]["t1c"] == f"{base}/img/a1.nii.gz"
    assert studies[1]["images"]["t1c"] == f"{base}/x.nii"
    assert studies[0]["mask"] is None
    assert studies[1]["patient_id"] == "007"  # ids stay text: leading zeros survive
    assert studies[1]["report"] == "Line one.\nLine, two."  # multi-line quoted text survives
    assert not any("MRN" in str(value) for r in rejects for value in r.values())


def test_missing_column_names_the_file_and_the_columns(tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "m.csv", [{k: v for k, v in ROWS[0].items() if k != "report"}])
    with pytest.raises(ValueError, match=r"m\.csv: missing column\(s\) \['report', 'flair'\]"):
        read_studies(path, COLUMNS, ("t1c", "flair"))


def test_unsupported_or_absent_manifest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_studies(tmp_path / "nope.csv", COLUMNS, ("t1c",))
    (tmp_path / "m.xlsx").write_text("")
    with pytest.raises(ValueError, match=r"unsupported format '\.xlsx'"):
        read_studies(tmp_path / "m.xlsx", COLUMNS, ("t1c",))


def test_typed_cells_become_text(tmp_path: Path) -> None:
    """Parquet and JSONL may type ids as numbers and findings as objects; tasks always carry text."""
    rows = [
        {"patient_id": 7, "study_id": 1001, "t1c": "a.nii", "report": "ok.", "findings": {"side": "left"}}
    ]
    (study,), rejects = read_studies(
        write_manifest(tmp_path / "m.jsonl", rows), ManifestColumns(mask=None), ("t1c",)
    )
    assert not rejects
    assert (study["patient_id"], study["study_id"]) == ("7", "1001")
    assert json.loads(study["findings"]) == {"side": "left"}


def test_a_bad_csv_row_is_one_reject_naming_its_line_not_its_content(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('patient_id,study_id,report\nMRN1,A,"ok"\nMRN2,B\nMRN3,C,"fine"\n')
    studies, rejects = read_studies(path, COLUMNS, ())
    assert [s["study_id"] for s in studies] == ["A", "C"]
    assert [(r["manifest_line"], r["reason"]) for r in rejects] == [(3, "malformed_row")]
    assert "2 fields where the header has 3" in rejects[0]["detail"] and "MRN" not in str(rejects)


def test_a_bad_jsonl_line_is_one_reject_naming_its_line_not_its_content(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    good = '{"patient_id": "MRN1", "study_id": "A", "report": "x", "t1c": "a.nii"}'
    path.write_text(f'{good}\n{{"patient_id": "MRN2", oops}}\n{good.replace("A", "B")}\n')
    studies, rejects = read_studies(path, COLUMNS, ("t1c",))
    assert [s["study_id"] for s in studies] == ["A", "B"]
    assert [(r["manifest_line"], r["reason"]) for r in rejects] == [(2, "malformed_row")]
    assert "line 2: invalid JSON" in rejects[0]["detail"] and "MRN" not in str(rejects)


def test_pseudonym_key_from_env_then_file_then_generated(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TEST_KEY", raising=False)
    key_file = tmp_path / "site.key"
    key_file.write_text("0123456789abcdef0123\n")
    assert pseudonym_key("TEST_KEY", str(key_file), tmp_path) == b"0123456789abcdef0123"
    monkeypatch.setenv("TEST_KEY", "from-the-environment")
    assert pseudonym_key("TEST_KEY", str(key_file), tmp_path) == b"from-the-environment"
    monkeypatch.delenv("TEST_KEY")
    generated = pseudonym_key("TEST_KEY", None, tmp_path)
    assert generated == pseudonym_key("TEST_KEY", None, tmp_path) and len(generated) == 64
    assert (tmp_path / "pseudonym.key").stat().st_mode & 0o077 == 0
    key_file.write_text("short")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        pseudonym_key("TEST_KEY", str(key_file), tmp_path)
