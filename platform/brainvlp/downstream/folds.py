"""Splits of the downstream protocol (METHODS 1.3): ``patient_folds`` puts every patient in exactly one of k
folds, stratified by label where the label counts allow it; ``label_fraction`` draws a per-seed subset of a
training fold.

Shape legend: N rows, T training rows, S label strata.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence


def patient_folds(patient_ids: ArrayLike, labels: ArrayLike | None, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1, int64) of every row; all rows of a patient share a fold.

    Uses scikit-learn's ``StratifiedGroupKFold(k, shuffle=True, random_state=seed)`` with patients as groups,
    which balances the label distribution across folds as far as whole patients allow. ``labels`` is one per
    row: 1-D class labels, a 0/1 matrix (N, C) for multilabel tasks, or None for unstratified folds.
    Multilabel rows are stratified by their whole label-set pattern (each distinct row is a stratum), which
    keeps label co-occurrence balanced rather than only the first column. Strata with fewer than k rows
    cannot be spread over k folds; they are pooled into one stratum, which keeps rare classes together in
    the balancing instead of failing (scikit-learn refuses when every stratum is smaller than k).
    """
    ids_N = np.asarray(patient_ids)
    if ids_N.ndim != 1 or ids_N.size == 0:
        raise ValueError(f"patient_ids must be a non-empty 1-D array, got shape {ids_N.shape}")
    num_patients = len(np.unique(ids_N))
    if int(k) != k or not 2 <= k <= num_patients:
        raise ValueError(f"k must be an integer in 2..{num_patients} (the number of patients), got {k}")
    strata_N = (
        np.zeros(ids_N.size, np.int64) if labels is None else _strata(np.asarray(labels), k, ids_N.size)
    )
    from sklearn.model_selection import StratifiedGroupKFold  # ~0.6 s to import: only when folds are drawn

    splitter = StratifiedGroupKFold(n_splits=int(k), shuffle=True, random_state=seed)
    fold_N = np.full(ids_N.size, -1, np.int64)
    with warnings.catch_warnings():
        # Rare strata are expected downstream and cannot be helped; the warning would only be noise.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, test_rows) in enumerate(splitter.split(np.zeros(ids_N.size), strata_N, groups=ids_N)):
            fold_N[test_rows] = fold
    return fold_N


def _strata(labels: np.ndarray, k: int, num_rows: int) -> np.ndarray:
    """Integer stratum of every row, with strata smaller than k merged into one."""
    if labels.ndim not in (1, 2) or len(labels) != num_rows:
        raise ValueError(f"labels must have one entry (or row) per patient id, got shape {labels.shape}")
    # axis=0 makes each distinct multilabel row a stratum; 1-D labels go without (object dtypes lack it).
    axis = 0 if labels.ndim == 2 else None
    _, stratum_N, count_S = np.unique(labels, axis=axis, return_inverse=True, return_counts=True)
    stratum_N = stratum_N.reshape(-1)
    rare_N = count_S[stratum_N] < k
    return np.where(rare_N, len(count_S), stratum_N)


def label_fraction(train_rows: ArrayLike, labels: ArrayLike | None, fraction: float, seed: int) -> np.ndarray:
    """The sorted subset of ``train_rows`` kept at a label fraction (METHODS 1.3: 1 %, 10 %, 100 %).

    ``labels`` holds one entry (or 0/1 row, for multilabel) per dataset row and is indexed by ``train_rows``,
    i.e. it is the same array as given to ``patient_folds``; None skips the class guarantee. The subset has
    ``round(fraction * T)`` rows (at least 1); fraction 1.0 keeps every row.

    Rows are ranked by a permutation from ``default_rng(seed)``. Before the rest, the first-ranked row of
    every class present in the fold moves to the front (multilabel: of both values of every column), so every
    class is kept whenever the subset is at least as large as the number of such representatives (otherwise
    the first representatives in rank order are kept). The subset is the top of this ranking, so for one
    seed smaller fractions are nested in larger ones and a 1 % model sees a subset of the 10 % model's rows.
    """
    rows_T = np.asarray(train_rows).astype(np.int64)
    if rows_T.ndim != 1 or rows_T.size == 0 or len(np.unique(rows_T)) != rows_T.size:
        raise ValueError("train_rows must be a non-empty 1-D array of distinct row indices")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    if fraction == 1:
        return np.sort(rows_T)
    keep = max(1, math.floor(fraction * rows_T.size + 0.5))
    order_T = np.random.default_rng(seed).permutation(rows_T.size)
    if labels is not None:
        label_all = np.asarray(labels)
        if rows_T.min() < 0 or rows_T.max() >= len(label_all):
            raise ValueError(f"train_rows index past the {len(label_all)} labels (one per dataset row)")
        order_T = _representatives_first(order_T, _stratum_masks(label_all[rows_T]))
    return np.sort(rows_T[order_T[:keep]])


def _stratum_masks(labels_T: np.ndarray) -> np.ndarray:
    """Membership (T, S) of every training row in every class (multilabel: every column's 0 and 1)."""
    if labels_T.ndim == 1:
        return labels_T[:, None] == np.unique(labels_T)[None, :]
    if labels_T.ndim == 2:
        return np.concatenate([labels_T == 1, labels_T == 0], axis=1)
    raise ValueError(f"labels must be 1-D or a 2-D multilabel matrix, got {labels_T.ndim}-D")


def _representatives_first(order_T: np.ndarray, member_TS: np.ndarray) -> np.ndarray:
    member_ranked_TS = member_TS[order_T]
    present_S = member_ranked_TS.any(0)
    first_rank = np.unique(member_ranked_TS.argmax(0)[present_S])  # sorted: keeps the random rank order
    rest_T = np.ones(order_T.size, bool)
    rest_T[first_rank] = False
    return np.concatenate([order_T[first_rank], order_T[rest_T]])
