"""NIfTI loading, validation and preprocessing (METHODS 1.1) on small volumes written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from brainvlp.data.errors import RejectError
from brainvlp.data.nifti import VolumeConfig, load_nifti, load_study, preprocess_image, preprocess_mask

SMALL = VolumeConfig(shape=(16, 20, 24))
# Phantom in RAS voxel order (x, y, z): a dim ellipsoid "head" and a bright cube off-centre (right,
# anterior, superior), so that any flip or transpose shows up.
PHANTOM_SHAPE = (30, 26, 22)
CUBE = (slice(18, 24), slice(15, 20), slice(12, 17))  # x, y, z voxel ranges of the bright cube


def _phantom() -> np.ndarray:
    x, y, z = np.ogrid[: PHANTOM_SHAPE[0], : PHANTOM_SHAPE[1], : PHANTOM_SHAPE[2]]
    centre = (np.array(PHANTOM_SHAPE) - 1) / 2
    inside = ((x - centre[0]) / 13) ** 2 + ((y - centre[1]) / 11) ** 2 + ((z - centre[2]) / 9) ** 2 <= 1
    data = np.where(inside, 100.0, 0.0).astype(np.float32)
    data += inside * np.random.default_rng(0).normal(0, 5, PHANTOM_SHAPE).astype(np.float32)
    data[CUBE] = 400.0
    return data


def _mask() -> np.ndarray:
    labels = np.zeros(PHANTOM_SHAPE, dtype=np.uint8)
    labels[CUBE] = 2
    labels[4:8, 4:8, 4:8] = 1
    return labels


RAS_AFFINE = np.array([[1.0, 0, 0, -15], [0, 1, 0, -13], [0, 0, 1, -11], [0, 0, 0, 1]])


def _save(path: Path, img: nib.Nifti1Image) -> str:
    nib.save(img, str(path))
    return str(path)


def _reoriented(img: nib.Nifti1Image, codes: str) -> nib.Nifti1Image:
    """The same physical image stored with another voxel order (data permuted/flipped, affine to match)."""
    current = nib.orientations.io_orientation(img.affine)
    return img.as_reoriented(nib.orientations.ornt_transform(current, nib.orientations.axcodes2ornt(codes)))


def _cube_centre(volume: np.ndarray, threshold: float) -> np.ndarray:
    return np.argwhere(volume >= threshold).mean(axis=0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
def test_formats_give_the_same_volume(tmp_path: Path, suffix: str, image_class: type) -> None:
    reference = preprocess_image(nib.Nifti1Image(_phantom(), RAS_AFFINE), SMALL)
    path = _save(tmp_path / f"t1{suffix}", image_class(_phantom(), RAS_AFFINE))
    out = preprocess_image(load_nifti(path), SMALL)
    assert out.dtype == np.int16 and out.shape == SMALL.shape
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.float32])
def test_scaled_voxels_are_float32(tmp_path: Path, dtype: type) -> None:
    raw = (_phantom() * 10).astype(dtype)
    img = nib.Nifti1Image(raw, RAS_AFFINE)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(0.5, 3.0)
    loaded = load_nifti(_save(tmp_path / "t1.nii.gz", img))
    data = np.asanyarray(loaded.dataobj)
    assert data.dtype == np.float32 and data.shape == PHANTOM_SHAPE
    np.testing.assert_allclose(data, raw.astype(np.float64) * 0.5 + 3.0, rtol=1e-6)


def test_singleton_fourth_dimension_is_squeezed(tmp_path: Path) -> None:
    path = _save(tmp_path / "t1.nii.gz", nib.Nifti1Image(_phantom()[..., None], RAS_AFFINE))
    assert load_nifti(path).shape == PHANTOM_SHAPE


def test_output_range_dtype_and_shape() -> None:
    for intensity in ("brat", "znorm", "selip"):
        config = VolumeConfig(shape=(16, 20, 24), intensity=intensity, scale_max=800)
        out = preprocess_image(nib.Nifti1Image(_phantom(), RAS_AFFINE), config)
        assert out.dtype == np.int16 and out.shape == (16, 20, 24)
        assert out.min() >= 0 and out.max() == 800
        assert out[0, 0, 0] == 0  # background stays zero


def test_anisotropic_voxels_land_on_a_1mm_grid() -> None:
    # 2 x 1 x 3 mm voxels: 10 x 20 x 8 voxels span 18 x 19 x 21 mm, i.e. a 1 mm grid of (D, H, W) =
    # (22, 20, 19) voxel centres; crop_pad to exactly that shape keeps the physical layout visible.
    data = np.zeros((10, 20, 8), dtype=np.float32)
    data[2:4, 5:15, 1:7] = 50.0
    data[7, 10, 6] = 500.0  # voxel (7, 10, 6) sits at x = 14 mm, y = 10 mm, z = 18 mm
    img = nib.Nifti1Image(data, np.diag([2.0, 1.0, 3.0, 1.0]))
    config = VolumeConfig(shape=(22, 20, 19), fit="crop_pad", intensity="znorm")  # no clipping ties
    out = preprocess_image(img, config)
    assert np.unravel_index(out.argmax(), out.shape) == (18, 10, 14)


def test_resize_reports_stretched_spacing(tmp_path: Path) -> None:
    path = _save(tmp_path / "t1.nii.gz", nib.Nifti1Image(_phantom(), RAS_AFFINE))
    study = load_study({"t1": path}, VolumeConfig(shape=(11, 13, 15)))
    # 1 mm grid of (D, H, W) = (22, 26, 30) voxels resized to (11, 13, 15).
    assert study.spacing == pytest.approx((2.0, 2.0, 2.0))
    crop = load_study({"t1": path}, VolumeConfig(shape=(11, 13, 15), fit="crop_pad"))
    assert crop.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("codes", ["LPS", "LIA", "PSR", "ASL"])
def test_every_storage_orientation_gives_the_same_array(tmp_path: Path, codes: str) -> None:
    ras = nib.Nifti1Image(_phantom(), RAS_AFFINE)
    expected = preprocess_image(ras, SMALL)
    stored = _reoriented(ras, codes)
    assert nib.aff2axcodes(stored.affine) == tuple(codes)
    out = preprocess_image(load_nifti(_save(tmp_path / f"{codes}.nii.gz", stored)), SMALL)
    np.testing.assert_array_equal(out, expected)


def test_axis_convention_is_superior_anterior_right() -> None:
    # Identity grid (crop_pad to the 1 mm grid) so the cube's voxel indices are directly comparable.
    out = preprocess_image(
        nib.Nifti1Image(_phantom(), RAS_AFFINE), VolumeConfig(shape=(22, 26, 30), fit="crop_pad")
    )
    d, h, w = (np.argwhere(out == out.max()).min(axis=0)).tolist()
    assert (d, h, w) == (CUBE[2].start, CUBE[1].start, CUBE[0].start)


def test_oblique_affine_is_resampled_through_world_space() -> None:
    # Rotate the voxel grid 30 degrees about z; the cube must land where its world position says.
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    img = nib.Nifti1Image(_phantom(), affine)
    config = VolumeConfig(shape=(64, 64, 64), fit="crop_pad")
    out = preprocess_image(img, config)
    cube_world = nib.affines.apply_affine(affine, [(s.start + s.stop - 1) / 2 for s in CUBE])
    corners = nib.affines.apply_affine(
        affine, np.array(np.meshgrid(*[[0, n - 1] for n in PHANTOM_SHAPE])).reshape(3, -1).T
    )
    grid_origin = corners.min(axis=0)
    grid_shape = np.ceil(corners.max(axis=0) - grid_origin) + 1
    assert grid_shape.max() < 64
    expected = (cube_world - grid_origin)[::-1] + (64 - grid_shape[::-1]) // 2  # centred zero padding
    np.testing.assert_allclose(_cube_centre(out, 0.9 * out.max()), expected, atol=0.6)


def test_mask_keeps_labels_and_aligns_with_the_image(tmp_path: Path) -> None:
    # Store the mask in another orientation than the image: alignment must come from world space.
    image = nib.Nifti1Image(_phantom(), RAS_AFFINE)
    mask = _reoriented(nib.Nifti1Image(_mask(), RAS_AFFINE), "LIA")
    paths = {"t1": _save(tmp_path / "t1.nii.gz", image)}
    study = load_study(paths, SMALL, mask_path=_save(tmp_path / "mask.nii.gz", mask))
    assert study.mask is not None and study.mask.dtype == np.uint8 and study.mask.shape == SMALL.shape
    assert set(np.unique(study.mask).tolist()) == {0, 1, 2}
    image_cube = study.volume[0] >= 0.9 * study.volume[0].max()
    np.testing.assert_allclose(_cube_centre(image_cube, 1), _cube_centre(study.mask, 2), atol=0.5)
    direct = preprocess_mask(nib.Nifti1Image(_mask().astype(np.float32), RAS_AFFINE), SMALL)
    np.testing.assert_array_equal(direct, study.mask)


def test_crop_pad_centres_the_volume() -> None:
    out = preprocess_image(
        nib.Nifti1Image(_phantom(), RAS_AFFINE), VolumeConfig(shape=(30, 20, 30), fit="crop_pad")
    )
    # D: 22 -> 30 pads 4 before; H: 26 -> 20 crops 3 before; W: 30 stays.
    full = preprocess_image(
        nib.Nifti1Image(_phantom(), RAS_AFFINE), VolumeConfig(shape=(22, 26, 30), fit="crop_pad")
    )
    np.testing.assert_array_equal(out[4:26], full[:, 3:23])
    assert not out[:4].any() and not out[26:].any()


def test_missing_sequence_is_a_zero_channel_or_a_reject(tmp_path: Path) -> None:
    path = _save(tmp_path / "t1.nii.gz", nib.Nifti1Image(_phantom(), RAS_AFFINE))
    paths = {"t1c": None, "t1": path, "flair": ""}
    study = load_study(paths, SMALL)
    assert study.volume.shape == (3, *SMALL.shape) and study.volume.dtype == np.int16
    assert study.present == [False, True, False]
    assert not study.volume[0].any() and not study.volume[2].any() and study.volume[1].max() == 800
    assert study.mask is None
    with pytest.raises(RejectError) as err:
        load_study(paths, SMALL, missing="reject")
    assert err.value.reason == "missing_sequence" and "t1c" in err.value.detail
    with pytest.raises(RejectError, match="missing_sequence"):
        load_study({"t1": None}, SMALL)


def _with_pixdim(path: Path, pixdim: list[float]) -> str:
    """Patch the stored pixdim bytes: nibabel's writer refuses to write zero or negative voxel sizes."""
    _save(path, nib.Nifti1Image(_phantom(), RAS_AFFINE))
    header = nib.load(str(path)).header.copy()
    header["pixdim"][1:4] = pixdim
    raw = bytearray(path.read_bytes())
    raw[: len(header.binaryblock)] = header.binaryblock
    path.write_bytes(bytes(raw))
    return str(path)


