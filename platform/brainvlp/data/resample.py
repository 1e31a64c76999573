"""Resampling a voxel array onto an output grid through its voxel-to-world affine (METHODS 1.1 step 2).

Scanner data is usually axis-aligned with world space, and then the samples of the general (oblique) path
come much cheaper: a flip/transpose view reads every output axis along one input axis, a pure copy when the
voxel lattices coincide, and scipy's separable diagonal path otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Grid = tuple[tuple[int, int, int], np.ndarray]  # output shape and its voxel-to-world affine

# Sample displacement (voxels, over the whole grid) below which a grid counts as aligned with the data's
# voxel lattice: float32 header round-off, far below anything interpolation could show.
ALIGNED_TOLERANCE = 1e-4


def resample(data: np.ndarray, affine: np.ndarray, grid: Grid, order: int) -> np.ndarray:
    """Sample ``data`` (indexed by ``affine``) on ``grid`` through the full affine, oblique or not.

    Returns a new C-ordered array (callers normalise it in place). Scanner data is usually axis-aligned,
    and then the same samples come much cheaper: a flip/transpose view reads every output axis along one
    input axis, a pure copy when the voxel lattices coincide, scipy's separable diagonal path otherwise.
    """
    grid_shape, grid_affine = grid
    grid_to_voxel = np.linalg.solve(affine, grid_affine)
    matrix, offset = grid_to_voxel[:3, :3], grid_to_voxel[:3, 3]
    aligned = aligned_view(data, matrix, offset, grid_shape)
    if aligned is None:
        # (D, H, W) output walks x fastest, which matches nibabel's Fortran-ordered arrays: ~5x faster
        # than writing (x, y, z) and transposing afterwards.
        return ndimage.affine_transform(data, matrix, offset, grid_shape, order=order, mode="constant")
    view, scale, offset = aligned
    start = np.rint(offset)
    drift = np.abs(scale - 1) * (np.asarray(grid_shape) - 1) + np.abs(offset - start)
    if drift.max() <= ALIGNED_TOLERANCE and start.min() >= 0 and (start + grid_shape <= view.shape).all():
        # Same voxel size on the same lattice: every sample is a voxel, so a copy is the exact result
        # (a 1 mm scan at 1 mm spacing: ~100x faster than interpolating).
        window = tuple(slice(int(s), int(s) + n) for s, n in zip(start, grid_shape, strict=True))
        return view[window].copy(order="C")
    # Own-grid edge samples sit exactly on the data's outer voxel centres, where float noise decides
    # whether "constant" (a hard cutoff) drops a whole plane; inside the data "nearest" has no such cliff
    # and otherwise gives the same values.
    last = offset + scale * (np.asarray(grid_shape) - 1)
    inside = offset.min() >= -ALIGNED_TOLERANCE and (last - view.shape).max() <= ALIGNED_TOLERANCE - 1
    mode = "nearest" if inside else "constant"
    # A diagonal matrix selects scipy's separable zoom/shift path: ~5x faster than a full matrix.
    return ndimage.affine_transform(view, scale, offset, grid_shape, order=order, mode=mode)


def aligned_view(
    data: np.ndarray, matrix: np.ndarray, offset: np.ndarray, grid_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``data`` transposed and flipped (a view) so that grid axis j samples view axis j at positions
    ``scale[j] * i + offset[j]`` with ``scale > 0``; None when the grid is not axis-aligned with ``data``."""
    axes = np.abs(matrix).argmax(axis=0)  # the data axis that each grid axis moves along
    if len(set(axes.tolist())) != 3:
        return None
    columns = np.arange(3)
    off_axis = np.abs(matrix)
    off_axis[axes, columns] = 0
    # How far (in voxels) the cross terms move any sample over the whole grid: header round-off only.
    if (off_axis @ (np.asarray(grid_shape) - 1)).max() > ALIGNED_TOLERANCE:
        return None
    scale, offset = matrix[axes, columns], offset[axes]
    view = data.transpose(axes)
    flip = scale < 0
    view = view[tuple(slice(None, None, -1) if f else slice(None) for f in flip)]
    # Position p on a flipped axis of length n is position n - 1 - p on the view.
    offset = np.where(flip, np.asarray(view.shape) - 1 - offset, offset)
    return view, np.abs(scale), offset
