"""Ingest end to end on Ray: every input variant, a corpus of bad inputs, re-runs, resume after a kill."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from brainvlp.data.ingest import IngestSpec, run_ingest
from brainvlp.data.shards import decode_volumes, sha256_file
from brainvlp.spec import SpecError, parse
from volumes import RAS_AFFINE, SMALL_INGEST, labels, phantom, reject_cases, reoriented, save

REPO = Path(__file__).resolve().parents[1]
KEY = "a-test-pseudonym-key-of-some-length"
SECRET_ID = "MRN-77412"  # a raw patient id that must never leave the manifest
SECRET_TEXT = "Mrs Jones"  # report text that must never appear in logs or rejects
GOOD_REPORT = (
    f"FINDINGS: {SECRET_TEXT} has a 2.3 x 1.8 cm lesion in the left frontal lobe.\nIMPRESSION: Mass."
)
OBLIQUE = RAS_AFFINE.copy()
OBLIQUE[:3, :3] = np.array([[0.94, -0.34, 0], [0.34, 0.94, 0], [0, 0, 1.0]]) * [1.2, 1.2, 2.0]


def _valid_studies(images: Path) -> dict[str, dict]:
    """One study per input variant that real exports contain; all must be ingested."""
    head = nib.Nifti1Image(phantom(), RAS_AFFINE)
    lps = reoriented(head, "LPS")
    int_head = nib.Nifti1Image((phantom() * 10).astype(np.int16), RAS_AFFINE)
    int_head.header.set_slope_inter(0.25, 1.0)
    long_report = "FINDINGS: " + " ".join(f"Finding number {i} is stable." for i in range(40))
    variants = {
        "v-ras-gz": (save(images / "ras.nii.gz", head), GOOD_REPORT),
        "v-lps-nifti2": (
            save(images / "lps.nii", nib.Nifti2Image(lps.get_fdata(dtype=np.float32), lps.affine)),
            "Findings\nNo acute abnormality.\n\nImpression\n1. Normal study.\n2. No mass effect.",
        ),
        "v-lia": (save(images / "lia.nii.gz", reoriented(head, "LIA")), "IMPRESSION: Stable."),
        "v-4d-scaled": (
            save(images / "four_d.nii.gz", nib.Nifti1Image(phantom()[..., None], RAS_AFFINE)),
            "x",
        ),
        "v-int16-slope": (
            save(images / "slope.nii.gz", int_head),
            "FINDINGS:\r\nStable.\r\nIMPRESSION:\r\nOK.\r\n",
        ),
        "v-oblique": (
            save(images / "oblique.nii.gz", nib.Nifti1Image(phantom(), OBLIQUE)),
            "Lésion stable ✓.",
        ),
        "v-anisotropic": (
            save(images / "aniso.nii.gz", nib.Nifti1Image(phantom(), np.diag([0.45, 0.45, 5.0, 1]))),
            long_report,
        ),
        "v-no-flair": (save(images / "noflair.nii.gz", head), "FINDINGS: Normal."),
    }
    rows = {}
    for number, (study_id, (path, report)) in enumerate(variants.items()):
        flair = "" if study_id == "v-no-flair" else os.path.relpath(path, images.parent)
        rows[study_id] = {"patient_id": f"{SECRET_ID}-{number % 5}", "study_id": study_id,
                          "t1c": path, "flair": flair, "report": report}  # fmt: skip
    rows["v-ras-gz"]["mask"] = save(images / "mask.nii.gz", nib.Nifti1Image(labels(), RAS_AFFINE))
    return rows


def _bad_studies(images: Path, good: str) -> dict[str, tuple[dict, str]]:
    """Bad inputs of every kind (image files, reports, manifest fields), each with its expected reason."""
    bad = {}
    for number, (reason, path) in enumerate(reject_cases(images)):
        bad[f"b-file-{number}"] = ({"t1c": good, "flair": path}, reason)
    bad["b-no-sequence"] = ({"t1c": "", "flair": ""}, "missing_sequence")
    bad["b-no-report"] = ({"report": None}, "missing_report")
    bad["b-blank-report"] = ({"report": " \r\n\t "}, "empty_report")
    bad["b-no-patient"] = ({"patient_id": " "}, "missing_patient_id")
    bad["v-ras-gz"] = ({}, "duplicate_study_id")  # the id of a valid study, on a later row
    bad[""] = ({}, "missing_study_id")
    bad["b-findings-not-json"] = ({"findings": "{enhancing: yes"}, "bad_findings")
    bad_clause = {"clauses": [{"modality": "FLAIR", "side": "up"}]}
    bad["b-findings-bad-clause"] = ({"findings": json.dumps(bad_clause)}, "bad_findings")
    return {
        study_id: ({"patient_id": f"{SECRET_ID}-b", "study_id": study_id, "t1c": good, "flair": good,
                    "report": GOOD_REPORT} | fields, reason)
        for study_id, (fields, reason) in bad.items()
    }  # fmt: skip


@pytest.fixture(autouse=True)
def _pseudonym_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRAINVLP_PSEUDONYM_KEY", KEY)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("export")
    images = root / "images"
    images.mkdir()
    valid = _valid_studies(images)
    bad = _bad_studies(images, valid["v-ras-gz"]["t1c"])
    rows = [*valid.values(), *(row for row, _ in bad.values())]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return manifest, valid, {row["study_id"]: reason for row, reason in bad.values()}


def _spec(manifest: Path, **overrides) -> IngestSpec:
    # A filesystem URI: the same code path as s3:// or gs://.
    data = SMALL_INGEST | {"manifest": manifest.as_uri()}
    return parse(IngestSpec, data | overrides, "ingest")


@pytest.fixture(scope="module")
def ingested(corpus, local_ray, tmp_path_factory) -> tuple[Path, dict, str]:
    manifest, *_ = corpus
    run_dir = tmp_path_factory.mktemp("ingest")
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):
        env.setenv("BRAINVLP_PSEUDONYM_KEY", KEY)
        index = run_ingest(_spec(manifest), run_dir)
    return run_dir, index, out.getvalue()


def _rows(run_dir: Path, index: dict) -> list[dict]:
    return [row for s in index["shards"] for row in pq.read_table(run_dir / s["file"]).to_pylist()]


def test_every_valid_variant_is_ingested_and_every_bad_input_rejected(corpus, ingested) -> None:
    _, valid, bad = corpus
    run_dir, index, printed = ingested
    rows = {row["study_id"]: row for row in _rows(run_dir, index)}
    assert set(rows) == set(valid)
    rejects = pq.read_table(run_dir / "rejects.parquet").to_pylist()
    assert {r["study_id"]: r["reason"] for r in rejects} == bad
    assert len(set(bad.values())) >= 10 and len(bad) >= 15
    assert index["input_studies"] == len(valid) + len(bad) == len(rows) + index["rejects"]["count"]
    assert f"{len(valid) + len(bad)} studies in -> {len(valid)} in" in printed
    assert index["truncated_reports"] == 1 and rows["v-anisotropic"]["truncated"]
    assert rows["v-no-flair"]["present"] == [True, False]
    assert rows["v-ras-gz"]["mask"] is not None and all(
        r["mask"] is None for k, r in rows.items() if k != "v-ras-gz"
    )
    # Every orientation of the same physical head gives the same array.
    volume = {k: decode_volumes([rows[k]["volume"]], [rows[k]["volume_shape"]])[0, 0] for k in rows}
    np.testing.assert_array_equal(volume["v-lps-nifti2"], volume["v-ras-gz"])
    np.testing.assert_array_equal(volume["v-lia"], volume["v-ras-gz"])


def test_no_raw_id_or_report_text_leaves_the_manifest(ingested) -> None:
    run_dir, index, printed = ingested
    texts = [printed, json.dumps(index), json.dumps(pq.read_table(run_dir / "rejects.parquet").to_pylist())]
    texts += [p.read_text() for p in (run_dir / "_progress").iterdir()]
    texts += [v for row in _rows(run_dir, index) for v in row.values() if isinstance(v, str)]
    assert not any(SECRET_ID in text or SECRET_TEXT in text or "images" in text for text in texts)


def test_shards_carry_checksums_and_splits_are_by_patient(ingested) -> None:
    run_dir, index, _ = ingested
    assert all(sha256_file(run_dir / s["file"]) == s["sha256"] for s in index["shards"])
    assert all(s["file"].startswith(s["split"]) for s in index["shards"])
    assert not list(run_dir.glob(".tmp-*"))


def test_a_rerun_is_a_no_op_and_another_spec_is_refused(corpus, ingested, capsys) -> None:
    manifest, *_ = corpus
    run_dir, index, _ = ingested
    assert run_ingest(_spec(manifest), run_dir) == index
    assert "already holds this ingest, complete; nothing to do" in capsys.readouterr().out
    with pytest.raises(
        RuntimeError, match="holds an ingest of another manifest, spec or pseudonymisation key"
    ):
        run_ingest(_spec(manifest, volume={"spacing": [2.0, 2.0, 2.0], "shape": [8, 16, 12]}), run_dir)


def test_resume_rewrites_only_unfinished_shards_identically(corpus, ingested, tmp_path, capsys) -> None:
    manifest, *_ = corpus
    run_dir, index, _ = ingested
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / "index.json").unlink()
    lost = [s["file"] for s in index["shards"][:2]]
    for file in lost:  # as if killed before these shards' records were written
        (copy / "_progress" / f"{file}.json").unlink()
    (copy / lost[1]).unlink()
    (copy / f".tmp-123-{lost[1]}").write_bytes(b"half a parquet file")
    kept = {s["file"]: (copy / s["file"]).stat().st_mtime_ns for s in index["shards"][2:]}
    done = len(list((copy / "_progress").glob("*.parquet.json")))
    resumed = run_ingest(_spec(manifest), copy)
    assert f"resuming, {done} of {done + 2} shards already done" in capsys.readouterr().out
    assert {f: (copy / f).stat().st_mtime_ns for f in kept} == kept
    assert resumed["shards"] == index["shards"] and not list(copy.glob(".tmp-*"))


@pytest.fixture(scope="module")
def slow_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 single-study patients whose volumes take ~0.1 s each: long enough to kill an ingest mid-run."""
    root = tmp_path_factory.mktemp("slow_export")
    z, y, x = np.ogrid[-1:1:128j, -1:1:128j, -1:1:128j]
    head = np.where(x**2 + y**2 + z**2 < 0.8, 500.0, 0.0).astype(np.float32)
    save(root / "head.nii", nib.Nifti1Image(head, np.eye(4)))
    rows = [{"patient_id": f"P{i}", "study_id": f"S{i:02d}", "t1c": "head.nii", "report": f"Case {i}."}
            for i in range(30)]  # fmt: skip
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root / "manifest.jsonl"


