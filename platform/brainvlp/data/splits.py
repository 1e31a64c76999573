"""Patient pseudonyms and patient-wise train / dev / test splits with cross-validation folds."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from brainvlp.spec import NonNegativeInt, PositiveInt, Range, SpecError


@dataclass
class SplitConfig:
    dev: Annotated[float, Range(ge=0, lt=1)] = 0.1  # fractions of patients; train gets the rest
    test: Annotated[float, Range(ge=0, lt=1)] = 0.2
    num_folds: PositiveInt = 5  # folds over train patients for downstream cross-validation
    # A key of the findings JSON (e.g. "enhancing_lesion") whose value the folds are stratified on.
    stratify: str | None = None
    seed: NonNegativeInt = 0

    def validate(self, path: str) -> None:
        if not (0 <= self.dev < 1 and 0 <= self.test < 1 and self.dev + self.test < 1):
            raise SpecError(path, f"dev ({self.dev}) and test ({self.test}) must be >= 0 and sum to < 1")


def pseudonymise(patient_id: str, key: bytes) -> str:
    """Keyed hash (HMAC-SHA256) of a patient id: stable for one key, not invertible without it."""
    return hmac.new(key, patient_id.encode(), hashlib.sha256).hexdigest()[:24]


def assign_splits(studies: list[dict[str, Any]], config: SplitConfig, key: str = "patient_id") -> None:
    """Set ``split`` and ``fold`` on every study, by patient: a patient never spans two splits.

    Runs on the raw ids (in memory only), so the same seed gives the same split whatever pseudonymisation
    key a later ingest of the same export uses. Folds cover train patients only (-1 elsewhere).
    """
    patients = sorted({s[key] for s in studies})
    order = [patients[i] for i in np.random.default_rng(config.seed).permutation(len(patients))]
    num_test = round(config.test * len(patients))
    num_dev = round(config.dev * len(patients))
    split_of = {p: "test" for p in order[:num_test]}
    split_of.update({p: "dev" for p in order[num_test : num_test + num_dev]})
    train = order[num_test + num_dev :]
    split_of.update(dict.fromkeys(train, "train"))
    fold_of = _folds(train, _stratum_of(studies, config.stratify, key), config)
    for study in studies:
        study["split"] = split_of[study[key]]
        study["fold"] = fold_of.get(study[key], -1)


def _stratum_of(studies: list[dict[str, Any]], finding: str | None, key: str) -> dict[str, str]:
    """Each patient's value of ``finding`` (from their first study) as a class label; "" when absent."""
    if finding is None:
        return {}
    strata: dict[str, str] = {}
    for study in studies:
        if study[key] not in strata:
            findings = json.loads(study.get("findings") or "{}")
            strata[study[key]] = json.dumps(findings.get(finding, ""), sort_keys=True)
    return strata


def _folds(train: list[str], strata: dict[str, str], config: SplitConfig) -> dict[str, int]:
    if config.num_folds == 1 or not train:
        return dict.fromkeys(train, 0)
    if not strata:
        return {patient: position % config.num_folds for position, patient in enumerate(train)}
    labels = [strata[p] for p in train]
    # Classes smaller than num_folds cannot appear in every fold; sklearn warns and spreads what it can.
    from sklearn.model_selection import StratifiedKFold  # ~0.8 s to import: only when folds are drawn

    folds = StratifiedKFold(config.num_folds, shuffle=True, random_state=config.seed)
    fold_of = {}
    for fold, (_, held_out) in enumerate(folds.split(np.zeros(len(train)), labels)):
        fold_of.update({train[i]: fold for i in held_out})
    return fold_of


def check_no_leakage(rows: Iterable[tuple[str, str]]) -> None:
    """Fail if any patient (by pseudonym) appears in two splits; ``rows`` are (patient_pid, split)."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for pid, split in rows:
        splits_of[pid].add(split)
    leaked = sorted(pid for pid, splits in splits_of.items() if len(splits) > 1)
    if leaked:
        raise RuntimeError(
            f"patient leakage: {len(leaked)} patient(s) span two splits, e.g. pseudonyms {leaked[:3]}"
        )
