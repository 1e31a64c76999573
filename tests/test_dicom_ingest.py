"""A DICOM export through ingest: several series per study (one oblique, one with a gap, a localiser),
series chosen by the rules and logged, NIfTI and DICOM of one volume giving the same shard volume, and no
PHI from any tag in any output."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import shutil
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest
from pydicom.data import get_testdata_file

from brainvlp.data.ingest import IngestSpec, run_ingest
from brainvlp.data.shards import decode_volumes
from brainvlp.spec import SpecError, parse
from test_dicom import PHI_STRINGS, SAMPLES, _stack_sample, write_series
from volumes import SMALL_INGEST

KEY = "a-test-pseudonym-key-of-some-length"
REPORT = "FINDINGS: A 2.0 x 1.5 cm enhancing mass in the left frontal lobe.\nIMPRESSION: Mass."
AFFINE = np.array([[2.0, 0, 0, -24.0], [0, 2.0, 0, -30.0], [0, 0, 2.5, -15.0], [0, 0, 0, 1]])


def _head(seed: int = 0) -> np.ndarray:
    """An int16 ellipsoid 'head' with texture: content for the preprocessing to keep."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in (24, 28, 12)), indexing="ij")
    inside = x**2 + y**2 + z**2 < 0.8
    noise = np.random.default_rng(seed).normal(0, 20, inside.shape)
    return (inside * (400 + 200 * x) + noise * inside).astype(np.int16)


def _oblique(affine: np.ndarray, degrees: float = 20.0) -> np.ndarray:
    t = np.deg2rad(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return rotation @ affine


def _export(root: Path) -> Path:
    """Three studies: S1 a full visit (two T1 posts, one oblique; a localiser; a FLAIR), S2 a zipped visit
    whose only T1 post has a missing slice, S3 a localiser and a FLAIR only; and S4 as NIfTI files."""
    head = _head()
    s1 = root / "Qzlowski_Wilhelmina" / "visit1"  # exports name folders after patients
    s1.mkdir(parents=True)
    write_series(s1, head, _oblique(AFFINE), description="Ax T1 POST", number=3, SliceThickness="2.5", seed=1)
    write_series(s1, head, AFFINE, description="Ax T1 POST 5mm", number=4, SliceThickness="5", seed=2)
    write_series(s1, head[:, :, :4], AFFINE, description="Ax T1 POST", number=1, seed=3,
                 ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])  # fmt: skip
    write_series(s1, head, AFFINE, description="AX T2 FLAIR", number=5, MRAcquisitionType="2D", seed=4)
    s2 = root / "s2"
    s2.mkdir()
    for path in write_series(s2, head, AFFINE, description="Ax T1 POST", number=3, seed=5)[5:6]:
        path.unlink()  # a gap: one slice missing
    write_series(s2, head, AFFINE, description="AX T2 FLAIR", number=5, seed=6)
    with zipfile.ZipFile(root / "s2.zip", "w") as archive:
        for path in s2.iterdir():
            archive.write(path, path.name)
    s3 = root / "s3"
    s3.mkdir()
    write_series(s3, head[:, :, :4], AFFINE, description="Scout", number=1, seed=7,
                 ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])  # fmt: skip
    write_series(s3, head, AFFINE, description="AX T2 FLAIR", number=5, seed=8)
    return root


def _manifest(root: Path, rows: list[dict]) -> Path:
    path = root / "manifest.jsonl"
    path.write_text("".join(json.dumps({"report": REPORT, **row}) + "\n" for row in rows))
    return path


def _spec(manifest: Path, **overrides) -> IngestSpec:
    return parse(
        IngestSpec, SMALL_INGEST | {"manifest": str(manifest), "min_shards": 1} | overrides, "ingest"
    )


