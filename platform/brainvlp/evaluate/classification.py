"""Classification: metrics and bootstrap confidence intervals (METHODS 4).

``classification_metrics`` handles three tasks:

- ``binary``: labels 0/1 (N,), scores (N,) for the positive class (an (N, 2) softmax is accepted; its column 1
  is used). AUC, precision, recall and F1 are those of the positive class, reported as ``auc_1``.
- ``multiclass``: labels 0..C-1 (N,), scores (N, C). Predictions are the argmax of the scores (ties go to the
  lowest class index); AUC is one-vs-rest per class; precision, recall and F1 are macro averages over all C.
- ``multilabel``: a 0/1 matrix (N, C) and scores (N, C), every column its own binary task. Macro averages over
  the C columns; ``accuracy`` is exact-match (subset) accuracy, as in scikit-learn, and ``label_accuracy`` the
  fraction of correct (row, column) decisions.

Binary and multilabel predictions are ``scores >= threshold``; the default 0.5 assumes probabilities, so pass
``threshold=0.0`` for logits. AUC only depends on the order of the scores, hence is the same for both.

AUC is the Mann-Whitney statistic with tied scores counted half, which is exactly scikit-learn's trapezoidal
ROC area. A class whose labels in ``y_true`` all take one value has no AUC: its entry is NaN and it is left
out of ``auc_mean`` (NaN if no class has one), so a rare class missing from a small test fold or from a
bootstrap resample never crashes an evaluation. Precision, recall and F1 follow scikit-learn's definitions,
including ``zero_division`` for empty denominators (NaN leaves that class out of the macro average).

Confidence intervals are percentile bootstraps: ``bootstrap_ci`` over per-run values (brat Table 7: one value
per seed) and ``bootstrap_metric_ci`` over the test samples of a single run.

Shape legend: N samples (rows), C classes or label columns, B bootstrap resamples, M runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
import torch
from scipy.stats import rankdata

TASKS = ("binary", "multiclass", "multilabel")
ArrayLike: TypeAlias = "np.ndarray | torch.Tensor | Sequence"


def classification_metrics(
    y_true: ArrayLike,
    scores: ArrayLike,
    task: str,
    *,
    threshold: float = 0.5,
    zero_division: float = 0.0,
) -> dict[str, float]:
    """AUC per class (``auc_<class index>``) and its macro mean ``auc_mean``, ``accuracy``, ``precision``,
    ``recall``, ``f1`` (plus ``label_accuracy`` for multilabel), ``num_auc_classes`` (classes with a defined
    AUC) and ``num_samples``. See the module docstring for the conventions of each task."""
    y_NC, scores_NC, pred_NC, classes = _indicators(y_true, scores, task, threshold)
    auc_C = _auc_per_column(y_NC, scores_NC)
    metrics: dict[str, float] = {f"auc_{c}": float(auc) for c, auc in zip(classes, auc_C, strict=True)}
    metrics["auc_mean"] = _nanmean(auc_C)
    metrics["num_auc_classes"] = int(np.isfinite(auc_C).sum())
    # One-hot rows for multiclass and a single column for binary make exact match the ordinary accuracy.
    metrics["accuracy"] = float((pred_NC == y_NC).all(1).mean())
    if task == "multilabel":
        metrics["label_accuracy"] = float((pred_NC == y_NC).mean())
    true_C, pred_C = y_NC.sum(0), pred_NC.sum(0)
    hits_C = (y_NC & pred_NC).sum(0)
    metrics["precision"] = _nanmean(_divide(hits_C, pred_C, zero_division))
    metrics["recall"] = _nanmean(_divide(hits_C, true_C, zero_division))
    # F1 from counts (2TP / (2TP + FP + FN)), not from P and R, so it is defined whenever either one is.
    metrics["f1"] = _nanmean(_divide(2 * hits_C, true_C + pred_C, zero_division))
    metrics["num_samples"] = len(y_NC)
    return metrics


def _indicators(
    y_true: ArrayLike, scores: ArrayLike, task: str, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """Every task as boolean truth and prediction matrices (N, C), float64 scores (N, C) and class names."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    y, scores_NC = _as_numpy(y_true), _as_numpy(scores).astype(np.float64)
    if task == "binary" and scores_NC.ndim == 2 and scores_NC.shape[1] == 2:
        scores_NC = scores_NC[:, 1]
    expected_ndim = 1 if task == "binary" else 2
    if scores_NC.ndim != expected_ndim or len(scores_NC) == 0:
        raise ValueError(f"{task} scores must be non-empty and {expected_ndim}-D, got {scores_NC.shape}")
    if y.shape != (scores_NC.shape if task == "multilabel" else scores_NC.shape[:1]):
        raise ValueError(f"labels of shape {y.shape} do not fit scores of shape {scores_NC.shape}")
    if not np.isfinite(scores_NC).all():
        raise ValueError("scores contain NaN or infinite values")
    if task == "binary":
        y_N = _int_labels(y, 2)
        return (y_N == 1)[:, None], scores_NC[:, None], (scores_NC >= threshold)[:, None], [1]
    classes = list(range(scores_NC.shape[1]))
    if task == "multiclass":
        y_N = _int_labels(y, len(classes))
        pred_N = scores_NC.argmax(1)
        return y_N[:, None] == classes, scores_NC, pred_N[:, None] == classes, classes
    return _int_labels(y, 2) == 1, scores_NC, scores_NC >= threshold, classes


