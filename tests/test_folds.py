"""Patient-wise folds and label fractions of the downstream protocol (METHODS 1.3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from brainvlp.downstream.folds import label_fraction, patient_folds


def _patients(num_patients, seed):
    """Rows of patients with 1-4 studies each, one label per patient."""
    rng = np.random.default_rng(seed)
    rows_per_patient = rng.integers(1, 5, num_patients)
    patient_N = np.repeat(np.arange(num_patients), rows_per_patient)
    return patient_N, np.repeat(rng.integers(0, 3, num_patients), rows_per_patient)


@pytest.mark.parametrize("k", [2, 4, 5])
def test_patient_folds_keep_each_patient_in_one_fold(k):
    patient_N, label_N = _patients(60, seed=k)
    ids_N = np.array([f"pseudo-{p:04d}" for p in patient_N])  # pseudonymised string ids
    fold_N = patient_folds(ids_N, label_N, k, seed=0)
    assert fold_N.shape == ids_N.shape and set(fold_N.tolist()) == set(range(k))
    for patient in np.unique(ids_N):
        assert len(set(fold_N[ids_N == patient].tolist())) == 1


def test_patient_folds_are_stratified_in_a_balanced_toy_case():
    patient_N = np.repeat(np.arange(40), 2)
    label_N = patient_N % 2  # 20 positive and 20 negative patients, two studies each
    fold_N = patient_folds(patient_N, label_N, 5, seed=1)
    for fold in range(5):
        assert np.bincount(label_N[fold_N == fold], minlength=2).tolist() == [8, 8]


def test_patient_folds_deterministic_per_seed():
    patient_N, label_N = _patients(50, seed=0)
    first = patient_folds(patient_N, label_N, 5, seed=2)
    np.testing.assert_array_equal(first, patient_folds(patient_N, label_N, 5, seed=2))
    assert not np.array_equal(first, patient_folds(patient_N, label_N, 5, seed=3))


def test_patient_folds_multilabel_rare_patterns_and_unlabelled():
    rng = np.random.default_rng(4)
    patient_N = np.arange(30)
    label_NC = rng.integers(0, 2, (30, 6))  # nearly every label-set pattern is unique
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fold_N = patient_folds(patient_N, label_NC, 3, seed=0)
    assert np.bincount(fold_N).tolist() == [10, 10, 10]
    assert np.bincount(patient_folds(patient_N, None, 3, seed=0)).tolist() == [10, 10, 10]


@pytest.mark.parametrize(("k", "num_patients"), [(1, 5), (6, 5)])
def test_patient_folds_reject_bad_k(k, num_patients):
    with pytest.raises(ValueError):
        patient_folds(np.arange(num_patients), np.zeros(num_patients), k, seed=0)


def test_label_fraction_sizes_and_determinism():
    rows_T = np.arange(0, 400, 2)  # training rows of a 400-row dataset
    label_all = np.random.default_rng(0).integers(0, 2, 400)
    sizes = {f: len(label_fraction(rows_T, label_all, f, seed=0)) for f in (0.01, 0.1, 0.5)}
    assert sizes == {0.01: 2, 0.1: 20, 0.5: 100}
    np.testing.assert_array_equal(label_fraction(rows_T[::-1], label_all, 1.0, seed=5), rows_T)
    kept = label_fraction(rows_T, label_all, 0.1, seed=1)
    np.testing.assert_array_equal(kept, label_fraction(rows_T, label_all, 0.1, seed=1))
    assert not np.array_equal(kept, label_fraction(rows_T, label_all, 0.1, seed=2))
    assert np.all(np.diff(kept) > 0) and np.isin(kept, rows_T).all()
    assert len(label_fraction(rows_T, None, 0.001, seed=0)) == 1  # never empty


def test_label_fraction_keeps_every_class_and_nests():
    label_all = np.zeros(600, int)
    label_all[[7, 300, 451]] = 1  # three positives among 300 training rows
    label_all[[12, 99]] = 2
    rows_T = np.r_[np.arange(0, 200), np.arange(400, 500)]  # 300 training rows; row 300 is not one
    for seed in range(10):
        small = label_fraction(rows_T, label_all, 0.01, seed)  # 3 rows: one per class
        assert sorted(set(label_all[small].tolist())) == [0, 1, 2]
        medium = label_fraction(rows_T, label_all, 0.1, seed)
        assert np.isin(small, medium).all()
        assert np.isin(medium, label_fraction(rows_T, label_all, 0.5, seed)).all()


def test_label_fraction_multilabel_keeps_both_values_of_every_column():
    label_all = np.zeros((200, 3), int)
    label_all[[5, 9], 0] = 1
    label_all[17, 1] = 1
    label_all[:, 2] = 1
    label_all[40, 2] = 0
    for seed in range(5):
        kept_NC = label_all[label_fraction(np.arange(200), label_all, 0.03, seed)]
        for c in range(3):
            assert set(kept_NC[:, c].tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("rows", "fraction"), [([0, 1, 2], 0.0), ([0, 1, 2], 1.5), ([0, 0, 1], 0.5), ([0, 1, 99], 0.5)]
)
def test_label_fraction_rejects_bad_input(rows, fraction):
    with pytest.raises(ValueError):
        label_fraction(np.array(rows), np.zeros(10, int), fraction, seed=0)
