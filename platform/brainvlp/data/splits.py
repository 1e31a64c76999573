"""Patient pseudonyms and patient-wise train / dev / test splits with cross-validation folds."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import numpy as np

from brainvlp.spec import SpecError


@dataclass
class SplitConfig:
    dev: float = 0.1  # fractions of patients; train gets the rest
    test: float = 0.2
    num_folds: int = 5  # folds over train patients for downstream cross-validation
    seed: int = 0

    def validate(self, path: str) -> None:
        if not (0 <= self.dev < 1 and 0 <= self.test < 1 and self.dev + self.test < 1):
            raise SpecError(path, f"dev ({self.dev}) and test ({self.test}) must be >= 0 and sum to < 1")
        if self.num_folds < 1:
            raise SpecError(f"{path}.num_folds", f"must be >= 1, found {self.num_folds}")


def pseudonymise(patient_id: str, key: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of a patient id: stable for one key, not invertible without it."""
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:24]


def assign_splits(studies: list[dict[str, Any]], config: SplitConfig, key: str = "patient_id") -> None:
    """Set ``split`` and ``fold`` on every study, by patient: a patient never spans two splits.

    Runs on the raw ids (in memory only), so the same seed gives the same split whatever pseudonymisation
    key a later ingest of the same export uses.
    """
    patients = sorted({s[key] for s in studies})
    order = np.random.default_rng(config.seed).permutation(len(patients))
    num_test = round(config.test * len(patients))
    num_dev = round(config.dev * len(patients))
    split_of, fold_of = {}, {}
    for position, patient_index in enumerate(order):
        patient = patients[patient_index]
        if position < num_test:
            split_of[patient] = "test"
        elif position < num_test + num_dev:
            split_of[patient] = "dev"
        else:
            split_of[patient] = "train"
            fold_of[patient] = (position - num_test - num_dev) % config.num_folds
    for study in studies:
        study["split"] = split_of[study[key]]
        study["fold"] = fold_of.get(study[key], -1)
