"""Evaluation plots of images and of single images' embeddings, as PNG files: attention/Grad-CAM overlays,
retrieval examples, and the MDS of Q-Former views (brat Fig. 3).

Same conventions as ``brainvlp.evaluate.plots``: matplotlib's object API only, one figure per call saved at
``path`` and the path returned. Volumes are ``D x H x W`` with axial slices along D (axis 0), H posterior ->
anterior and W left -> right (``brainvlp.data.nifti``); slices are drawn with ``origin="lower"`` so anterior
is up and the patient's left is on the viewer's left (neurological convention).

Privacy: the text drawn comes only from the caller's short labels (titles, finding labels, captions), which
are refused when they span lines or run long, since that looks like report text. Never pass report text or
patient/study ids.

Shape legend: D, H, W volume depth (axial), height, width; K retrieved hits per query; N images, Q queries
(views per image), E embedding width, P image tokens, M = N x Q points in an MDS plot.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

# The private helpers are this module's sibling's: the MDS must use the distances that collapse_scores uses.
from brainvlp.evaluate.plots import _distributions, _js_distance, _unit_rows, collapse_scores, save_figure

HEAT_THRESHOLD = 0.5
_MAX_LABEL_CHARS = 120
_WRAP_CHARS = 30
_IMAGE_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def _short_label(text: str, what: str) -> str:
    """Refuse text that looks like a report rather than a label: several lines, or long."""
    text = str(text)
    if "\n" in text or len(text) > _MAX_LABEL_CHARS:
        raise ValueError(f"{what} must be a short one-line label (<= {_MAX_LABEL_CHARS} characters)")
    return text


def _grey_limits(image: np.ndarray) -> tuple[float, float]:
    """1st-99th percentile window: a few bright voxels (vessels, fat) would otherwise grey out the brain."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(finite, [1, 99])
    return float(low), float(high if high > low else low + 1.0)


def _show(axes: Any, slice_HW: np.ndarray, limits: tuple[float, float]) -> None:
    axes.imshow(
        slice_HW, cmap="gray", vmin=limits[0], vmax=limits[1], origin="lower", interpolation="nearest"
    )


def _lesion_slice(mask_DHW: np.ndarray | None, depth: int) -> int:
    """The axial slice with the largest lesion cross-section; the middle slice without a lesion."""
    if mask_DHW is None or not mask_DHW.any():
        return depth // 2
    return int(np.argmax(mask_DHW.reshape(depth, -1).sum(axis=1)))


def _overlay_example(axes_3: Sequence[Any], example: Mapping[str, Any]) -> Any:
    """Draw one row (slice, heat overlay, contours); returns the heat image for the colour bar."""
    volume_DHW = np.asarray(example["volume_DHW"], dtype=np.float32)
    heat_DHW = np.clip(np.asarray(example["heat_DHW"], dtype=np.float32), 0.0, 1.0)
    mask = example.get("mask_DHW")
    mask_DHW = None if mask is None else np.asarray(mask) != 0
    if (
        volume_DHW.ndim != 3
        or heat_DHW.shape != volume_DHW.shape
        or (mask_DHW is not None and mask_DHW.shape != volume_DHW.shape)
    ):
        raise ValueError("volume_DHW, heat_DHW and mask_DHW must be 3-D arrays of one shape")
    z = _lesion_slice(mask_DHW, volume_DHW.shape[0])
    limits = _grey_limits(volume_DHW)
    for axes in axes_3:
        _show(axes, volume_DHW[z], limits)
        axes.set_axis_off()
    heat_image = axes_3[1].imshow(
        heat_DHW[z], cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.45, origin="lower", interpolation="bilinear"
    )
    # contour() warns on a constant field, so only draw the outlines that exist on this slice.
    if mask_DHW is not None and mask_DHW[z].any():
        axes_3[2].contour(mask_DHW[z].astype(np.float32), levels=[0.5], colors="red", linewidths=1.0)
    if heat_DHW[z].min() <= HEAT_THRESHOLD < heat_DHW[z].max():
        axes_3[2].contour(heat_DHW[z], levels=[HEAT_THRESHOLD], colors="yellow", linewidths=1.0)
    axes_3[0].set_title(f"{_short_label(example['title'], 'title')}\nslice z = {z}", fontsize=8)
    axes_3[1].set_title("attention overlay", fontsize=8)
    axes_3[2].set_title("lesion vs attention outline", fontsize=8)
    return heat_image


