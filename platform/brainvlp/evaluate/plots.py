"""Evaluation plots as PNG files for the Markdown/HTML reports: curves, training logs, collapse scores.

Every public ``plot_*`` function draws one figure with matplotlib's object API (``Figure``, never pyplot: no
global state, renders with Agg, safe in Ray workers and threads), saves it at ``path`` (parent folders are
created) and returns that path. Figures only ever show numbers, model names, class names and short labels
chosen by the caller; never report text or patient/study ids. Plots of images or of individual images'
embeddings (attention overlays, retrieval examples, the MDS of Q-Former views) live in
``brainvlp.evaluate.plots_images``.

Shape legend: N images/studies/samples, C classes, Q queries (views per image, or retrieval queries), E
embedding width, P image tokens.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from scipy.special import entr
from sklearn.metrics import roc_auc_score, roc_curve

from brainvlp.evaluate.retrieval import DIRECTIONS

DPI = 120
TASKS = ("binary", "multiclass", "multilabel")
_DIRECTION_LABELS = {"text_to_image": "text → image", "image_to_text": "image → text"}
_MAX_COLUMNS = 4
_MAX_TRAINING_PANELS = 6


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Save at the reports' resolution, creating the parent folder; shared with ``plots_images``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path


def _grid(count: int, max_columns: int = _MAX_COLUMNS) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def _panels(
    count: int, panel_size: tuple[float, float], max_columns: int = _MAX_COLUMNS
) -> tuple[Figure, list]:
    """A figure with ``count`` panels on a grid, the unused cells of the last row hidden."""
    rows, columns = _grid(count, max_columns)
    figure = Figure(figsize=(panel_size[0] * columns, panel_size[1] * rows), layout="constrained")
    axes = list(figure.subplots(rows, columns, squeeze=False).ravel())
    for spare in axes[count:]:
        spare.set_axis_off()
    return figure, axes[:count]


# --- ROC ------------------------------------------------------------------------------------------------


def _one_vs_rest(y_true: np.ndarray, scores: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """(y_NC indicators, scores_NC) for any task; binary becomes a single positive-class column."""
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    if task == "binary":
        if y_true.ndim != 1 or scores.shape != y_true.shape:
            raise ValueError(
                f"binary ROC needs y_true (N,) and scores (N,), got {y_true.shape}, {scores.shape}"
            )
        return (y_true == 1)[:, None], scores[:, None]
    if scores.ndim != 2 or len(scores) != len(y_true):
        raise ValueError(f"{task} ROC needs scores (N, C) with N = len(y_true), got {scores.shape}")
    if task == "multiclass":
        if y_true.ndim != 1:
            raise ValueError(f"multiclass ROC needs integer y_true (N,), got shape {y_true.shape}")
        return y_true[:, None] == np.arange(scores.shape[1])[None, :], scores
    if y_true.shape != scores.shape:
        raise ValueError(
            f"multilabel ROC needs y_true and scores of one shape, got {y_true.shape}, {scores.shape}"
        )
    return y_true.astype(bool), scores


def plot_roc_curves(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    task: str,
    path: str | Path,
) -> Path:
    """One-vs-rest ROC per class (one panel for binary: the positive class), one line per model with its AUC.

    ``curves`` maps model name -> (y_true, scores) of pooled test predictions; see ``TASKS`` for the shapes.
    For binary, ``class_names`` may hold one name or (negative, positive); the panel is named after the last.
    A model whose labels hold one value only in a class has no ROC there: it is listed without a line, and a
    panel where no model has both values says so.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not curves:
        raise ValueError("no models to plot")
    indicators = {name: _one_vs_rest(y, s, task) for name, (y, s) in curves.items()}
    num_classes = next(iter(indicators.values()))[0].shape[1]
    names = [class_names[-1]] if task == "binary" else list(class_names)
    if len(names) != num_classes or any(y_NC.shape[1] != num_classes for y_NC, _ in indicators.values()):
        raise ValueError(f"{len(names)} class names for scores with {num_classes} columns (or mixed widths)")
    figure, axes_C = _panels(num_classes, (3.4, 3.2))
    for c, axes in enumerate(axes_C):
        drawn = 0
        for model, (y_NC, scores_NC) in indicators.items():
            if np.unique(y_NC[:, c]).size < 2:  # ROC/AUC are undefined without both positives and negatives
                axes.plot([], [], linestyle="none", label=f"{model}: no AUC (one class only)")
                continue
            fpr, tpr, _ = roc_curve(y_NC[:, c], scores_NC[:, c])
            auc = roc_auc_score(y_NC[:, c], scores_NC[:, c])
            axes.plot(fpr, tpr, label=f"{model} (AUC {auc:.3f})")
            drawn += 1
        if not drawn:
            axes.text(0.5, 0.5, "no AUC (one class only)", ha="center", va="center", transform=axes.transAxes)
        axes.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1)
        axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title=names[c])
        axes.set(xlabel="false positive rate", ylabel="true positive rate")
        axes.grid(alpha=0.3)
        axes.legend(loc="lower right", fontsize=7)
    figure.suptitle("ROC, one-vs-rest" if task != "binary" else "ROC")
    return save_figure(figure, path)


