"""Structured findings of a study (brat Fig. 14 questions, METHODS 1.2).

A study's findings are a JSON object with these keys (all optional; absent means unknown/NA):

- ``enhancing_lesion``: bool
- ``lesion_count_bucket``: one of ``LESION_COUNT_BUCKETS``
- ``largest_mass_bucket``: one of ``MASS_BUCKETS``
- ``side``: one of ``SIDES`` (side with more lesions)
- ``locations``: list of ``LOCATIONS`` containing lesions (multi-label)
- ``midline_shift``, ``white_matter_disease``, ``prior_surgery``: bool
- ``tumor_location``: one of ``TUMOR_LOCATIONS``
- ``clauses``: list of ``{"modality", "side", "site", "appearance"}`` objects, one per abnormality (SeLIP,
  METHODS 1.2 and 3): string fields, ``side`` one of ``CLAUSE_SIDES`` (``"none"`` for midline or
  unlateralised sites), ``site`` without the side (``"frontal lobe"``, not ``"left frontal lobe"``). A study
  with no abnormality carries ``[NORMAL_CLAUSE]`` rather than ``[]``: SeLIP treats the healthy description as
  text too, so two normal studies are similar to each other instead of similar to nothing.

``positive_findings`` turns them into the set of positive labels that the finding-based retrieval metrics
(P@5(F), R@5(F)) compare (clauses are not among them: they feed SeLIP's soft targets, not retrieval labels).
``study_clauses`` validates and returns the clauses, ``clause_text`` phrases one the way SeLIP compares them;
``validate_findings`` checks a whole object against the schema (ingest rejects studies that fail it).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

LOCATIONS = (
    "left_frontal_lobe",
    "right_frontal_lobe",
    "left_parietal_lobe",
    "right_parietal_lobe",
    "left_temporal_lobe",
    "right_temporal_lobe",
    "left_occipital_lobe",
    "right_occipital_lobe",
    "left_basal_ganglia_thalamus",
    "right_basal_ganglia_thalamus",
    "cerebellum",
    "brainstem",
)
LESION_COUNT_BUCKETS = ("none", "one", "2-6", "7-15", ">15")
MASS_BUCKETS = ("NA", "<1cm", "1-2cm", ">2cm")
SIDES = ("NA", "left", "right", "bilateral")
TUMOR_LOCATIONS = ("NA", "supratentorial", "infratentorial", "transtentorial")
BOOLEAN_FINDINGS = ("enhancing_lesion", "midline_shift", "white_matter_disease", "prior_surgery")
_NEGATIVE_VALUES = {"NA", "none"}
CLAUSE_FIELDS = ("modality", "side", "site", "appearance")
CLAUSE_SIDES = ("left", "right", "bilateral", "none")
# The clause of a study without any abnormality (see the module docstring for why it is not an empty list).
NORMAL_CLAUSE: Mapping[str, str] = MappingProxyType(
    {"modality": "all sequences", "side": "none", "site": "brain", "appearance": "no abnormality"}
)


def positive_findings(findings: Mapping[str, Any] | None) -> frozenset[str]:
    """The positive labels of one study, e.g. ``{"enhancing_lesion", "location:left_frontal_lobe"}``."""
    if not findings:
        return frozenset()
    labels = {name for name in BOOLEAN_FINDINGS if findings.get(name) is True}
    labels.update(f"location:{loc}" for loc in findings.get("locations") or ())
    for key, prefix in (
        ("lesion_count_bucket", "lesion_count"),
        ("largest_mass_bucket", "largest_mass"),
        ("side", "side"),
        ("tumor_location", "tumor_location"),
    ):
        value = findings.get(key)
        if value is not None and value not in _NEGATIVE_VALUES:
            labels.add(f"{prefix}:{value}")
    return frozenset(labels)


def _validated_clause(clause: Any, where: str) -> dict[str, str]:
    """The clause's four fields as a plain dict; ``where`` names it in errors (e.g. ``"clause 2"``)."""
    if not isinstance(clause, Mapping):
        raise ValueError(
            f"{where}: expected an object with fields {CLAUSE_FIELDS}, got {type(clause).__name__}"
        )
    for field in CLAUSE_FIELDS:
        if field not in clause:
            raise ValueError(f"{where}: missing field {field!r} (need {', '.join(CLAUSE_FIELDS)})")
        value = clause[field]
        # Errors name the field and the rule, never the value: findings may quote the report.
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    if clause["side"] not in CLAUSE_SIDES:
        raise ValueError(f"{where}: field 'side' must be one of {CLAUSE_SIDES}")
    return {field: clause[field] for field in CLAUSE_FIELDS}


def clause_text(clause: Mapping[str, str]) -> str:
    """SeLIP's phrasing of one clause, the text its Dice coefficient compares (the side word is left out
    for side ``"none"``, so unlateralised sites read naturally: "at brainstem", not "at none brainstem")."""
    checked = _validated_clause(clause, "clause")
    place = checked["site"] if checked["side"] == "none" else f"{checked['side']} {checked['site']}"
    return f"In modal {checked['modality']}, at {place}, the appearance is {checked['appearance']}."


def study_clauses(findings: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The study's validated clauses (``[]`` when absent, i.e. unknown), each with exactly the four fields.

    Raises ``ValueError`` naming the clause index and field for malformed input, so a bad export fails at
    loading rather than silently weakening the SeLIP targets.
    """
    clauses = (findings or {}).get("clauses")
    if clauses is None:
        return []
    if not isinstance(clauses, list):
        raise ValueError(f"findings 'clauses' must be a list of objects, got {type(clauses).__name__}")
    return [_validated_clause(clause, f"clause {index}") for index, clause in enumerate(clauses)]


_CHOICES = {
    "lesion_count_bucket": LESION_COUNT_BUCKETS,
    "largest_mass_bucket": MASS_BUCKETS,
    "side": SIDES,
    "tumor_location": TUMOR_LOCATIONS,
}


def validate_findings(findings: Any) -> None:
    """Check a study's findings against the schema above; raises ``ValueError`` naming the field and the
    rule (never the value, which may quote the report). Unknown keys pass: sites may record more."""
    if not isinstance(findings, Mapping):
        raise ValueError(f"expected a JSON object, found {type(findings).__name__}")
    for key in BOOLEAN_FINDINGS:
        if findings.get(key) is not None and not isinstance(findings[key], bool):
            raise ValueError(f"{key!r} must be true, false or null")
    for key, allowed in _CHOICES.items():
        if findings.get(key) is not None and findings[key] not in allowed:
            raise ValueError(f"{key!r} must be one of {', '.join(allowed)} or null")
    locations = findings.get("locations")
    if locations is not None and (
        not isinstance(locations, list) or any(loc not in LOCATIONS for loc in locations)
    ):
        raise ValueError(f"'locations' must be a list of: {', '.join(LOCATIONS)}")
    study_clauses(findings)
