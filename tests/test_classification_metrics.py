"""Classification metrics against scikit-learn, bootstrap intervals against a plain reference loop, and the
patient-wise folds and label fractions of METHODS 1.3.

Shape legend: N samples, C classes or label columns, M runs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    hamming_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from brainvlp.evaluate.classification import (
    Interval,
    bootstrap_ci,
    bootstrap_metric_ci,
    classification_metrics,
)

ZERO_DIVISIONS = (0.0, 1.0, math.nan)


def _prf(y_true, y_pred, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # UndefinedMetricWarning for the zero_division cases
        return precision_recall_fscore_support(y_true, y_pred, **kwargs)[:3]


def _check_prf(metrics, expected):
    np.testing.assert_allclose(
        [metrics["precision"], metrics["recall"], metrics["f1"]], expected, rtol=1e-12, equal_nan=True
    )


def _softmax(logits_NC):
    exp_NC = np.exp(logits_NC - logits_NC.max(1, keepdims=True))
    return exp_NC / exp_NC.sum(1, keepdims=True)


# ---------------------------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_matches_sklearn(seed, threshold):
    rng = np.random.default_rng(seed)
    y_N = rng.integers(0, 2, 200)
    scores_N = np.round(rng.random(200) * 0.6 + 0.4 * y_N, 1)  # rounding makes many tied scores
    metrics = classification_metrics(y_N, scores_N, "binary", threshold=threshold)
    pred_N = (scores_N >= threshold).astype(int)
    assert metrics["auc_1"] == pytest.approx(roc_auc_score(y_N, scores_N), rel=1e-12)
    assert metrics["auc_mean"] == metrics["auc_1"]
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_N, pred_N), rel=1e-12)
    _check_prf(metrics, _prf(y_N, pred_N, average="binary", zero_division=0.0))
    assert metrics["num_samples"] == 200 and metrics["num_auc_classes"] == 1


def test_binary_accepts_two_column_softmax_and_torch():
    rng = np.random.default_rng(0)
    y_N = rng.integers(0, 2, 50)
    probs_N2 = _softmax(rng.normal(size=(50, 2)))
    expected = classification_metrics(y_N, probs_N2[:, 1], "binary")
    assert classification_metrics(y_N, probs_N2, "binary") == expected
    assert classification_metrics(torch.as_tensor(y_N), torch.as_tensor(probs_N2[:, 1]), "binary") == expected


@pytest.mark.parametrize("seed", range(4))
def test_multiclass_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    num_classes = 4
    y_N = rng.integers(0, num_classes, 300)
    probs_NC = _softmax(rng.normal(size=(300, num_classes)) + 1.5 * np.eye(num_classes)[y_N])
    metrics = classification_metrics(y_N, probs_NC, "multiclass")
    for c in range(num_classes):
        assert metrics[f"auc_{c}"] == pytest.approx(roc_auc_score(y_N == c, probs_NC[:, c]), rel=1e-12)
    ovr = roc_auc_score(y_N, probs_NC, multi_class="ovr", average="macro")
    assert metrics["auc_mean"] == pytest.approx(ovr, rel=1e-12)
    pred_N = probs_NC.argmax(1)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_N, pred_N), rel=1e-12)
    _check_prf(metrics, _prf(y_N, pred_N, labels=range(num_classes), average="macro", zero_division=0.0))


@pytest.mark.parametrize("zero_division", ZERO_DIVISIONS)
def test_zero_division_matches_sklearn(zero_division):
    """Class 3 is never true and class 2 never predicted: both hit an empty denominator."""
    rng = np.random.default_rng(1)
    y_N = rng.integers(0, 3, 60)
    scores_NC = rng.random((60, 4))
    scores_NC[:, 2] = -1.0
    metrics = classification_metrics(y_N, scores_NC, "multiclass", zero_division=zero_division)
    pred_N = scores_NC.argmax(1)
    expected = _prf(y_N, pred_N, labels=range(4), average="macro", zero_division=zero_division)
    _check_prf(metrics, expected)


@pytest.mark.parametrize("seed", range(4))
def test_multilabel_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y_NC = rng.integers(0, 2, (150, 5))
    scores_NC = rng.random((150, 5)) * 0.7 + 0.3 * y_NC
    metrics = classification_metrics(y_NC, scores_NC, "multilabel", threshold=0.6)
    pred_NC = (scores_NC >= 0.6).astype(int)
    for c in range(5):
        assert metrics[f"auc_{c}"] == pytest.approx(roc_auc_score(y_NC[:, c], scores_NC[:, c]), rel=1e-12)
    assert metrics["auc_mean"] == pytest.approx(roc_auc_score(y_NC, scores_NC, average="macro"), rel=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(y_NC, pred_NC), rel=1e-12)
    assert metrics["label_accuracy"] == pytest.approx(1 - hamming_loss(y_NC, pred_NC), rel=1e-12)
    _check_prf(metrics, _prf(y_NC, pred_NC, average="macro", zero_division=0.0))


def test_undefined_auc_is_nan_and_left_out_of_the_mean():
    rng = np.random.default_rng(2)
    y_N = rng.choice([0, 1, 3], 80)  # class 2 never occurs
    scores_NC = rng.random((80, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy empty-slice or divide warnings either
        metrics = classification_metrics(y_N, scores_NC, "multiclass")
        single = classification_metrics(np.ones(10, int), rng.random(10), "binary")
        constant_column = np.c_[np.ones(30, int), rng.integers(0, 2, 30)]
        multilabel = classification_metrics(constant_column, rng.random((30, 2)), "multilabel")
    assert math.isnan(metrics["auc_2"]) and metrics["num_auc_classes"] == 3
    defined = [roc_auc_score(y_N == c, scores_NC[:, c]) for c in (0, 1, 3)]
    assert metrics["auc_mean"] == pytest.approx(np.mean(defined), rel=1e-12)
    assert math.isnan(single["auc_1"]) and math.isnan(single["auc_mean"]) and single["num_auc_classes"] == 0
    assert math.isnan(multilabel["auc_0"]) and multilabel["auc_mean"] == multilabel["auc_1"]


def test_perfect_classifier_scores_one():
    y_N = np.array([0, 1, 2, 1, 0, 2, 2, 1])
    onehot_NC = np.eye(3)[y_N]
    cases = [
        (y_N % 2, (y_N % 2) * 0.8 + 0.1, "binary"),
        (y_N, onehot_NC * 0.9 + 0.05, "multiclass"),
        (onehot_NC.astype(int), onehot_NC * 0.9 + 0.05, "multilabel"),
    ]
    for y_true, scores, task in cases:
        metrics = classification_metrics(y_true, scores, task)
        for name in ("auc_mean", "accuracy", "precision", "recall", "f1"):
            assert metrics[name] == 1.0, (task, name)


def test_auc_is_invariant_to_monotone_transforms():
    rng = np.random.default_rng(3)
    y_N = rng.integers(0, 3, 120)
    logits_NC = np.round(rng.normal(size=(120, 3)), 2)  # with ties
    base = classification_metrics(y_N, logits_NC, "multiclass")
    for transform in (np.exp, lambda x: 1 / (1 + np.exp(-x)), lambda x: 3 * x**3 + 7):
        moved = classification_metrics(y_N, transform(logits_NC), "multiclass")
        for c in range(3):
            assert moved[f"auc_{c}"] == pytest.approx(base[f"auc_{c}"], abs=1e-15)
    binary = classification_metrics(y_N == 1, logits_NC[:, 1], "binary")
    assert binary["auc_1"] == pytest.approx(base["auc_1"], abs=1e-15)


@pytest.mark.parametrize(
    ("y_true", "scores", "task"),
    [
        ([0, 1], [0.2, 0.4], "regression"),
        ([0, 2], [0.2, 0.4], "binary"),
        ([0, 1, 1], [0.2, 0.4], "binary"),
        ([0, 3], [[0.2, 0.8, 0.0], [0.1, 0.2, 0.7]], "multiclass"),
        ([0.5, 1.0], [0.2, 0.4], "binary"),
        ([0, 1], [0.2, math.nan], "binary"),
        ([[0, 1]], [[0.2, 0.1, 0.3]], "multilabel"),
        ([], [], "binary"),
    ],
)
def test_bad_inputs_raise(y_true, scores, task):
    with pytest.raises(ValueError):
        classification_metrics(np.array(y_true), np.array(scores), task)


# -------------------------------------------------------------------------------------------- bootstrap


def _percentile(sorted_values, q):
    """numpy's default (linear) percentile, written out."""
    position = q / 100 * (len(sorted_values) - 1)
    below = math.floor(position)
    above = min(below + 1, len(sorted_values) - 1)
    return sorted_values[below] + (position - below) * (sorted_values[above] - sorted_values[below])


