"""DICOM studies -> series -> volumes (data/dicom.py) and series selection (data/series_select.py).

Every DICOM file here is written by the test with pydicom from a known volume and affine (or stacked from
pydicom's own sample files, which ship in its wheel); nothing is downloaded. Every file carries
distinctive identifying values (PHI below) and sits under a folder named after the patient, so that the
tests can assert that no series description, selection reason or reject detail ever shows one.
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from brainvlp.data import dicom_source, errors
from brainvlp.data.dicom import DICOM_REJECT_REASONS, SeriesInfo, load_series, read_study, scan_study
from brainvlp.data.errors import RejectError
from brainvlp.data.limits import IngestLimits
from brainvlp.data.series_select import (
    BRAT_T1C_PATTERNS,
    DEFAULT_RULES,
    SelectionRule,
    select_series,
)
from brainvlp.phantom import dicom_export
from brainvlp.phantom.dicom_export import LPS, base_dataset
from brainvlp.spec import SpecError, parse

STUDY_DATE = "20191107"
PHI = {
    "PatientName": "Qzlowski^Wilhelmina",
    "PatientID": "MRN77X31Q",
    "PatientBirthDate": "19230417",
    "AccessionNumber": "ACC5XK29",
    "InstitutionName": "Saint Qwerty Clinic",
    "InstitutionAddress": "12 Zyxwv Lane",
    "ReferringPhysicianName": "Drqqq^Referrer",
    "OperatorsName": "Opzzz^Tech",
    "StationName": "STATIONXQ7",
    "StudyID": "STUDYQQ9",
    "StudyDate": STUDY_DATE,
    "SeriesDate": STUDY_DATE,
    "StudyTime": "134455.123",
}
PHI_STRINGS = {v for v in PHI.values()} | {"Qzlowski", "Wilhelmina", "Drqqq", "Opzzz", "134455"}
# UIDs under this root embed the study date, as many scanners' UIDs do.
UID_ROOT = f"1.2.826.0.1.3680043.9.7.{STUDY_DATE}."
AXIAL = np.array([[0.9, 0, 0, -10.0], [0, 1.1, 0, 12.0], [0, 0, 2.0, -5.0], [0, 0, 0, 1]])


def _oblique() -> np.ndarray:
    """A proper rotation (20 degrees about x, then 30 about z) with 0.8 x 1.2 x 2.5 mm voxels."""
    a, b = np.radians(20), np.radians(30)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 1.2, 2.5])
    affine[:3, 3] = [30.0, -40.0, 10.0]
    return affine


def test_every_dicom_reason_is_a_reject_reason() -> None:
    assert set(DICOM_REJECT_REASONS) <= set(errors.REJECT_REASONS)


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A study folder under a folder named after the patient, as exports name them."""
    folder = tmp_path / f"{PHI['PatientID']}_{PHI['PatientName']}" / "study"
    folder.mkdir(parents=True)
    return folder


def _assert_no_phi(*texts: str) -> None:
    for text in texts:
        leaked = [s for s in PHI_STRINGS if s in text]
        assert not leaked, f"PHI {leaked} in {text!r}"


def _reject(reason: str, call, *args, **kwargs) -> RejectError:
    with pytest.raises(RejectError) as info:
        call(*args, **kwargs)
    err = info.value
    _assert_no_phi(str(err), repr(err), err.detail)
    assert err.reason == reason, err
    return err


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _base(sop_class: str, series_uid: str, **header) -> Dataset:
    """A dataset with file meta, PHI, series attributes and 16-bit grey-level pixel attributes."""
    return base_dataset(sop_class, series_uid, UID_ROOT, {**PHI, **header})


def write_series(
    folder: Path,
    stored: np.ndarray,
    affine: np.ndarray,
    *,
    description: str = "Ax T1 POST",
    number: int = 3,
    syntax: str = ExplicitVRLittleEndian,
    **kwargs,
) -> list[Path]:
    """``dicom_export.write_series`` with PHI in every file and this test's UID root (dates in UIDs)."""
    compressed = None if syntax == ExplicitVRLittleEndian else syntax
    return dicom_export.write_series(folder, stored, affine, description=description, number=number,
                                     uid_root=UID_ROOT, syntax=compressed, **{**PHI, **kwargs})  # fmt: skip