# --- Retrieval ------------------------------------------------------------------------------------------


def plot_recall_at_k(
    ranks: Mapping[str, Mapping[str, np.ndarray]], num_candidates: int, path: str | Path
) -> Path:
    """Recall@k for k = 1..N, one panel per direction, one step line per model, log k axis, chance k / N.

    ``ranks`` maps model name -> direction ("text_to_image", "image_to_text") -> 1-based ranks_Q of the
    matching candidate (``retrieval.retrieval_ranks``).
    """
    figure = Figure(figsize=(10.0, 4.0), layout="constrained")
    axes_2 = figure.subplots(1, 2, sharey=True)
    k_K = np.arange(1, num_candidates + 1)
    for axes, direction in zip(axes_2, DIRECTIONS, strict=True):
        for model, by_direction in ranks.items():
            if direction not in by_direction:
                continue
            rank_Q = np.asarray(by_direction[direction], dtype=np.int64)
            if rank_Q.size == 0 or rank_Q.min() < 1 or rank_Q.max() > num_candidates:
                raise ValueError(f"{model} {direction} ranks must lie in 1..{num_candidates}")
            recall_K = np.cumsum(np.bincount(rank_Q, minlength=num_candidates + 1)[1:]) / len(rank_Q)
            axes.step(k_K, recall_K, where="post", label=model)
        axes.plot(k_K, k_K / num_candidates, linestyle="--", color="0.5", label="chance (k / N)")
        axes.set(xscale="log", xlabel="k", ylim=(0, 1.02), title=_DIRECTION_LABELS[direction])
        axes.grid(alpha=0.3, which="both")
        axes.legend(loc="upper left", fontsize=8)
    axes_2[0].set_ylabel("recall@k")
    figure.suptitle(f"Recall@k over {num_candidates} candidates")
    return save_figure(figure, path)


# --- Training curves ------------------------------------------------------------------------------------