def _reject_cases(tmp: Path) -> list[tuple[str, str]]:
    (tmp / "garbage.nii.gz").write_bytes(b"not a nifti file at all" * 20)
    full = _save(tmp / "full.nii.gz", nib.Nifti1Image(_phantom(), RAS_AFFINE))
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(Path(full).read_bytes()[: Path(full).stat().st_size // 2])
    nan = _phantom()
    nan[3, 3, 3] = np.nan
    singular = np.eye(4)
    singular[:3, :3] = [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
    return [
        ("unreadable_file", str(tmp / "does_not_exist.nii.gz")),
        ("unreadable_file", str(tmp / "garbage.nii.gz")),
        ("unreadable_file", str(truncated)),
        ("not_3d", _save(tmp / "4d.nii.gz", nib.Nifti1Image(np.stack([_phantom()] * 3, -1), RAS_AFFINE))),
        ("not_3d", _save(tmp / "slice.nii.gz", nib.Nifti1Image(_phantom()[:, :, :1], RAS_AFFINE))),
        ("nonfinite_voxels", _save(tmp / "nan.nii.gz", nib.Nifti1Image(nan, RAS_AFFINE))),
        ("degenerate_voxel_size", _with_pixdim(tmp / "zero.nii", [0.0, 1, 1])),
        ("degenerate_voxel_size", _with_pixdim(tmp / "negative.nii", [1.0, -1, 1])),
        (
            "degenerate_voxel_size",
            _save(tmp / "huge.nii.gz", nib.Nifti1Image(_phantom(), np.diag([50.0, 1, 1, 1]))),
        ),
        (
            "degenerate_voxel_size",
            _save(tmp / "wide.nii.gz", nib.Nifti1Image(_phantom(), np.diag([19.0, 1, 1, 1]))),
        ),
        ("singular_affine", _save(tmp / "singular.nii.gz", nib.Nifti1Image(_phantom(), singular))),
        (
            "empty_volume",
            _save(tmp / "zeros.nii.gz", nib.Nifti1Image(np.zeros(PHANTOM_SHAPE, np.float32), RAS_AFFINE)),
        ),
        (
            "empty_volume",
            _save(tmp / "flat.nii.gz", nib.Nifti1Image(np.full(PHANTOM_SHAPE, 7, np.int16), RAS_AFFINE)),
        ),
    ]


def test_each_bad_input_is_rejected_with_its_reason(tmp_path: Path) -> None:
    secret_dir = tmp_path / "patient-0042"
    secret_dir.mkdir()
    for reason, path in _reject_cases(secret_dir):
        with pytest.raises(RejectError) as err:
            load_study({"t1": path}, SMALL)
        assert err.value.reason == reason, path
        # The detail names the sequence, never the path (which may carry patient ids).
        assert "sequence t1" in err.value.detail and "patient-0042" not in str(err.value)
        assert err.value.__cause__ is None


def test_an_all_zero_mask_is_allowed(tmp_path: Path) -> None:
    paths = {"t1": _save(tmp_path / "t1.nii.gz", nib.Nifti1Image(_phantom(), RAS_AFFINE))}
    empty_mask = _save(
        tmp_path / "mask.nii.gz", nib.Nifti1Image(np.zeros(PHANTOM_SHAPE, np.uint8), RAS_AFFINE)
    )
    study = load_study(paths, SMALL, mask_path=empty_mask)
    assert study.mask is not None and not study.mask.any()


def test_mask_labels_outside_uint8_are_rejected(tmp_path: Path) -> None:
    paths = {"t1": _save(tmp_path / "t1.nii.gz", nib.Nifti1Image(_phantom(), RAS_AFFINE))}
    bad_mask = _save(tmp_path / "mask.nii.gz", nib.Nifti1Image(_mask().astype(np.int16) - 1, RAS_AFFINE))
    with pytest.raises(RejectError, match="unreadable_file"):
        load_study(paths, SMALL, mask_path=bad_mask)


def test_config_validation() -> None:
    assert VolumeConfig(spacing=[1, 1, 2], shape=[8, 8, 8]).shape == (8, 8, 8)  # YAML lists become tuples
    for bad in ({"fit": "stretch"}, {"intensity": "minmax"}, {"shape": (0, 8, 8)}, {"scale_max": 40000}):
        with pytest.raises(ValueError):
            VolumeConfig(**bad)
    with pytest.warns(UserWarning, match="no effect"):
        VolumeConfig(intensity="znorm", percentile=95.0)
