"""One ingest per manifest format over a corpus of defects (``corpus.py``), valid studies around each bad one.

Every valid study must land in a shard and every bad one in the rejects with its specific reason, counted
from the records written here (not from the parser); no shard task may exceed its time and memory budget,
and no planted identifier or report text may appear outside the data.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from brainvlp.data.errors import RejectError
from brainvlp.data.ingest import IngestSpec, run_ingest
from brainvlp.data.limits import time_budget
from brainvlp.data.manifest import ManifestColumns, read_studies
from brainvlp.errors import UserError
from brainvlp.spec import parse
from corpus import GOOD_REPORT, PATIENT_PHI, TEXT_PHI, bad_images, bad_masks, bad_texts, valid_row
from volumes import RAS_AFFINE, SMALL_INGEST, phantom, save

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ["patient_id", "study_id", "t1c", "flair", "mask", "report", "findings"]
LIMITS = {"max_file_mb": 1.0, "study_seconds": 60.0}


class Manifest:
    """Records written one by one, remembering each one's first line and expected outcome."""

    def __init__(self, good: str, delimiter: str = ",") -> None:
        self.good, self.delimiter = good, delimiter
        self.lines = [delimiter.join(COLUMNS)]
        self.valid: set[str] = set()
        self.bad: dict[int, str] = {}  # first line -> reason
        self.count = 0

    def _cells(self, row: dict) -> str:
        out = io.StringIO()
        csv.writer(out, delimiter=self.delimiter, lineterminator="\n").writerow(
            ["" if row.get(c) is None else row[c] for c in COLUMNS]
        )
        return out.getvalue().removesuffix("\n")

    def add_valid(self, **fields: object) -> None:
        row = valid_row(self.count, self.good) | fields
        self.valid.add(row["study_id"])
        self._add(self._cells(row))

    def add_bad(self, kind: str, fields: dict, reason: str) -> None:
        self.bad[len(self.lines) + 1] = reason
        self._add(self._cells(valid_row(self.count, self.good) | {"study_id": f"bad-{kind}"} | fields))

    def add_raw(self, text: str, reason: str) -> None:
        self.bad[len(self.lines) + 1] = reason
        self._add(text)

    def _add(self, text: str) -> None:
        self.lines.extend(re.split(r"\r\n|\r|\n", text))  # as every CSV reader breaks lines
        self.count += 1

    def write(self, path: Path) -> Path:
        path.write_text("\r\n".join(self.lines) + "\r\n")
        return path


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINVLP_PSEUDONYM_KEY", "a-test-pseudonym-key-of-some-length")


@pytest.fixture(scope="module")
def good_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return save(tmp_path_factory.mktemp("good") / "head.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))


def _csv_corpus(root: Path, good: str) -> Manifest:
    """Every image, mask, text and CSV defect, each between two valid studies."""
    images = root / "images"
    images.mkdir()
    cases = bad_images(images) + [(k, {"mask": p}, r) for k, p, r in bad_masks(images)] + bad_texts()
    manifest = Manifest(good)
    manifest.add_valid(mask=save(images / "mask.nii.gz", nib.Nifti1Image(
        (phantom() > 300).astype(np.uint8), RAS_AFFINE)))  # fmt: skip
    for kind, fields, reason in cases:
        manifest.add_bad(kind, fields, reason)
        manifest.add_valid()
    manifest.add_bad("duplicate-id", {"study_id": "ok-000"}, "duplicate_study_id")
    manifest.add_valid(report='FINDINGS: "Quoted", with commas, and\nlines.\r\nIMPRESSION: fine, "ok".')
    manifest.add_raw(
        f'{PATIENT_PHI},bad-unbalanced,{good},{good},,"FINDINGS: {TEXT_PHI} never closed,', "malformed_row"
    )
    manifest.add_valid()
    manifest.add_raw(f"{PATIENT_PHI},bad-extra,{good},{good},,ok,,surplus", "malformed_row")
    manifest.add_valid()
    manifest.add_raw(f"{PATIENT_PHI},bad-short,{good},{good}", "malformed_row")
    manifest.add_valid(report="FINDINGS: " + " ".join(f"Finding {i} is stable." for i in range(4_000)))
    return manifest  # fmt: skip


def _spec(manifest: Path, **overrides: object) -> IngestSpec:
    data = SMALL_INGEST | {"manifest": str(manifest), "limits": LIMITS}
    return parse(IngestSpec, data | overrides, "ingest")


def _ingest(manifest: Path, run_dir: Path, caplog: pytest.LogCaptureFixture, **overrides: object) -> tuple:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), caplog.at_level(logging.INFO):
        index = run_ingest(_spec(manifest, **overrides), run_dir)
    return index, out.getvalue() + caplog.text