def read_training_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Loss and dev retrieval over steps, from the ``metrics.jsonl`` a pretrain run writes in ``run_dir``:
    tag -> (step, value), sorted by step; empty without the file.

    Where a step is logged twice (a run resumed from a checkpoint logs the steps after it again), the later
    line wins.
    """
    history = Path(run_dir) / "metrics.jsonl"
    if not history.exists():
        return {}
    by_tag: dict[str, dict[int, float]] = {}
    for line in history.read_text().splitlines():
        record = json.loads(line)
        for key in ("loss", "dev_R@5", "dev_t2i_R@5", "dev_loss"):
            if isinstance(record.get(key), (int, float)) and "step" in record:
                by_tag.setdefault(key, {})[int(record["step"])] = float(record[key])
    return {tag: sorted(points.items()) for tag, points in by_tag.items()}


def _default_tags(curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]]) -> list[str]:
    """Loss first, then the dev metrics, then the rest; the learning rate is a schedule, not a result."""
    present = {tag for by_tag in curves.values() for tag, points in by_tag.items() if len(points)}
    present.discard("lr")
    order = sorted(present, key=lambda tag: (tag != "loss", not tag.startswith("dev_"), tag))
    return order[:_MAX_TRAINING_PANELS]


def plot_training_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
    path: str | Path,
    tags: Sequence[str] | None = None,
) -> Path | None:
    """One panel per tag against the step, one line per model; None (nothing written) if nothing to plot.

    ``curves`` maps model name -> tag -> (step, value) points (``read_training_curves``). Without ``tags``:
    "loss", then tags starting with "dev_", then the others, without "lr", at most six panels.
    """
    wanted = _default_tags(curves) if tags is None else list(tags)
    panels = [tag for tag in wanted if any(len(by_tag.get(tag, ())) for by_tag in curves.values())]
    if not panels:
        return None
    figure, axes_T = _panels(len(panels), (4.2, 3.0), max_columns=3)
    for axes, tag in zip(axes_T, panels, strict=True):
        for model, by_tag in curves.items():
            points = sorted(by_tag.get(tag, ()))
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            # Dev metrics are logged once per evaluation: markers keep a handful of points readable.
            marker = "o" if len(points) <= 30 else None
            axes.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=model)
        axes.set(title=tag, xlabel="step")
        axes.grid(alpha=0.3)
        axes.legend(loc="best", fontsize=7)
    return save_figure(figure, path)


# --- Label efficiency -----------------------------------------------------------------------------------


def plot_label_efficiency(
    results: Mapping[str, Mapping[float, tuple[float, float, float]]], metric: str, path: str | Path
) -> Path:
    """``metric`` against the fraction of labelled training data: model -> fraction -> (mean, low, high).

    One line with markers per model and its confidence interval as a band; log fraction axis labelled in %.
    """
    figure = Figure(figsize=(5.6, 4.0), layout="constrained")
    axes = figure.subplots()
    fractions = sorted({float(f) for by_fraction in results.values() for f in by_fraction})
    if any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"label fractions must lie in (0, 1], got {fractions}")
    for model, by_fraction in results.items():
        fraction_F = np.array(sorted(by_fraction), dtype=np.float64)
        mean_F, low_F, high_F = np.array([by_fraction[f] for f in sorted(by_fraction)], dtype=np.float64).T
        (line,) = axes.plot(fraction_F, mean_F, marker="o", label=model)
        axes.fill_between(fraction_F, low_F, high_F, color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.set_xticks(fractions, [f"{100 * f:g} %" for f in fractions])
    axes.xaxis.set_minor_formatter(NullFormatter())  # log axes label minor ticks too (2x10^-2 ...)
    axes.set(
        xlabel="fraction of labelled training data", ylabel=metric, title=f"{metric} vs labelled fraction"
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="best", fontsize=8)
    return save_figure(figure, path)


# --- Collapse diagnostics -------------------------------------------------------------------------------


# The helpers below are shared with plots_images (the MDS of the views uses the same distances).


def _unit_rows(x_NQE: np.ndarray) -> np.ndarray:
    norm_NQ1 = np.linalg.norm(x_NQE, axis=-1, keepdims=True)
    return x_NQE / np.maximum(norm_NQ1, np.finfo(np.float64).tiny)  # a zero vector stays zero: cosine 0


def _distributions(attn: np.ndarray, views_shape: tuple[int, ...]) -> np.ndarray:
    """Attention as float64 (N, Q, P) distributions (each map sums to 1), checked: finite, non-negative,
    each map with some mass."""
    attn = np.asarray(attn, dtype=np.float64)
    if attn.ndim < 3 or attn.shape[:2] != views_shape[:2]:
        raise ValueError(
            f"attention must be (N, Q, P...) with N, Q of the views {views_shape[:2]}, got {attn.shape}"
        )
    attn_NQP = attn.reshape(*attn.shape[:2], -1)  # a token grid (d, h, w) flattens to P
    if not np.isfinite(attn_NQP).all() or (attn_NQP < 0).any() or (attn_NQP.sum(-1) <= 0).any():
        raise ValueError("attention maps must be finite, non-negative and not all zero")
    return attn_NQP / attn_NQP.sum(-1, keepdims=True)


def _js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance in bits along the last axis of two broadcasting arrays of distributions.

    Equal to ``scipy.spatial.distance.jensenshannon(p, q, base=2, axis=-1)`` (the tests check it), through
    JS = H((p + q) / 2) - (H(p) + H(q)) / 2, with fewer temporaries than scipy: ``collapse_scores`` of 500
    images x 32 queries x 512 tokens takes 2 s instead of 13 s.
    """
    divergence = (entr((p + q) / 2).sum(-1) - (entr(p).sum(-1) + entr(q).sum(-1)) / 2) / math.log(2)
    # Identical maps round to about -1e-16 rather than 0; and JS in bits never exceeds 1.
    return np.sqrt(np.clip(divergence, 0.0, 1.0))


