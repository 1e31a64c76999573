"""NIfTI loading, validation and preprocessing (METHODS 1.1) on small volumes written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from brainvlp.data.errors import RejectError
from brainvlp.data.nifti import (
    VolumeConfig,
    _output_grid,
    _percentile,
    load_nifti,
    load_study,
    preprocess_image,
    preprocess_mask,
)
from brainvlp.data.resample import aligned_view, resample
from volumes import CUBE, PHANTOM_SHAPE, RAS_AFFINE, labels, phantom, reject_cases, reoriented, save

SMALL = VolumeConfig(shape=(16, 20, 24))


def _cube_centre(volume: np.ndarray, threshold: float) -> np.ndarray:
    return np.argwhere(volume >= threshold).mean(axis=0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("image_class", [nib.Nifti1Image, nib.Nifti2Image])
def test_formats_give_the_same_volume(tmp_path: Path, suffix: str, image_class: type) -> None:
    reference = preprocess_image(nib.Nifti1Image(phantom(), RAS_AFFINE), SMALL)
    path = save(tmp_path / f"t1{suffix}", image_class(phantom(), RAS_AFFINE))
    out = preprocess_image(load_nifti(path), SMALL)
    assert out.dtype == np.int16 and out.shape == SMALL.shape
    np.testing.assert_array_equal(out, reference)


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.uint16, np.float32, np.float64])
@pytest.mark.parametrize("slope_inter", [(0.5, 3.0), (None, None)])
def test_stored_types_and_scaling_give_float32_voxels(
    tmp_path: Path, dtype: type, slope_inter: tuple
) -> None:
    raw = (phantom() / 4 if dtype == np.int8 else phantom() * 10).astype(dtype)  # int8 tops out at 127
    img = nib.Nifti1Image(raw, RAS_AFFINE)
    img.header.set_data_dtype(dtype)
    img.header.set_slope_inter(*slope_inter)
    loaded = load_nifti(save(tmp_path / "t1.nii.gz", img))
    data = np.asanyarray(loaded.dataobj)
    slope, inter = (1.0, 0.0) if slope_inter[0] is None else slope_inter
    assert data.dtype == np.float32 and data.shape == PHANTOM_SHAPE
    np.testing.assert_allclose(data, raw.astype(np.float64) * slope + inter, rtol=1e-6)


def test_a_file_uri_reads_like_a_path(tmp_path: Path) -> None:
    path = save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))
    from_uri = load_nifti(Path(path).as_uri())
    np.testing.assert_array_equal(np.asanyarray(from_uri.dataobj), np.asanyarray(load_nifti(path).dataobj))


def test_a_large_anisotropic_matrix_fits_its_physical_extent(tmp_path: Path) -> None:
    """512 x 512 x 300 at 0.45 x 0.45 x 0.5 mm (a thin-slice 3D acquisition): a 230 x 230 x 150 mm box."""
    data = np.zeros((512, 512, 300), dtype=np.int16)
    data[100:400, 120:420, 50:250] = 300
    data[300:350, 300:350, 200:240] = 900  # bright block at right, anterior, superior
    affine = np.diag([0.45, 0.45, 0.5, 1.0])
    path = save(tmp_path / "big.nii.gz", nib.Nifti1Image(data, affine))
    # min-max intensity: a 99th-percentile clip would flatten a block this small into the tissue.
    config = VolumeConfig(spacing=(2.0, 2.0, 2.0), shape=(32, 64, 64), intensity="znorm")
    study = load_study({"t1": path}, config)
    volume = study.volume[0]
    assert volume.shape == (32, 64, 64) and study.spacing == pytest.approx(
        (150 / 32, 230 / 64, 230 / 64), rel=0.02
    )
    # The block sits at the far end of every axis (superior, anterior, right) after resampling.
    centre = np.argwhere(volume >= 0.8 * volume.max()).mean(axis=0) / np.array(volume.shape)
    expected = np.array([220 / 300, 325 / 512, 325 / 512])
    np.testing.assert_allclose(centre, expected, atol=0.05)


def test_singleton_fourth_dimension_is_squeezed(tmp_path: Path) -> None:
    path = save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom()[..., None], RAS_AFFINE))
    assert load_nifti(path).shape == PHANTOM_SHAPE


def test_output_range_dtype_and_shape() -> None:
    for intensity in ("brat", "znorm", "selip"):
        config = VolumeConfig(shape=(16, 20, 24), intensity=intensity, scale_max=800)
        out = preprocess_image(nib.Nifti1Image(phantom(), RAS_AFFINE), config)
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
    path = save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))
    study = load_study({"t1": path}, VolumeConfig(shape=(11, 13, 15)))
    # 1 mm grid of (D, H, W) = (22, 26, 30) voxels resized to (11, 13, 15).
    assert study.spacing == pytest.approx((2.0, 2.0, 2.0))
    crop = load_study({"t1": path}, VolumeConfig(shape=(11, 13, 15), fit="crop_pad"))
    assert crop.spacing == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("codes", ["LPS", "LIA", "PSR", "ASL"])
def test_every_storage_orientation_gives_the_same_array(tmp_path: Path, codes: str) -> None:
    ras = nib.Nifti1Image(phantom(), RAS_AFFINE)
    expected = preprocess_image(ras, SMALL)
    stored = reoriented(ras, codes)
    assert nib.aff2axcodes(stored.affine) == tuple(codes)
    out = preprocess_image(load_nifti(save(tmp_path / f"{codes}.nii.gz", stored)), SMALL)
    np.testing.assert_array_equal(out, expected)


def test_axis_convention_is_superior_anterior_right() -> None:
    # Identity grid (crop_pad to the 1 mm grid) so the cube's voxel indices are directly comparable.
    out = preprocess_image(
        nib.Nifti1Image(phantom(), RAS_AFFINE), VolumeConfig(shape=(22, 26, 30), fit="crop_pad")
    )
    d, h, w = (np.argwhere(out == out.max()).min(axis=0)).tolist()
    assert (d, h, w) == (CUBE[2].start, CUBE[1].start, CUBE[0].start)


def test_oblique_affine_is_resampled_through_world_space() -> None:
    # Rotate the voxel grid 30 degrees about z; the cube must land where its world position says.
    angle = np.deg2rad(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    img = nib.Nifti1Image(phantom(), affine)
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
    image = nib.Nifti1Image(phantom(), RAS_AFFINE)
    mask = reoriented(nib.Nifti1Image(labels(), RAS_AFFINE), "LIA")
    paths = {"t1": save(tmp_path / "t1.nii.gz", image)}
    study = load_study(paths, SMALL, mask_path=save(tmp_path / "mask.nii.gz", mask))
    assert study.mask is not None and study.mask.dtype == np.uint8 and study.mask.shape == SMALL.shape
    assert set(np.unique(study.mask).tolist()) == {0, 1, 2}
    image_cube = study.volume[0] >= 0.9 * study.volume[0].max()
    np.testing.assert_allclose(_cube_centre(image_cube, 1), _cube_centre(study.mask, 2), atol=0.5)
    direct = preprocess_mask(nib.Nifti1Image(labels().astype(np.float32), RAS_AFFINE), SMALL)
    np.testing.assert_array_equal(direct, study.mask)


def test_crop_pad_centres_the_volume() -> None:
    out = preprocess_image(
        nib.Nifti1Image(phantom(), RAS_AFFINE), VolumeConfig(shape=(30, 20, 30), fit="crop_pad")
    )
    # D: 22 -> 30 pads 4 before; H: 26 -> 20 crops 3 before; W: 30 stays.
    full = preprocess_image(
        nib.Nifti1Image(phantom(), RAS_AFFINE), VolumeConfig(shape=(22, 26, 30), fit="crop_pad")
    )
    np.testing.assert_array_equal(out[4:26], full[:, 3:23])
    assert not out[:4].any() and not out[26:].any()


def test_missing_sequence_is_a_zero_channel_or_a_reject(tmp_path: Path) -> None:
    path = save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))
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


def test_each_bad_input_is_rejected_with_its_reason(tmp_path: Path) -> None:
    secret_dir = tmp_path / "patient-0042"
    secret_dir.mkdir()
    for reason, path in reject_cases(secret_dir):
        with pytest.raises(RejectError) as err:
            load_study({"t1": path}, SMALL)
        assert err.value.reason == reason, path
        # The detail names the sequence, never the path (which may carry patient ids).
        assert "sequence t1" in err.value.detail and "patient-0042" not in str(err.value)
        assert err.value.__cause__ is None


def test_an_all_zero_mask_is_allowed(tmp_path: Path) -> None:
    paths = {"t1": save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))}
    empty_mask = save(
        tmp_path / "mask.nii.gz", nib.Nifti1Image(np.zeros(PHANTOM_SHAPE, np.uint8), RAS_AFFINE)
    )
    study = load_study(paths, SMALL, mask_path=empty_mask)
    assert study.mask is not None and not study.mask.any()


def test_mask_labels_outside_uint8_are_rejected(tmp_path: Path) -> None:
    paths = {"t1": save(tmp_path / "t1.nii.gz", nib.Nifti1Image(phantom(), RAS_AFFINE))}
    bad_mask = save(tmp_path / "mask.nii.gz", nib.Nifti1Image(labels().astype(np.int16) - 1, RAS_AFFINE))
    with pytest.raises(RejectError, match="bad_mask"):
        load_study(paths, SMALL, mask_path=bad_mask)


def test_config_validation() -> None:
    assert VolumeConfig(spacing=[1, 1, 2], shape=[8, 8, 8]).shape == (8, 8, 8)  # YAML lists become tuples
    for bad in ({"fit": "stretch"}, {"intensity": "minmax"}, {"shape": (0, 8, 8)}, {"scale_max": 40000}):
        with pytest.raises(ValueError):
            VolumeConfig(**bad)
    with pytest.warns(UserWarning, match="no effect"):
        VolumeConfig(intensity="znorm", percentile=95.0)


def _tails() -> list[np.ndarray]:
    """Volumes above the percentile's sampling threshold, with the value patterns that trip selection."""
    rng = np.random.default_rng(0)
    shape = (64, 64, 40)
    noise = rng.normal(100, 30, shape).astype(np.float32)
    sparse = np.where(rng.random(shape) < 0.02, noise, 0).astype(np.float32)  # almost all background
    ties = rng.integers(0, 4, shape).astype(np.float32)  # a handful of values, many equal
    signed = rng.normal(0, 1, shape).astype(np.float32)  # negative values below the zeros
    ramp = np.sort(noise.ravel()).reshape(shape)  # sorted data defeats a strided sample
    return [noise, sparse, ties, signed, ramp]