def write_enhanced(
    path: Path, stored: np.ndarray, affine: np.ndarray, slope: float, intercept: float
) -> None:
    """The same volume as one enhanced multi-frame file, its frames in shuffled order."""
    lps = LPS @ affine
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    ds = _base(EnhancedMRImageStorage, generate_uid(UID_ROOT), SeriesDescription="3D T1 +C", SeriesNumber=9)
    ds.ImageType, ds.MRAcquisitionType = ["ORIGINAL", "PRIMARY", "M", "NONE"], "3D"
    shared = Dataset()
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = [_ds(dr), _ds(dc)]
    shared.PixelMeasuresSequence[0].SliceThickness = _ds(np.linalg.norm(lps[:3, 2]))
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = [
        _ds(v) for v in np.concatenate([lps[:3, 0] / dc, lps[:3, 1] / dr])
    ]
    shared.PixelValueTransformationSequence = [Dataset()]
    transform = shared.PixelValueTransformationSequence[0]
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = (
        _ds(slope),
        _ds(intercept),
        "US",
    )
    ds.SharedFunctionalGroupsSequence = [shared]
    order = np.random.default_rng(1).permutation(stored.shape[2])
    ds.PerFrameFunctionalGroupsSequence = []
    for k in order:
        frame = Dataset()
        frame.PlanePositionSequence = [Dataset()]
        frame.PlanePositionSequence[0].ImagePositionPatient = [_ds(v) for v in (lps @ [0, 0, k, 1])[:3]]
        ds.PerFrameFunctionalGroupsSequence.append(frame)
    pixels = np.ascontiguousarray(stored[:, :, order].transpose(2, 1, 0).astype(np.int16))
    ds.NumberOfFrames, ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _volume(shape: tuple[int, int, int] = (7, 6, 5), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3000, size=shape).astype(np.int16)


def _only(path: Path | str, **kwargs) -> SeriesInfo:
    (series,) = read_study(str(path), **kwargs)
    return series


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


# (a) round trip ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [AXIAL, _oblique()], ids=["axial", "oblique"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless], ids=["explicit", "rle"])
def test_round_trip(study: Path, affine: np.ndarray, syntax: str) -> None:
    stored = _volume()
    write_series(study, stored, affine, slope=0.5, intercept=-20.0, syntax=syntax)
    img = load_series(_only(study))
    assert img.shape == stored.shape and img.get_data_dtype() == np.float32
    np.testing.assert_allclose(img.get_fdata(), stored * 0.5 - 20.0)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)


def test_order_comes_from_positions_not_writing_order(study: Path) -> None:
    """Slices written in descending position come back ascending along the normal: the data flipped,
    the affine the original, i.e. the same image in world space."""
    stored, n = _volume(), 5
    flip = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, n - 1], [0, 0, 0, 1]], dtype=float)
    write_series(study, stored[:, :, ::-1], AXIAL @ flip)
    img = load_series(_only(study))
    np.testing.assert_array_equal(img.get_fdata(), stored)
    np.testing.assert_allclose(img.affine, AXIAL, atol=1e-5)


# (b) enhanced multi-frame -----------------------------------------------------------------------------


@pytest.mark.parametrize("affine", [AXIAL, _oblique()], ids=["axial", "oblique"])
def test_enhanced_multiframe_matches_single_frames(study: Path, tmp_path: Path, affine: np.ndarray) -> None:
    stored = _volume()
    write_series(study, stored, affine, slope=2.0, intercept=5.0)
    enhanced = tmp_path / "enhanced"
    enhanced.mkdir()
    write_enhanced(enhanced / "one.dcm", stored, affine, slope=2.0, intercept=5.0)
    series = _only(enhanced)
    assert series.multiframe and series.num_slices == 5 and series.num_files == 1
    assert series.slice_thickness == pytest.approx(np.linalg.norm(affine[:3, 2]))
    single, multi = load_series(_only(study)), load_series(series)
    np.testing.assert_array_equal(multi.get_fdata(), single.get_fdata())
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-9)
    # The same file given as the study path itself.
    np.testing.assert_array_equal(load_series(_only(enhanced / "one.dcm")).get_fdata(), single.get_fdata())


# (c) rejects ------------------------------------------------------------------------------------------


def test_gap(study: Path) -> None:
    paths = write_series(study, _volume((6, 5, 8)), AXIAL)
    slice_4 = next(p for p in paths if pydicom.dcmread(p).ImagePositionPatient[2] == _ds(AXIAL[2, 3] + 4 * 2))
    slice_4.unlink()
    err = _reject("dicom_gap", load_series, _only(study))
    assert "4.00 mm" in err.detail and "2.00 mm" in err.detail