def _slow_spec(manifest: Path, run_dir: Path) -> dict:
    return {
        "kind": "ingest", "output_root": str(run_dir.parent), "run_name": run_dir.name,
        "manifest": str(manifest), "sequences": ["t1c"], "tokenizer": "builtin:tiny",
        "volume": {"spacing": [1.0, 1.0, 1.0], "shape": [16, 48, 48]}, "min_shards": 30, "workers": 1,
    }  # fmt: skip


def test_an_ingest_killed_mid_run_resumes_to_identical_shards(
    slow_export, local_ray, tmp_path, capsys
) -> None:
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    spec_file = tmp_path / "ingest.yaml"
    spec_file.write_text(yaml.safe_dump(_slow_spec(slow_export, killed)))
    job = subprocess.Popen(
        [sys.executable, "-m", "jobs.run", str(spec_file)],
        cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(list((killed / "_progress").glob("*.parquet.json"))) < 3 and time.monotonic() < deadline:
            assert job.poll() is None, "the ingest ended before it could be killed"
            time.sleep(0.02)
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver and the Ray it started, as a node failure would
        job.wait()
    done = len(list((killed / "_progress").glob("*.parquet.json")))
    assert 3 <= done < 30 and not (killed / "index.json").exists()

    resumed = run_ingest(parse(IngestSpec, _spec_body(killed), "ingest"), killed)
    assert f"resuming, {done} of 30 shards already done" in capsys.readouterr().out
    uninterrupted = run_ingest(parse(IngestSpec, _spec_body(clean), "ingest"), clean)
    assert resumed["shards"] == uninterrupted["shards"] and len(resumed["shards"]) == 30
    assert sorted(p.name for p in killed.glob("*.parquet")) == sorted(p.name for p in clean.glob("*.parquet"))


def _spec_body(run_dir: Path) -> dict:
    spec = yaml.safe_load((run_dir.parent / "ingest.yaml").read_text())
    return {k: v for k, v in spec.items() if k not in ("output_root", "run_name")}


def test_an_image_only_ingest_stores_masks_without_reports(local_ray, tmp_path: Path) -> None:
    """BraTS-like data: images and masks, no report column at all (columns.report: null)."""
    images = tmp_path / "images"
    images.mkdir()
    head = nib.Nifti1Image(phantom(), RAS_AFFINE)
    mask = nib.Nifti1Image((phantom() > phantom().mean()).astype(np.uint8) * 3, RAS_AFFINE)
    rows = [
        {"patient_id": f"P{k}", "study_id": f"S{k}", "t1c": save(images / f"{k}.nii.gz", head),
         "flair": save(images / f"{k}f.nii.gz", head), "mask": save(images / f"{k}m.nii.gz", mask)}
        for k in range(6)
    ]  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = _spec(manifest, columns={"report": None, "findings": None}, report={"keep_text": True})
    with contextlib.redirect_stdout(io.StringIO()):
        index = run_ingest(spec, tmp_path / "run")
    assert index["reports"] is False and index["report_text"] is False and index["rejects"]["count"] == 0
    stored = _rows(tmp_path / "run", index)
    assert len(stored) == 6 and all(r["mask"] is not None and r["input_ids"] == [] for r in stored)

    from brainvlp.train.config import PretrainSpec, check_against_shards

    pretrain = parse(PretrainSpec, {"data": {"shards": str(tmp_path / "run")}})
    with pytest.raises(SpecError, match="images without reports"):
        check_against_shards(pretrain, index)