def test_bootstrap_ci_matches_reference_loop():
    values = [0.81, 0.79, 0.84, 0.80, 0.77, 0.83, 0.82]
    rng = np.random.default_rng(5)
    means = []
    for _ in range(400):
        picks = rng.integers(0, len(values), size=len(values))
        means.append(sum(values[i] for i in picks) / len(values))
    means.sort()
    interval = bootstrap_ci(values, resamples=400, seed=5, level=0.9)
    assert interval.estimate == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert interval.low == pytest.approx(_percentile(means, 5), rel=1e-12)
    assert interval.high == pytest.approx(_percentile(means, 95), rel=1e-12)
    assert (interval.n, interval.resamples, interval.level) == (7, 400, 0.9)


def test_bootstrap_metric_ci_matches_reference_loop_and_skips_undefined():
    rng = np.random.default_rng(6)
    y_N = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])  # two positives: many resamples miss both
    scores_N = rng.random(12)
    draws = np.random.default_rng(11)
    aucs = []
    for _ in range(300):
        picks = draws.integers(0, 12, size=12)
        if 0 < y_N[picks].sum() < 12:
            aucs.append(roc_auc_score(y_N[picks], scores_N[picks]))
    aucs.sort()

    def auc(y, s):
        return classification_metrics(y, s, "binary")["auc_mean"]

    interval = bootstrap_metric_ci(y_N, scores_N, auc, resamples=300, seed=11)
    assert interval.resamples == len(aucs) < 300
    assert interval.estimate == pytest.approx(roc_auc_score(y_N, scores_N), rel=1e-12)
    assert interval.low == pytest.approx(_percentile(aucs, 2.5), rel=1e-12)
    assert interval.high == pytest.approx(_percentile(aucs, 97.5), rel=1e-12)


