"""SeLIP clauses in the findings schema: phrasing and validation (``brainvlp.findings``)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from brainvlp.findings import (
    CLAUSE_FIELDS,
    CLAUSE_SIDES,
    NORMAL_CLAUSE,
    clause_text,
    positive_findings,
    study_clauses,
)

LEFT_FRONTAL = {"modality": "FLAIR", "side": "left", "site": "frontal lobe", "appearance": "hyperintensity"}


def test_clause_text_phrasing() -> None:
    assert (
        clause_text(LEFT_FRONTAL) == "In modal FLAIR, at left frontal lobe, the appearance is hyperintensity."
    )
    midline = {**LEFT_FRONTAL, "side": "none", "site": "brainstem", "modality": "T1 post-contrast"}
    assert (
        clause_text(midline) == "In modal T1 post-contrast, at brainstem, the appearance is hyperintensity."
    )
    assert clause_text(NORMAL_CLAUSE) == "In modal all sequences, at brain, the appearance is no abnormality."


def test_normal_clause_is_a_valid_clause() -> None:
    assert set(NORMAL_CLAUSE) == set(CLAUSE_FIELDS) and NORMAL_CLAUSE["side"] in CLAUSE_SIDES
    assert study_clauses({"clauses": [dict(NORMAL_CLAUSE)]}) == [NORMAL_CLAUSE]
    assert json.loads(json.dumps([dict(NORMAL_CLAUSE)])) == [NORMAL_CLAUSE]


def test_study_clauses_returns_the_four_fields_in_order() -> None:
    extra = {**LEFT_FRONTAL, "certainty": "likely"}
    assert study_clauses({"clauses": [extra, NORMAL_CLAUSE]}) == [LEFT_FRONTAL, NORMAL_CLAUSE]
    assert all(list(clause) == list(CLAUSE_FIELDS) for clause in study_clauses({"clauses": [extra]}))


@pytest.mark.parametrize("findings", [None, {}, {"side": "left"}, {"clauses": None}])
def test_absent_clauses_are_an_empty_list(findings: dict[str, Any] | None) -> None:
    assert study_clauses(findings) == []


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ({k: v for k, v in LEFT_FRONTAL.items() if k != "site"}, r"clause 1: missing field 'site'"),
        ({**LEFT_FRONTAL, "modality": 3}, r"clause 1: field 'modality' must be a non-empty string"),
        ({**LEFT_FRONTAL, "appearance": " "}, r"clause 1: field 'appearance' must be a non-empty string"),
        ({**LEFT_FRONTAL, "side": "NA"}, r"clause 1: field 'side' must be one of .*'bilateral'.*\)$"),
        ("left frontal lesion", r"clause 1: expected an object with fields"),
    ],
)
def test_malformed_clauses_name_index_and_field(clause: Any, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        study_clauses({"clauses": [LEFT_FRONTAL, clause]})


def test_clauses_must_be_a_list() -> None:
    with pytest.raises(ValueError, match="'clauses' must be a list"):
        study_clauses({"clauses": LEFT_FRONTAL})
    with pytest.raises(ValueError, match="field 'side'"):
        clause_text({**LEFT_FRONTAL, "side": "middle"})


def test_clauses_are_not_retrieval_labels() -> None:
    findings = {"enhancing_lesion": True, "clauses": [LEFT_FRONTAL]}
    assert positive_findings(findings) == frozenset({"enhancing_lesion"})