@pytest.mark.parametrize(
    "change",
    [
        {"ImageOrientationPatient": ["1", "0", "0", "0", _ds(np.cos(0.2)), _ds(np.sin(0.2))]},
        {"PixelSpacing": ["1.3", "0.9"]},
        {"Rows": 5, "Columns": 4, "PixelData": np.zeros((5, 4), np.int16).tobytes()},
    ],
    ids=["orientation", "spacing", "matrix"],
)
def test_mixed_geometry(study: Path, change: dict) -> None:
    paths = write_series(study, _volume(), AXIAL)
    _edit(paths[2], **change)
    _reject("dicom_mixed_geometry", load_series, _only(study))


def test_localizer(study: Path) -> None:
    write_series(study, _volume(), AXIAL, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    series = _only(study)
    assert series.localizer
    _reject("dicom_localizer", load_series, series)


def test_single_slice(study: Path) -> None:
    write_series(study, _volume((6, 5, 1)), AXIAL)
    _reject("dicom_single_slice", load_series, _only(study))


def test_several_volumes_in_one_series(study: Path) -> None:
    uid = generate_uid(UID_ROOT)
    write_series(study, _volume(), AXIAL, series_uid=uid, EchoNumbers=1)
    write_series(study, _volume(seed=1), AXIAL, series_uid=uid, EchoNumbers=2, seed=1)
    _reject("dicom_multi_volume", load_series, _only(study))


def test_truncated_file(study: Path) -> None:
    paths = write_series(study, _volume(), AXIAL)
    paths[1].write_bytes(paths[1].read_bytes()[:-30])
    _reject("dicom_unreadable", load_series, _only(study))


def test_no_series(study: Path) -> None:
    (study / "notes.txt").write_text("not an image")
    _reject("dicom_no_series", read_study, str(study))
    (study / "notes.txt").unlink()
    _reject("dicom_no_series", read_study, str(study))  # empty


def test_budgets(study: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_series(study, _volume(), AXIAL)
    _reject("file_too_large", read_study, str(study), limits=IngestLimits(max_file_mb=0.001))
    _reject("image_too_large", load_series, _only(study), limits=IngestLimits(max_image_mb=0.0001))
    monkeypatch.setattr(dicom_source, "MAX_STUDY_FILES", 4)
    _reject("dicom_too_many_files", read_study, str(study))


def test_bad_paths(study: Path, tmp_path: Path) -> None:
    _reject("unreadable_file", read_study, str(study / "missing"))
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    _reject("dicom_unreadable", read_study, str(broken))


# (d) pydicom's own sample files ------------------------------------------------------------------------

SAMPLES = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"]
OPTIONAL_DECODER = ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]


def _stack_sample(name: str, folder: Path, count: int = 4) -> np.ndarray:
    """Copies of a one-slice sample moved 0.8 mm apart along its normal: a real series of pixel data no
    one here wrote. Returns the sample's pixels."""
    uid = generate_uid(UID_ROOT)
    for k in range(count):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid(UID_ROOT)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = [-83.9063, -91.2, _ds(6.6406 + 0.8 * k)]
        ds.save_as(folder / f"{count - k}.dcm", enforce_file_format=True)
    return pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array


@pytest.mark.parametrize("name", SAMPLES)
def test_samples(name: str, study: Path, tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(get_testdata_file(name), single / "image.dcm")
    _reject("dicom_single_slice", load_series, _only(single))
    pixels = _stack_sample(name, study)
    img = load_series(_only(study))
    assert img.shape == (64, 64, 4)
    for k in range(4):
        np.testing.assert_array_equal(img.get_fdata()[:, :, k], pixels.T)
    expected = np.array([[-0.3125, 0, 0, 83.9063], [0, -0.3125, 0, 91.2], [0, 0, 0.8, 6.6406], [0, 0, 0, 1]])
    np.testing.assert_allclose(img.affine, expected, atol=1e-4)


@pytest.mark.parametrize("name", OPTIONAL_DECODER)
def test_samples_needing_a_decoder(name: str, study: Path) -> None:
    """Decoded where a plugin is installed; otherwise rejected, naming the transfer syntax."""
    pixels = _stack_sample(name, study)
    series = _only(study)
    try:
        img = load_series(series)
    except RejectError as err:
        _assert_no_phi(err.detail)
        assert err.reason == "dicom_unreadable" and series.transfer_syntax in err.detail
        assert "JPEG" in err.detail
    else:
        np.testing.assert_array_equal(img.get_fdata()[:, :, 0], pixels.T)


# (e) selection ----------------------------------------------------------------------------------------


def _visit(folder: Path) -> list[SeriesInfo]:
    """A visit: a localiser named like a T1 post, two T1 posts (5 mm, 1 mm), a T1 pre, a T2 and a FLAIR."""
    small = _volume((6, 5, 3))
    thick = np.diag([1.0, 1.0, 5.0, 1.0])
    for number, description, extra in [
        (1, "Ax T1 POST", {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SliceThickness": "0.5"}),
        (2, "Ax T1 POST", {"SliceThickness": "5"}),
        (3, "Axial T1 post SENSE", {"SliceThickness": "1"}),
        (4, "AX T1 pre", {"SliceThickness": "3"}),
        (5, "t2_tse_tra", {"MRAcquisitionType": "2D"}),
        (6, "AX T2 FLAIR", {"MRAcquisitionType": "2D"}),
    ]:
        write_series(folder, small, thick, description=description, number=number, seed=number, **extra)
    return read_study(str(folder))


def test_selection(study: Path) -> None:
    chosen = select_series(_visit(study), DEFAULT_RULES)
    assert {name: s.description for name, (s, _) in chosen.items()} == {
        "t1c": "Axial T1 post SENSE",
        "t1": "AX T1 pre",
        "t2": "t2_tse_tra",
        "flair": "AX T2 FLAIR",
    }
    reason = chosen["t1c"][1]
    assert "'Axial T1 post SENSE'" in reason and "2 candidates" in reason and "thinnest 1 mm" in reason
    load_series(chosen["t1c"][0])  # the chosen series is a volume


def test_selection_without_a_match(study: Path) -> None:
    series = _visit(study)
    rules = {
        "dwi": SelectionRule(patterns=(r"\bdwi\b",)),
        "t1c_3d_agent": SelectionRule(patterns=BRAT_T1C_PATTERNS, contrast=True),
        "t2_3d": SelectionRule(patterns=(r"\bt2",), exclude=("flair",), acquisition="3D"),
    }
    chosen = select_series(series, rules)
    assert all(s is None for s, _ in chosen.values())
    assert chosen["dwi"][1] == "no series name matched (6 series in the study)"
    assert (
        "1 localiser" in chosen["t1c_3d_agent"][1]
        and "2 no contrast agent recorded" in chosen["t1c_3d_agent"][1]
    )
    assert "acquisition 2D" in chosen["t2_3d"][1]
    # With the agent recorded, the rule finds it.
    recorded = [dataclasses.replace(s, contrast=s.description.startswith("Ax T1")) for s in series]
    assert select_series(recorded, rules)["t1c_3d_agent"][0].number == 2


def _info(description: str, **fields) -> SeriesInfo:
    defaults = dict(uid="0" * 16, index=0, number=1, protocol="", modality="MR", num_slices=40, num_files=40)
    defaults |= dict(rows=256, columns=256, slice_thickness=1.0, contrast=False, acquisition="3D")
    defaults |= dict(image_type=("ORIGINAL",), localizer=False, multiframe=False, transfer_syntax="x")
    return SeriesInfo(description=description, **(defaults | fields))


T1C_NAMES = [
    "Axial T1 post SENSE", "Ax T1 POST", "AX T1 +C", "T1_MPRAGE_SAG_POST", "t1_mprage_tra_Gd", "Ax BRAVO +C",
    "3D T1 +C", "T1W_3D_TFE_GD", "Sag T1 FLAIR POST", "POST T1 AX FS", "t1_se_tra_KM", "T1 C+ AX",
    "Post Gad Ax", "COR T1 CONTRAST",
]  # fmt: skip
NOT_T1C_NAMES = [
    "AX T1 PRE", "T1 W/O", "Ax T2 FLAIR", "AX T2 FSE POST", "SUB T1 post-pre", "DSC perfusion", "3-plane loc",
    "T1 postop", "Ax DWI", "Post contrast FLAIR",
]  # fmt: skip


def test_t1c_patterns() -> None:
    rule = DEFAULT_RULES["t1c"]
    for name in T1C_NAMES:
        assert select_series([_info(name)], {"t1c": rule})["t1c"][0] is not None, name
        assert select_series([_info("x", protocol=name)], {"t1c": rule})["t1c"][0] is not None, name
    for name in NOT_T1C_NAMES:
        assert select_series([_info(name)], {"t1c": rule})["t1c"][0] is None, name


def test_tie_breaks() -> None:
    series = [
        _info("Ax T1 POST", number=4, slice_thickness=1.0, num_slices=100),
        _info("Ax T1 POST", number=5, slice_thickness=1.0, num_slices=160),
        _info("Ax T1 POST", number=6, slice_thickness=3.0, num_slices=200),
    ]
    assert select_series(series, {"a": SelectionRule(patterns=("t1",))})["a"][0].number == 5
    assert (
        select_series(series, {"a": SelectionRule(patterns=("t1",), prefer="most_slices")})["a"][0].number
        == 6
    )


def test_rule_from_a_spec() -> None:
    rule = parse(SelectionRule, {"patterns": ["ax t1 post"], "contrast": True, "acquisition": "3D"}, "t1c")
    assert rule.patterns == ("ax t1 post",) and rule.exclude == () and rule.prefer == "thinnest"
    for bad in ({"patterns": ["t1 ("]}, {"patterns": []}, {"patterns": ["t1"], "acquisition": "4D"}):
        with pytest.raises(SpecError):
            parse(SelectionRule, bad, "t1c")


# (f) no PHI --------------------------------------------------------------------------------------------


def test_no_phi_in_series_or_reasons(study: Path) -> None:
    series = _visit(study)
    chosen = select_series(series, DEFAULT_RULES)
    none = select_series(series, {"dwi": SelectionRule(patterns=("dwi",))})
    scan = scan_study(str(study))
    texts = [repr(s) for s in series] + [str(s) for s in series] + [repr(scan)]
    texts += [reason for _, reason in [*chosen.values(), *none.values()]]
    _assert_no_phi(*texts)
    assert all(str(study) not in text for text in texts)
    assert all(len(s.uid) == 16 and "." not in s.uid for s in series)


# (g) archives and URIs --------------------------------------------------------------------------------


def _archives(study: Path, tmp_path: Path) -> dict[str, str]:
    files = sorted(p for p in study.rglob("*") if p.is_file())
    paths = {"folder": str(study), "uri": study.as_uri()}
    with zipfile.ZipFile(tmp_path / "study.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for p in files:
            archive.write(p, f"export/{p.relative_to(study)}")
    for mode, suffix in (("w", "tar"), ("w:gz", "tar.gz")):
        with tarfile.open(tmp_path / f"study.{suffix}", mode) as archive:
            for p in reversed(files):  # a tar lists members in any order
                archive.add(p, f"export/{p.relative_to(study)}")
    # Recognised by content: an archive's name says nothing.
    shutil.copy(tmp_path / "study.tar.gz", tmp_path / "study.bin")
    return paths | {s: str(tmp_path / f"study.{s}") for s in ("zip", "tar", "tar.gz", "bin")}


def test_archives_read_the_same(study: Path, tmp_path: Path) -> None:
    write_series(study, _volume(), AXIAL, description="Ax T1 POST", number=2)
    (study / "sub").mkdir()
    write_series(study / "sub", _volume(seed=3), _oblique(), description="t2_tse_tra", number=3, seed=3)
    expected = read_study(str(study))
    images = [load_series(s) for s in expected]
    for kind, path in _archives(study, tmp_path).items():
        series = read_study(path)
        assert series == expected, kind
        for s, img in zip(series, images, strict=True):
            loaded = load_series(s)
            np.testing.assert_array_equal(loaded.get_fdata(), img.get_fdata(), err_msg=kind)
            np.testing.assert_array_equal(loaded.affine, img.affine, err_msg=kind)


# (h) files that are not DICOM images --------------------------------------------------------------------


def test_other_files_are_counted_and_ignored(study: Path) -> None:
    paths = write_series(study, _volume(), AXIAL)
    (study / "notes.txt").write_text("hello")
    (study / ".DS_Store").write_bytes(bytes(range(256)))
    (study / "report.pdf").write_bytes(b"%PDF-1.4\n" + bytes(2000))
    text = _base("1.2.840.10008.5.1.4.1.1.88.11", generate_uid(UID_ROOT))  # a Basic Text SR: no image
    text.save_as(study / "sr.dcm", enforce_file_format=True)
    shutil.copy(paths[0], study / "copy_of_a_slice.dcm")
    scan = scan_study(str(study))
    assert (scan.num_files, scan.num_not_dicom, scan.num_without_image, scan.num_duplicates) == (10, 3, 1, 1)
    (series,) = scan.series
    assert series.num_files == 5 and series.num_slices == 5
    assert load_series(series).shape == (7, 6, 5)


def test_series_description_fields(study: Path) -> None:
    write_series(study, _volume(), AXIAL, ContrastBolusAgent="Gadavist 7.5 ml", ProtocolName="t1_mprage_post")
    series = _only(study)
    assert (series.description, series.protocol, series.modality) == ("Ax T1 POST", "t1_mprage_post", "MR")
    assert series.contrast and series.acquisition == "3D" and series.slice_thickness == 2.0
    assert (series.rows, series.columns, series.num_slices) == (6, 7, 5)
    assert series.transfer_syntax == "Explicit VR Little Endian" and not series.localizer
    assert isinstance(load_series(series), nib.Nifti1Image)
    buffer = io.StringIO()
    print(series, file=buffer)
    _assert_no_phi(buffer.getvalue())