def _outcome(run_dir: Path, index: dict) -> tuple[set[str], dict[int, str], list[dict]]:
    ids = {sid for s in index["shards"] for sid in pq.read_table(run_dir / s["file"])["study_id"].to_pylist()}
    rejects = pq.read_table(run_dir / "rejects.parquet").to_pylist()
    return ids, {r["manifest_line"]: r["reason"] for r in rejects}, rejects


def _assert_private(run_dir: Path, index: dict, printed: str, rejects: list[dict]) -> None:
    texts = [printed, json.dumps(index), json.dumps(rejects)]
    texts += [p.read_text() for p in (run_dir / "_progress").iterdir()]
    for text in texts:
        assert PATIENT_PHI not in text and TEXT_PHI not in text


def test_csv_corpus_every_study_accounted_for(local_ray, good_image, tmp_path, caplog) -> None:
    corpus = _csv_corpus(tmp_path, good_image)
    kinds = {reason for reason in corpus.bad.values()}
    assert len(corpus.bad) >= 50 and len(kinds) >= 20
    run_dir = tmp_path / "run"
    index, printed = _ingest(corpus.write(tmp_path / "manifest.csv"), run_dir, caplog)
    ids, rejected, rejects = _outcome(run_dir, index)
    assert ids == corpus.valid
    assert rejected == corpus.bad
    assert index["input_studies"] == corpus.count == len(ids) + index["rejects"]["count"]
    records = [json.loads(p.read_text()) for p in (run_dir / "_progress").glob("*.json")]
    assert all(r["slowest_study_seconds"] < LIMITS["study_seconds"] for r in records)
    # A 2 GiB or 10000^3 header read into memory would put a worker far above this.
    assert all(r["peak_rss_mb"] < 1500 for r in records)
    assert not any(r["detail"] and "Traceback" in r["detail"] for r in rejects)
    _assert_private(run_dir, index, printed, rejects)