def test_bootstrap_metric_ci_resamples_multilabel_rows():
    rng = np.random.default_rng(7)
    y_NC, scores_NC = rng.integers(0, 2, (40, 3)), rng.random((40, 3))

    def f1(y, s):
        return classification_metrics(y, s, "multilabel")["f1"]

    interval = bootstrap_metric_ci(y_NC, scores_NC, f1, resamples=50)
    assert interval.resamples == 50 and interval.low <= interval.estimate <= interval.high


def test_bootstrap_metric_ci_with_no_defined_resample():
    interval = bootstrap_metric_ci(np.zeros(5), np.ones(5), lambda y, s: math.nan, resamples=20)
    assert interval.resamples == 0 and math.isnan(interval.low) and math.isnan(interval.high)


def test_bootstrap_ci_contains_the_mean_and_narrows_with_more_runs():
    # The same spread of values, seen in 4 runs and in 64: the interval should shrink about 4-fold.
    values_M = np.array([0.75, 0.85, 0.78, 0.82])
    few, many = bootstrap_ci(values_M), bootstrap_ci(np.tile(values_M, 16))
    for interval in (few, many):
        assert interval.low < interval.estimate < interval.high
    assert many.high - many.low < 0.5 * (few.high - few.low)


def test_bootstrap_ci_is_deterministic_per_seed_and_constant_values_have_zero_width():
    values_M = np.random.default_rng(9).random(10)
    assert bootstrap_ci(values_M, seed=3) == bootstrap_ci(values_M, seed=3)
    assert bootstrap_ci(values_M, seed=3) != bootstrap_ci(values_M, seed=4)
    constant = bootstrap_ci(torch.full((6,), 0.7, dtype=torch.float64))
    assert constant.low == constant.high == pytest.approx(0.7, rel=1e-12)
    single = bootstrap_ci([0.5])
    assert single.low == single.high == single.estimate == 0.5


@pytest.mark.parametrize(
    "kwargs", [{"values": []}, {"values": [0.1, math.nan]}, {"values": [0.1], "level": 1.0}]
)
def test_bootstrap_ci_rejects_bad_input(kwargs):
    values = kwargs.pop("values")
    with pytest.raises(ValueError):
        bootstrap_ci(values, **kwargs)


def test_interval_format():
    assert Interval(0.8123, 0.79, 0.8344, 10, 1000).format() == "0.812 [0.790, 0.834]"
    assert Interval(0.8123, 0.79, 0.8344, 10, 1000).format(digits=1) == "0.8 [0.8, 0.8]"
