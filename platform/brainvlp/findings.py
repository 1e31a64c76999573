"""Structured findings of a study (brat Fig. 14 questions, METHODS 1.2).

A study's findings are a JSON object with these keys (all optional; absent means unknown/NA):

- ``enhancing_lesion``: bool
- ``lesion_count_bucket``: one of ``LESION_COUNT_BUCKETS``
- ``largest_mass_bucket``: one of ``MASS_BUCKETS``
- ``side``: one of ``SIDES`` (side with more lesions)
- ``locations``: list of ``LOCATIONS`` containing lesions (multi-label)
- ``midline_shift``, ``white_matter_disease``, ``prior_surgery``: bool
- ``tumor_location``: one of ``TUMOR_LOCATIONS``

``positive_findings`` turns them into the set of positive labels that the finding-based retrieval metrics
(P@5(F), R@5(F)) compare.
"""

from __future__ import annotations

from collections.abc import Mapping
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
