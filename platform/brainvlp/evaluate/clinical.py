"""Clinical accuracy of generated reports: their findings against the study's ground truth, GREEN-style.

Report generation (brat Table 4) is scored with NLG metrics and, here, by what the generated report *says*:
an extractor turns its text into findings (``brainvlp.findings`` schema), and ``compare_findings`` counts
the errors that GREEN (Ostmeier et al. 2024, "GREEN: Generative Radiology Report Evaluation and Error
Notation") asks its judge to count, on the structured findings instead of free text.

A *finding* is one positive label of ``brainvlp.findings.positive_findings`` (``enhancing_lesion``,
``location:left_frontal_lobe``, ``largest_mass:>2cm``, ...). Let R and G be the labels of the reference
and the generated findings. Per study:

- ``matched_findings`` = |R ∩ G|: findings both state (GREEN's matched findings).
- ``location_errors`` (GREEN (c), misidentification of anatomic location/position): a finding reported in
  the wrong place. For ``side`` and ``tumor_location``, one error when both state a positive value and
  the values differ; for ``locations``, min(|R_loc \\ G_loc|, |G_loc \\ R_loc|): a reference location
  paired with a wrong generated one is a lesion put in the wrong place.
- ``severity_errors`` (GREEN (d), misassessment of severity): ``lesion_count_bucket`` or
  ``largest_mass_bucket`` both positive and different.
- ``false_findings`` (GREEN (a), false report of a finding) = |G \\ R| less the labels counted as location
  or severity errors; ``missing_findings`` (GREEN (b), missing a finding) = |R \\ G| less the same. So
  every disagreeing label is counted once: a wrong size is one misassessment, not a false plus a missing
  finding, as GREEN counts it. A midline shift or enhancement the other side lacks is false or missing.
- ``location_correct`` / ``location_total``: reference lesion locations also in the generated findings,
  out of the reference's locations.
- ``severity_correct`` / ``severity_total``: of ``largest_mass_bucket``, ``lesion_count_bucket`` and
  ``midline_shift``, those the reference states (not None, negatives included), and how many of them the
  generated findings state identically.
- ``green`` = matched / (matched + false + missing + location_errors + severity_errors). GREEN's
  categories (e) and (f), comparisons with prior studies, do not arise in single-study findings. Unlike
  GREEN's implementation, which scores 0 whenever nothing is matched, a study where neither side has a
  positive finding scores 1: a normal study reported as normal is a correct report.

``summarize`` averages these over studies. The extractor is chosen by name (``get_extractor``): the exact
phantom reader (``"phantom"``) for phantom data, the rule-based reader of ``evaluate.rules_extract``
(``"rules"``) for real reports. A local GREEN judge model is no extractor: it counts the errors itself
(``evaluate.green_judge``). Entries are imported only when asked for, so this layer does not depend on
the phantom (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from brainvlp.findings import positive_findings

# Extractor name -> "module:function" taking report text and returning its findings: "phantom" reads the
# phantom's grammar exactly, "rules" real reports by NegEx-style rules (the GREEN judge is separate).
EXTRACTORS: dict[str, str] = {
    "phantom": "brainvlp.phantom.extract:extract_phantom_findings",
    "rules": "brainvlp.evaluate.rules_extract:extract_rule_findings",
}

_LOCATION_KEYS = ("side", "tumor_location")  # one value each: a different value is a misplaced finding
_SEVERITY_KEYS = ("lesion_count_bucket", "largest_mass_bucket")  # graded: a different value misjudges it
_SEVERITY_AGREEMENT = ("largest_mass_bucket", "lesion_count_bucket", "midline_shift")
ERROR_COUNTS = ("false_findings", "missing_findings", "location_errors", "severity_errors")
COUNTS = ("matched_findings", *ERROR_COUNTS)


def get_extractor(name: str) -> Callable[[str], dict[str, Any]]:
    """The findings extractor registered as ``name`` (imported now); ``ValueError`` lists the valid names."""
    if name not in EXTRACTORS:
        raise ValueError(
            f"unknown findings extractor {name!r}; choose one of: {', '.join(sorted(EXTRACTORS))}"
        )
    module, _, attribute = EXTRACTORS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def _labels(findings: Mapping[str, Any], key: str) -> frozenset[str]:
    """The positive labels of one key alone (so label spelling stays in ``brainvlp.findings``)."""
    return positive_findings({key: findings.get(key)})


def _substitutions(reference: Mapping[str, Any], generated: Mapping[str, Any]) -> tuple[int, int]:
    """(location errors, severity errors): findings both sides report with a different value."""
    location = severity = 0
    for key in (*_LOCATION_KEYS, *_SEVERITY_KEYS):
        ref, gen = _labels(reference, key), _labels(generated, key)
        if ref and gen and ref != gen:
            location += key in _LOCATION_KEYS
            severity += key in _SEVERITY_KEYS
    ref_loc, gen_loc = _labels(reference, "locations"), _labels(generated, "locations")
    location += min(len(ref_loc - gen_loc), len(gen_loc - ref_loc))
    return location, severity


def green_score(counts: Mapping[str, float]) -> float:
    """matched / (matched + clinically significant errors); 1.0 when there is neither (see module doc)."""
    errors = sum(counts[name] for name in ERROR_COUNTS)
    total = counts["matched_findings"] + errors
    return 1.0 if total == 0 else counts["matched_findings"] / total


def compare_findings(reference: Mapping[str, Any], generated: Mapping[str, Any]) -> dict[str, int | float]:
    """GREEN-style counts of one study's generated findings against its reference (module docstring)."""
    ref, gen = positive_findings(reference), positive_findings(generated)
    location_errors, severity_errors = _substitutions(reference, generated)
    ref_locations = set(reference.get("locations") or ())
    stated = [key for key in _SEVERITY_AGREEMENT if reference.get(key) is not None]
    counts: dict[str, int | float] = {
        "matched_findings": len(ref & gen),
        # Each substitution consumed one label on each side.
        "false_findings": len(gen - ref) - location_errors - severity_errors,
        "missing_findings": len(ref - gen) - location_errors - severity_errors,
        "location_errors": location_errors,
        "severity_errors": severity_errors,
        "location_correct": len(ref_locations & set(generated.get("locations") or ())),
        "location_total": len(ref_locations),
        "severity_correct": sum(generated.get(key) == reference[key] for key in stated),
        "severity_total": len(stated),
    }
    counts["green"] = green_score(counts)
    return counts


def _fraction(correct: float, total: float) -> float:
    return correct / total if total else math.nan


def summarize(per_study: Sequence[Mapping[str, int | float]]) -> dict[str, float]:
    """Mean per study of each count in ``COUNTS`` and of ``green`` (GREEN averages its per-report scores);
    ``location_accuracy`` = Σ location_correct / Σ location_total and ``severity_accuracy`` likewise, pooled
    over studies so that studies with nothing to locate do not count (NaN when no study has any)."""
    if not per_study:
        raise ValueError("summarize needs at least one study's comparison")
    n = len(per_study)
    summary = {name: sum(study[name] for study in per_study) / n for name in COUNTS}
    for name in ("location", "severity"):
        correct = sum(study[f"{name}_correct"] for study in per_study)
        summary[f"{name}_accuracy"] = _fraction(correct, sum(study[f"{name}_total"] for study in per_study))
    summary["green"] = sum(green_score(study) for study in per_study) / n
    summary["num_studies"] = float(n)
    return summary