def _mean_offdiagonal(x_NQQ: np.ndarray) -> float:
    q = x_NQQ.shape[-1]
    return float(((x_NQQ.sum((-2, -1)) - np.trace(x_NQQ, axis1=-2, axis2=-1)) / (q * (q - 1))).mean())


def collapse_scores(views_NQE: np.ndarray, attn_NQP: np.ndarray | None) -> dict[str, float]:
    """Collapse diagnostics (brat Fig. 3-4) of a Q-Former that sums up each image with Q query outputs
    ("views"), each with its cross-attention map over the P image tokens.

    Each score is a mean over the Q(Q-1)/2 distinct pairs of queries of one image, then over the N images:

    - ``view_collapse``: cosine similarity of the views. 1 = all views identical (collapsed), near 0 =
      diverse (unrelated) views; negative values mean views pointing away from each other.
    - ``view_distance``: euclidean distance between the L2-normalised views, sqrt(2 - 2 cos), in [0, 2];
      0 = collapsed. The information of ``view_collapse`` on a distance scale.
    - ``attention_collapse``: cosine similarity of the attention maps as P-vectors, in [0, 1] since
      attention is non-negative; 1 = every query looks at the same tokens in the same proportions.
    - ``attention_distance``: Jensen-Shannon distance (as ``scipy.spatial.distance.jensenshannon``, base 2, so
      in [0, 1]) between the maps normalised to distributions over the tokens; 0 = collapsed, 1 = disjoint.

    Scale does not matter: views and maps are normalised first. The attention scores are NaN when
    ``attn_NQP`` is None; attention may also be (N, Q, d, h, w) and is flattened to P tokens. Needs Q >= 2.
    """
    views = np.asarray(views_NQE, dtype=np.float64)
    if views.ndim != 3 or views.shape[0] < 1:
        raise ValueError(f"views must be (N, Q, E) with N >= 1, got shape {views.shape}")
    if views.shape[1] < 2:
        raise ValueError(
            f"collapse scores compare pairs of views: need Q >= 2 queries, got Q = {views.shape[1]}"
        )
    unit_NQE = _unit_rows(views)
    cos_NQQ = unit_NQE @ unit_NQE.transpose(0, 2, 1)
    scores = {
        "view_collapse": _mean_offdiagonal(cos_NQQ),
        "view_distance": _mean_offdiagonal(np.sqrt(np.clip(2.0 - 2.0 * cos_NQQ, 0.0, None))),
        "attention_collapse": math.nan,
        "attention_distance": math.nan,
    }
    if attn_NQP is not None:
        dist_NQP = _distributions(attn_NQP, views.shape)
        unit_NQP = _unit_rows(dist_NQP)
        scores["attention_collapse"] = _mean_offdiagonal(unit_NQP @ unit_NQP.transpose(0, 2, 1))
        q = dist_NQP.shape[1]
        # One query against all later ones per step: O(Q) broadcasts rather than an (N, Q, Q, P) array.
        pair_sums = sum(
            _js_distance(dist_NQP[:, i : i + 1], dist_NQP[:, i + 1 :]).sum() for i in range(q - 1)
        )
        scores["attention_distance"] = float(pair_sums / (dist_NQP.shape[0] * q * (q - 1) / 2))
    return scores