@pytest.mark.parametrize("nonzero", [True, False])
def test_fast_percentile_equals_numpy(nonzero: bool) -> None:
    for volume in _tails():
        values = volume[volume != 0] if nonzero else volume.ravel()
        for q in (0.0, 50.0, 99.0, 99.9, 100.0):
            expected = np.percentile(values.astype(np.float64), q)
            assert _percentile(volume.copy(), q, nonzero=nonzero) == pytest.approx(expected, rel=1e-6), q


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LIA", "PSR"])
@pytest.mark.parametrize("voxel_mm", [1.0, 0.7, 2.5])
def test_axis_aligned_shortcut_matches_full_resampling(codes: str, voxel_mm: float) -> None:
    """The flip/transpose (+ separable) path gives what the general affine path gives, inside the volume."""
    img = reoriented(nib.Nifti1Image(phantom(), RAS_AFFINE @ np.diag([voxel_mm] * 3 + [1])), codes)
    data = np.asarray(img.dataobj, dtype=np.float32)
    grid = _output_grid(img, VolumeConfig(spacing=(1.0, 1.0, 1.0)))
    grid_to_voxel = np.linalg.solve(img.affine, grid[1])
    full = ndimage.affine_transform(data, grid_to_voxel[:3, :3], grid_to_voxel[:3, 3], grid[0], order=1)
    assert aligned_view(data, grid_to_voxel[:3, :3], grid_to_voxel[:3, 3], grid[0]) is not None
    fast = resample(data, img.affine, grid, order=1)
    inner = (slice(1, -1),) * 3  # the general path's hard edge may drop a boundary plane to float noise
    np.testing.assert_allclose(fast[inner], full[inner], atol=1e-3)