def plot_attention_overlays(examples: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One row per example: the axial slice with the largest lesion area (middle slice without a mask), the
    heat map over it, and the lesion outline (red) against the heat map thresholded at 0.5 (yellow).

    Each example holds "volume_DHW" (float), "heat_DHW" (attention or Grad-CAM upsampled to the volume, in
    [0, 1]), "mask_DHW" (bool, or None) and "title" (a short label).
    """
    if not examples:
        raise ValueError("no examples to plot")
    figure = Figure(figsize=(8.4, 2.8 * len(examples) + 0.3), layout="constrained")
    axes_R3 = figure.subplots(len(examples), 3, squeeze=False)
    for axes_3, example in zip(axes_R3, examples, strict=True):
        heat_image = _overlay_example(axes_3, example)
    figure.colorbar(heat_image, ax=list(axes_R3[:, 1]), label="attention", shrink=0.8)
    proxies = [Line2D([], [], color="red"), Line2D([], [], color="yellow")]
    figure.legend(
        proxies,
        ["lesion", f"attention > {HEAT_THRESHOLD:g}"],
        loc="outside lower center",
        ncols=2,
        fontsize=8,
    )
    return save_figure(figure, path)


def _frame(axes: Any, colour: str, width: float) -> None:
    """Ticks off but spines kept (set_axis_off would hide the frame that marks a correct hit)."""
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)


def plot_retrieval_examples(examples: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """One row per query: the query study's own image, then its top-k retrieved images in rank order.

    Each example holds "query_label" (a short label such as the query's finding labels, never report text),
    "query_slice_HW" (the query study's middle axial slice) and "hits", a list of (slice_HW, correct, caption)
    in rank order. Correct hits get a green frame, the others a grey one; captions go under each image.
    """
    if not examples:
        raise ValueError("no examples to plot")
    num_hits = max(len(example["hits"]) for example in examples)
    figure = Figure(figsize=(1.9 * (num_hits + 1), 2.3 * len(examples) + 0.3), layout="constrained")
    axes_RK = figure.subplots(len(examples), num_hits + 1, squeeze=False)
    for axes_K, example in zip(axes_RK, examples, strict=True):
        query_HW = np.asarray(example["query_slice_HW"], dtype=np.float32)
        _show(axes_K[0], query_HW, _grey_limits(query_HW))
        _frame(axes_K[0], "black", 1.0)
        label = _short_label(example["query_label"], "query_label")
        axes_K[0].set_title(textwrap.fill(label, _WRAP_CHARS), fontsize=7)
        axes_K[0].set_xlabel("query study", fontsize=7)
        for rank, axes in enumerate(axes_K[1:], start=1):
            if rank > len(example["hits"]):
                axes.set_axis_off()
                continue
            slice_HW, correct, caption = example["hits"][rank - 1]
            slice_HW = np.asarray(slice_HW, dtype=np.float32)
            _show(axes, slice_HW, _grey_limits(slice_HW))
            _frame(axes, "tab:green" if correct else "0.6", 3.0 if correct else 1.0)
            axes.set_title(f"#{rank}" + (" ✓" if correct else ""), fontsize=7)
            axes.set_xlabel(textwrap.fill(_short_label(caption, "caption"), _WRAP_CHARS), fontsize=7)
    return save_figure(figure, path)


# --- Q-Former views (brat Fig. 3) ----------------------------------------------------------------------


def _mds_2d(distance_MM: np.ndarray, seed: int) -> np.ndarray:
    """Metric MDS of a precomputed distance matrix, with the keywords of the installed scikit-learn."""
    from sklearn.manifold import MDS  # the manifold module is slow to import and only needed here

    distance_MM = (distance_MM + distance_MM.T) / 2  # sklearn checks exact symmetry
    np.fill_diagonal(distance_MM, 0.0)
    kwargs: dict[str, Any] = {
        "n_components": 2,
        "random_state": seed,
        "normalized_stress": "auto",
        "n_init": 1,
    }
    try:  # scikit-learn >= 1.8 renamed `dissimilarity` to `metric` and warns unless `init` is given
        mds = MDS(metric="precomputed", metric_mds=True, init="classical_mds", **kwargs)
    except TypeError:
        mds = MDS(dissimilarity="precomputed", **kwargs)
    return mds.fit_transform(distance_MM)


def _query_colours(num_queries: int) -> Colormap:
    """Qualitative colours (tab20, then tab20b) while there are enough; a rainbow beyond 40 queries."""
    if num_queries > 40:
        return colormaps["turbo"]
    return ListedColormap([*colormaps["tab20"].colors, *colormaps["tab20b"].colors][:num_queries])


def _scatter_views(axes: Any, points_M2: np.ndarray, num_images: int, num_queries: int, title: str) -> Any:
    """Colour = query index (a collapsed query piles up in one colour), marker = image; returns a mappable."""
    colour_map = _query_colours(num_queries)
    query_M = np.tile(np.arange(num_queries), num_images)
    for n in range(num_images):
        rows = slice(n * num_queries, (n + 1) * num_queries)
        mappable = axes.scatter(
            *points_M2[rows].T,
            c=query_M[rows],
            cmap=colour_map,
            vmin=-0.5,
            vmax=num_queries - 0.5,
            marker=_IMAGE_MARKERS[n % len(_IMAGE_MARKERS)],
            s=28,
            edgecolors="0.2",
            linewidths=0.4,
        )
    axes.set(title=title, xticks=[], yticks=[], aspect="equal", adjustable="datalim")
    axes.grid(alpha=0.3)
    return mappable


def plot_view_mds(
    views_NQE: np.ndarray,
    attn_NQP: np.ndarray | None,
    path: str | Path,
    max_images: int = 8,
    seed: int = 0,
) -> Path:
    """brat Fig. 3: a 2-D metric MDS of the Q views of the first ``max_images`` images (cosine distance),
    and of their attention maps (Jensen-Shannon distance) when given. Titles carry ``collapse_scores`` over
    all N images; colours are query indices, markers images.
    """
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    scores = collapse_scores(views_NQE, attn_NQP)
    views = np.asarray(views_NQE, dtype=np.float64)
    num_images, num_queries = min(max_images, views.shape[0]), views.shape[1]
    unit_ME = _unit_rows(views[:num_images]).reshape(num_images * num_queries, -1)
    panels = [
        (
            np.clip(1.0 - unit_ME @ unit_ME.T, 0.0, 2.0),
            f"views (cosine distance)\ncollapse {scores['view_collapse']:.3f}, "
            f"distance {scores['view_distance']:.3f}",
        )
    ]
    if attn_NQP is not None:
        dist_MP = _distributions(attn_NQP, views.shape)[:num_images].reshape(num_images * num_queries, -1)
        panels.append(
            (
                # Row by row: an (M, M, P) broadcast would take gigabytes for 8 images of 32 queries.
                np.stack([_js_distance(dist_P, dist_MP) for dist_P in dist_MP]),
                f"attention maps (JS distance)\ncollapse {scores['attention_collapse']:.3f}, "
                f"JS {scores['attention_distance']:.3f}",
            )
        )
    figure = Figure(figsize=(4.6 * len(panels) + 1.2, 4.6), layout="constrained")
    axes_row = figure.subplots(1, len(panels), squeeze=False)[0]
    for axes, (distance_MM, title) in zip(axes_row, panels, strict=True):
        mappable = _scatter_views(axes, _mds_2d(distance_MM, seed), num_images, num_queries, title)
    colour_bar = figure.colorbar(mappable, ax=list(axes_row), label="query index", shrink=0.8)
    colour_bar.set_ticks(range(0, num_queries, max(1, num_queries // 8)))
    handles = [
        Line2D([], [], marker=_IMAGE_MARKERS[n % len(_IMAGE_MARKERS)], linestyle="none", color="0.3")
        for n in range(num_images)
    ]
    figure.legend(handles, [f"image {n + 1}" for n in range(num_images)], loc="outside right", fontsize=7)
    total = views.shape[0]
    figure.suptitle(f"MDS of the Q-Former views of {num_images} of {total} images; scores over all {total}")
    return save_figure(figure, path)