def _int_labels(y: np.ndarray, num_classes: int) -> np.ndarray:
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.ndim not in (1, 2) or y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}")
    return y.astype(np.int64)


def _auc_per_column(y_NC: np.ndarray, scores_NC: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of every column; NaN where a column lacks positives or negatives."""
    num_pos_C = y_NC.sum(0).astype(np.float64)
    num_neg_C = len(y_NC) - num_pos_C
    # Average ranks give tied positive/negative pairs half a win each, as the trapezoidal ROC area does.
    rank_sum_C = (rankdata(scores_NC, axis=0) * y_NC).sum(0)
    defined_C = (num_pos_C > 0) & (num_neg_C > 0)
    pairs_C = np.where(defined_C, num_pos_C * num_neg_C, 1.0)
    return np.where(defined_C, (rank_sum_C - num_pos_C * (num_pos_C + 1) / 2) / pairs_C, np.nan)


def _divide(numer_C: np.ndarray, denom_C: np.ndarray, zero_division: float) -> np.ndarray:
    safe_C = np.where(denom_C > 0, denom_C, 1)
    return np.where(denom_C > 0, numer_C / safe_C, zero_division)


def _as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        # numpy has no bfloat16, and float64 keeps metric arithmetic exact.
        return (values.double() if values.is_floating_point() else values).numpy()
    return np.asarray(values)


def _nanmean(values_C: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without numpy's empty-slice warning) when there are none."""
    finite_C = values_C[np.isfinite(values_C)]
    return float(finite_C.mean()) if finite_C.size else math.nan


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile bootstrap interval.

    ``estimate`` is the mean of the runs (``bootstrap_ci``) or the metric on the whole test set
    (``bootstrap_metric_ci``); ``n`` counts the runs or test samples that were resampled; ``resamples`` is the
    number of bootstrap resamples behind ``low`` and ``high`` (for a metric: those where it was defined).
    """

    estimate: float
    low: float
    high: float
    n: int
    resamples: int
    level: float = 0.95

    def format(self, digits: int = 3) -> str:
        """brat Table 7's style, e.g. ``"0.812 [0.790, 0.834]"``."""
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def bootstrap_ci(values: ArrayLike, *, level: float = 0.95, resamples: int = 1000, seed: int = 0) -> Interval:
    """Mean of per-run metric values and the percentile interval of the bootstrap distribution of that mean.

    Resample b draws M run indices with replacement (``numpy.random.default_rng(seed).integers``, one row of
    M per resample, in order); the interval holds the central ``level`` mass of the B resample means
    (``numpy.percentile``, linear interpolation). Constant values therefore give a zero-width interval.
    """
    values_M = _as_numpy(values).astype(np.float64)
    if values_M.ndim != 1 or values_M.size == 0 or not np.isfinite(values_M).all():
        raise ValueError(f"values must be a non-empty 1-D array of finite numbers, got {values_M}")
    _check_bootstrap(level, resamples)
    num_runs = values_M.size
    index_BM = np.random.default_rng(seed).integers(0, num_runs, size=(resamples, num_runs))
    low, high = _percentile_interval(values_M[index_BM].mean(1), level)
    return Interval(float(values_M.mean()), low, high, num_runs, resamples, level)


def bootstrap_metric_ci(
    y_true: ArrayLike,
    scores: ArrayLike,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``metric_fn(y_true, scores)`` on the whole test set and its percentile bootstrap interval over samples.

    Every resample draws N row indices with replacement (``default_rng(seed).integers(0, N, size=N)``, one
    call per resample) and recomputes the metric on those rows of both arrays. Resamples where the metric is
    NaN or infinite (e.g. an AUC without positives) are skipped; ``Interval.resamples`` says how many were
    used, and ``low``/``high`` are NaN when none was. Exceptions from ``metric_fn`` propagate: a metric
    should report "undefined" as NaN, as ``classification_metrics`` does, not by raising.
    Example: ``metric_fn=lambda y, s: classification_metrics(y, s, "binary")["auc_mean"]``.
    """
    y_N, scores_N = _as_numpy(y_true), _as_numpy(scores)
    if len(y_N) != len(scores_N) or len(y_N) == 0:
        raise ValueError(
            f"need as many labels as score rows (and at least one): {len(y_N)} vs {len(scores_N)}"
        )
    _check_bootstrap(level, resamples)
    rng, num_samples = np.random.default_rng(seed), len(y_N)
    values_B = np.empty(resamples)
    for b in range(resamples):
        index_N = rng.integers(0, num_samples, size=num_samples)
        values_B[b] = metric_fn(y_N[index_N], scores_N[index_N])
    values_B = values_B[np.isfinite(values_B)]
    low, high = _percentile_interval(values_B, level) if values_B.size else (math.nan, math.nan)
    return Interval(float(metric_fn(y_N, scores_N)), low, high, num_samples, values_B.size, level)


def _check_bootstrap(level: float, resamples: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if int(resamples) != resamples or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples}")


def _percentile_interval(values_B: np.ndarray, level: float) -> tuple[float, float]:
    low, high = np.percentile(values_B, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)