def test_jsonl_tsv_and_parquet_corpora(local_ray, good_image, tmp_path, caplog) -> None:
    valid = {k: v for k, v in valid_row(0, good_image).items() if v is not None}
    lines, expected_bad = [json.dumps(valid | {"study_id": "j-0"})], {}
    for number, (text, reason) in enumerate([
        ('{"patient_id": "x", oops', "malformed_row"),
        ("[1, 2, 3]", "malformed_row"),
        (json.dumps(without(valid, "report") | {"study_id": "j-noreport"}), "missing_report"),
        (json.dumps(valid | {"study_id": "j-dup"})[:-1] + ', "study_id": "other"}', "conflicting_columns"),
    ], start=1):  # fmt: skip
        expected_bad[len(lines) + 1] = reason
        lines += [text, json.dumps(valid | {"study_id": f"j-{number}"})]
    lines.append(json.dumps(without(valid, "flair") | {"study_id": "j-noflair"}))
    lines.append(json.dumps(valid | {"study_id": 12345, "findings": {"side": "left"}}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    index, printed = _ingest(tmp_path / "m.jsonl", tmp_path / "jsonl", caplog, min_shards=2)
    ids, rejected, rejects = _outcome(tmp_path / "jsonl", index)
    assert ids == {f"j-{n}" for n in range(5)} | {"j-noflair", "12345"} and rejected == expected_bad
    assert index["input_studies"] == len(lines)
    _assert_private(tmp_path / "jsonl", index, printed, rejects)

    tsv = Manifest(good_image, delimiter="\t")
    tsv.add_valid()
    tsv.add_raw(f'{PATIENT_PHI}\tt-unbalanced\t{good_image}\t\t\t"FINDINGS: open', "malformed_row")
    tsv.add_valid()
    tsv.add_raw(f"{PATIENT_PHI}\tt-extra\t{good_image}\t\t\tok\t\tsurplus", "malformed_row")
    tsv.add_valid()
    index, _ = _ingest(tsv.write(tmp_path / "m.tsv"), tmp_path / "tsv", caplog, min_shards=2)
    ids, rejected, _ = _outcome(tmp_path / "tsv", index)
    assert ids == tsv.valid and rejected == tsv.bad and index["input_studies"] == tsv.count

    rows = [valid | {"study_id": "p-0"}, valid | {"study_id": None}, valid | {"study_id": "p-2"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    index, _ = _ingest(tmp_path / "m.parquet", tmp_path / "parquet", caplog, min_shards=2)
    ids, rejected, _ = _outcome(tmp_path / "parquet", index)
    assert ids == {"p-0", "p-2"} and rejected == {2: "missing_study_id"} and index["input_studies"] == 3


def without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


def test_a_column_named_twice_must_agree(good_image, tmp_path) -> None:
    same, other = f"{good_image},{good_image}", f"{good_image},/other.nii"
    text = f"patient_id,study_id,report,t1c,t1c\nP1,A,ok,{same}\nP2,B,ok,{other}\nP3,C,ok,{same}\n"
    (tmp_path / "m.csv").write_text(text)
    studies, rejects = read_studies(tmp_path / "m.csv", ManifestColumns(mask=None, findings=None), ("t1c",))
    assert [s["study_id"] for s in studies] == ["A", "C"]
    assert [(r["manifest_line"], r["reason"]) for r in rejects] == [(3, "conflicting_columns")]


def test_an_undecodable_manifest_is_one_error_naming_the_option(good_image, tmp_path) -> None:
    path = tmp_path / "m.csv"
    path.write_bytes(f"patient_id,study_id,report,t1c\nP1,A,Lésion stable.,{good_image}\n".encode("latin-1"))
    columns = ManifestColumns(mask=None, findings=None)
    with pytest.raises(UserError, match=r"not valid utf-8 at line 2 .*manifest_encoding"):
        read_studies(path, columns, ("t1c",))
    for encoding in ("latin-1", "auto"):
        studies, _ = read_studies(path, columns, ("t1c",), encoding=encoding)
        assert studies[0]["report"] == "Lésion stable."


def test_the_time_budget_interrupts_a_study_and_restores_the_handler() -> None:
    before = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    with pytest.raises(RejectError, match="study_timeout"), time_budget(0.2):
        while time.perf_counter() - start < 10:
            pass
    assert time.perf_counter() - start < 2 and signal.getsignal(signal.SIGALRM) == before


@pytest.mark.slow
def test_an_ingest_survives_a_worker_killed_mid_study(tmp_path) -> None:
    psutil = pytest.importorskip("psutil")
    z, y, x = np.ogrid[-1:1:96j, -1:1:96j, -1:1:96j]
    save(
        tmp_path / "head.nii",
        nib.Nifti1Image(np.where(x**2 + y**2 + z**2 < 0.8, 500.0, 0.0).astype(np.float32), np.eye(4)),
    )
    rows = [
        {"patient_id": f"P{i}", "study_id": f"S{i:02d}", "t1c": "head.nii", "report": GOOD_REPORT}
        for i in range(24)
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = {
        "kind": "ingest", "output_root": str(tmp_path), "run_name": "run",
        "manifest": str(tmp_path / "m.jsonl"), "sequences": ["t1c"], "tokenizer": "builtin:tiny",
        "min_shards": 6, "volume": {"spacing": [1.0, 1.0, 1.0], "shape": [16, 48, 48]},
    }  # fmt: skip
    (tmp_path / "ingest.yaml").write_text(yaml.safe_dump(spec))
    env = os.environ | {"BRAINVLP_PSEUDONYM_KEY": "a-test-pseudonym-key-of-some-length"}
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.run", str(tmp_path / "ingest.yaml")],
        cwd=REPO, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    killed = None
    try:
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and job.poll() is None:
            for proc in psutil.process_iter(["cmdline"]):
                if (proc.info["cmdline"] or [""])[0].startswith("ray::write_shard"):
                    killed = proc.pid
                    proc.kill()
                    break
            time.sleep(0.05)
        output = job.communicate(timeout=300)[0].decode()
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert killed is not None, "no shard task was seen running"
    assert job.returncode == 0, output[-2000:]
    index = json.loads((tmp_path / "run" / "index.json").read_text())
    assert index["input_studies"] == 24 and sum(s["rows"] for s in index["shards"]) == 24


@pytest.mark.slow
def test_a_study_that_kills_its_worker_every_time_is_rejected_alone(
    local_ray, good_image, tmp_path, caplog, monkeypatch
) -> None:
    from brainvlp.data import ingest, ingest_tasks

    # Local functions travel to the workers by value; each calls the real task there. "crash" stands for
    # a study on which a library crashes natively, which no file written here can reproduce.
    def crashing_shard(plan, spec, out_dir, excluded=None):
        from brainvlp.data import ingest

        if any(t["study_id"] == "crash" for t in plan["studies"]) and "crash" not in (excluded or {}):
            os._exit(1)
        return ingest.write_shard(plan, spec, out_dir, excluded)

    def crashing_probe(task, spec):
        from brainvlp.data import ingest

        if task["study_id"] == "crash":
            os._exit(1)
        return ingest.probe_study(task, spec)

    monkeypatch.setattr(ingest_tasks, "SHARD_RETRIES", 0)  # each retry costs a worker start: keep it short
    monkeypatch.setattr(ingest, "write_shard", crashing_shard)
    monkeypatch.setattr(ingest, "probe_study", crashing_probe)
    manifest = Manifest(good_image)
    for number in range(5):
        manifest.add_valid()
        if number == 2:
            manifest.add_bad("x", {"study_id": "crash"}, "worker_died")
    index, printed = _ingest(manifest.write(tmp_path / "m.csv"), tmp_path / "run", caplog, min_shards=1)
    ids, rejected, _ = _outcome(tmp_path / "run", index)
    assert ids == manifest.valid and rejected == manifest.bad and index["input_studies"] == 6
    assert "running its studies one by one" in printed