@pytest.fixture(scope="module")
def ingested(local_ray, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    root = _export(tmp_path_factory.mktemp("pacs"))
    manifest = _manifest(root, [
        {"patient_id": "MRN77X31Q", "study_id": "S1", "dicom": "Qzlowski_Wilhelmina/visit1"},
        {"patient_id": "P2", "study_id": "S2", "dicom": "s2.zip"},
        {"patient_id": "P3", "study_id": "S3", "dicom": "s3"},
    ])  # fmt: skip
    run_dir = root / "run"
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(out):
        env.setenv("BRAINVLP_PSEUDONYM_KEY", KEY)
        index = run_ingest(
            _spec(manifest, columns={"dicom": "dicom", "mask": None, "findings": None}), run_dir
        )
    return run_dir, index, out.getvalue()


def test_series_are_chosen_by_the_rules_and_bad_ones_rejected(ingested) -> None:
    run_dir, index, _ = ingested
    rows = {r["study_id"]: r for s in index["shards"] for r in pq.read_table(run_dir / s["file"]).to_pylist()}
    rejects = {r["study_id"]: r["reason"] for r in pq.read_table(run_dir / "rejects.parquet").to_pylist()}
    assert set(rows) == {"S1", "S3"} and rejects == {"S2": "dicom_gap"}
    assert rows["S1"]["present"] == [True, True]
    assert rows["S3"]["present"] == [False, True]  # no T1 post: a zero channel (missing_sequence: zero)
    selection = {
        (r["study_id"], r["sequence"]): r for r in pq.read_table(run_dir / "selection.parquet").to_pylist()
    }
    s1 = selection[("S1", "t1c")]
    assert (
        "'Ax T1 POST'" in s1["series"] and "thinnest" in s1["reason"]
    )  # 2.5 mm over 5 mm, not the localiser
    assert selection[("S3", "t1c")]["series"] == "" and selection[("S3", "flair")]["series"]
    assert index["selection"]["by_sequence"]["t1c"] == {"chosen": 1, "unmatched": 1}  # of ingested studies
    detail = next(r["detail"] for r in pq.read_table(run_dir / "rejects.parquet").to_pylist())
    assert "'Ax T1 POST'" in detail  # a rejected study's reason names its series


def test_no_phi_reaches_any_output(ingested) -> None:
    run_dir, _, printed = ingested
    texts = [printed] + [path.read_bytes().decode("latin-1") for path in run_dir.rglob("*") if path.is_file()]
    for phi in PHI_STRINGS:
        assert not any(phi in text for text in texts), phi


def test_nifti_and_dicom_of_one_volume_give_the_same_shard_volume(local_ray, tmp_path: Path) -> None:
    head = _head(seed=3)
    for name in ("t1c", "flair"):
        nib.save(nib.Nifti1Image(head, _oblique(AFFINE)), tmp_path / f"{name}.nii.gz")
    folder = tmp_path / "dicom"
    folder.mkdir()
    write_series(folder, head, _oblique(AFFINE), description="Ax T1 POST", number=3, seed=1)
    write_series(folder, head, _oblique(AFFINE), description="AX T2 FLAIR", number=5, seed=2)
    volumes = {}
    for kind, row, columns in [
        ("nifti", {"t1c": "t1c.nii.gz", "flair": "flair.nii.gz"}, {"mask": None, "findings": None}),
        ("dicom", {"dicom": "dicom"}, {"dicom": "dicom", "mask": None, "findings": None}),
    ]:
        manifest = _manifest(tmp_path, [{"patient_id": "P", "study_id": "S", **row}])
        with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(io.StringIO()):
            env.setenv("BRAINVLP_PSEUDONYM_KEY", KEY)
            index = run_ingest(
                _spec(manifest, columns=columns, splits={"dev": 0, "test": 0}), tmp_path / kind
            )
        (row,) = pq.read_table(tmp_path / kind / index["shards"][0]["file"]).to_pylist()
        volumes[kind] = decode_volumes([row["volume"]], [row["volume_shape"]])[0].astype(np.int32)
    assert np.abs(volumes["nifti"] - volumes["dicom"]).max() <= 1


def test_series_rules_need_dicom_input() -> None:
    with pytest.raises(SpecError, match=r"ingest\.series: series rules pick DICOM series"):
        parse(
            IngestSpec,
            SMALL_INGEST | {"manifest": "m.csv", "series": {"t1c": {"patterns": ["t1"]}}},
            "ingest",
        )
    with pytest.raises(SpecError, match=r"ingest\.series: no series rule for \['dwi'\]"):
        dwi = {"manifest": "m.csv", "sequences": ["dwi"], "columns": {"dicom": "d"}}
        parse(IngestSpec, SMALL_INGEST | dwi, "ingest")


def test_pydicoms_own_sample_files_ingest(local_ray, tmp_path: Path) -> None:
    """Real MR files no one here wrote (pydicom's wheel): as stacked series they ingest; one alone is no
    series to choose; JPEG-LS without a decoder is unreadable; each a reject with its reason."""
    rows = []
    for k, name in enumerate(SAMPLES):
        folder = tmp_path / f"sample{k}"
        folder.mkdir()
        _stack_sample(name, folder)
        rows.append({"patient_id": f"P{k}", "study_id": f"S{k}", "dicom": folder.name})
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), single / "image.dcm")
    jpeg_ls = tmp_path / "jpeg_ls"
    jpeg_ls.mkdir()
    _stack_sample("MR_small_jpeg_ls_lossless.dcm", jpeg_ls)
    rows += [{"patient_id": "P8", "study_id": "single", "dicom": "single"},
             {"patient_id": "P9", "study_id": "jpeg_ls", "dicom": "jpeg_ls"}]  # fmt: skip
    spec = _spec(
        _manifest(tmp_path, rows),
        sequences=["t1c"],
        columns={"dicom": "dicom", "mask": None, "findings": None},
        series={"t1c": {"patterns": [".*"]}},  # the samples' descriptions name no sequence
        splits={"dev": 0, "test": 0},
    )
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(io.StringIO()):
        env.setenv("BRAINVLP_PSEUDONYM_KEY", KEY)
        index = run_ingest(spec, tmp_path / "run")
    rejects = {
        r["study_id"]: r["reason"] for r in pq.read_table(tmp_path / "run" / "rejects.parquet").to_pylist()
    }
    assert index["splits"] == {"train": len(SAMPLES)}
    assert rejects["single"] == "missing_sequence"  # a one-slice series is never chosen: nothing left
    decodable = importlib.util.find_spec("pylibjpeg") or importlib.util.find_spec("jpeg_ls")
    assert rejects.get("jpeg_ls") == (None if decodable else "dicom_unreadable")


def test_the_phantom_as_a_pacs_export_runs_through_annotate_and_ingest(
    local_ray, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """configs/pacs_phantom.yaml, smaller: the DICOM phantom equals the NIfTI phantom, its localisers are
    never chosen, its gap is rejected, and the rule-annotated findings reach the shards."""
    from brainvlp.data.dicom import load_series, read_study
    from brainvlp.phantom.config import PhantomConfig
    from brainvlp.phantom.generate import generate_phantom
    from brainvlp.pipeline import load_spec
    from brainvlp.runner import run

    config = {"num_studies": 6, "num_patients": 5, "shape": [24, 24, 24], "corrupt_studies": 1}
    generate_phantom(PhantomConfig(**config), tmp_path / "nifti")
    sets = [f"phantom.dataset.{key}={json.dumps(value)}" for key, value in config.items()]
    sets += [f"output_root={tmp_path}", "ingest.volume.shape=[24,24,24]", "ingest.min_shards=1"]
    run(load_spec(Path(__file__).parents[1] / "configs" / "pacs_phantom.yaml", sets))
    out = tmp_path / "pacs_phantom"
    export = out / "phantom" / "dicom"
    study = sorted(export.iterdir())[1]  # the first is the corrupt one
    series = read_study(str(study))
    assert sorted(s.description for s in series) == ["3-plane localizer", "AX T2 FLAIR", "Ax T1 POST"]
    t1c = load_series(next(s for s in series if s.description == "Ax T1 POST"))
    nifti = nib.load(tmp_path / "nifti" / "images" / f"{study.name}_t1c.nii.gz")
    assert np.array_equal(np.asarray(t1c.dataobj), np.asarray(nifti.dataobj))
    assert np.allclose(t1c.affine, nifti.affine, atol=1e-4)
    index = json.loads((out / "ingest" / "index.json").read_text())
    assert index["rejects"]["by_reason"].get("dicom_gap") == 1
    rejected = sum(index["rejects"]["by_reason"].values())
    assert index["selection"]["by_sequence"]["t1c"]["chosen"] == 6 - rejected
    chosen = pq.read_table(out / "ingest" / "selection.parquet").column("series").to_pylist()
    assert chosen and not [name for name in chosen if "localizer" in name]
    annotated = pq.read_table(out / "annotate" / "manifest.parquet").column("annotation_status").to_pylist()
    assert annotated == ["ok"] * 6
    selection_line = f"ingest: series selection: flair {6 - rejected} chosen / 0 unmatched, t1c"
    assert selection_line in capfd.readouterr().out
