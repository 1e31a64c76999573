"""GREEN-style comparison of generated findings with the ground truth: hand-counted studies, their summary,
the counting invariants on random findings, and the extractor registry."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from brainvlp.evaluate.clinical import EXTRACTORS, compare_findings, get_extractor, summarize
from brainvlp.findings import (
    LESION_COUNT_BUCKETS,
    LOCATIONS,
    MASS_BUCKETS,
    SIDES,
    TUMOR_LOCATIONS,
    positive_findings,
)

NORMAL: dict[str, Any] = {
    "enhancing_lesion": False,
    "lesion_count_bucket": "none",
    "largest_mass_bucket": "NA",
    "side": "NA",
    "locations": [],
    "midline_shift": False,
    "white_matter_disease": False,
    "prior_surgery": False,
    "tumor_location": "NA",
}
LEFT_FRONTAL_MASS = {
    **NORMAL,
    "enhancing_lesion": True,
    "lesion_count_bucket": "one",
    "largest_mass_bucket": ">2cm",
    "side": "left",
    "locations": ["left_frontal_lobe"],
    "midline_shift": True,
    "tumor_location": "supratentorial",
}
# The same enhancing lesion put on the other side, reported smaller and without the midline shift.
RIGHT_FRONTAL_SMALLER = {
    **LEFT_FRONTAL_MASS,
    "largest_mass_bucket": "1-2cm",
    "side": "right",
    "locations": ["right_frontal_lobe"],
    "midline_shift": False,
}
TWO_LESIONS = {
    **NORMAL,
    "lesion_count_bucket": "2-6",
    "largest_mass_bucket": "1-2cm",
    "side": "left",
    "locations": ["cerebellum", "left_frontal_lobe"],
    "tumor_location": "transtentorial",
}
# The cerebellar lesion missed, and a resection that is not there.
ONE_OF_TWO_AND_SURGERY = {
    **TWO_LESIONS,
    "lesion_count_bucket": "one",
    "locations": ["left_frontal_lobe"],
    "tumor_location": "supratentorial",
    "prior_surgery": True,
}

# (reference, generated, expected counts), each counted by hand in the comments.
CASES = {
    "misplaced and misjudged lesion": (
        LEFT_FRONTAL_MASS,
        RIGHT_FRONTAL_SMALLER,
        # matched: enhancing, lesion_count:one, tumor_location:supratentorial. Location errors: side,
        # frontal lobe left -> right. Severity error: >2cm -> 1-2cm. Missing: midline_shift. Severity
        # agreement: the count only, of size, count and shift.
        dict(matched_findings=3, false_findings=0, missing_findings=1, location_errors=2, severity_errors=1,
             location_correct=0, location_total=1, severity_correct=1, severity_total=3, green=3 / 7),
    ),
    "white matter disease made up": (
        NORMAL,
        {**NORMAL, "white_matter_disease": True},
        dict(matched_findings=0, false_findings=1, missing_findings=0, location_errors=0, severity_errors=0,
             location_correct=0, location_total=0, severity_correct=3, severity_total=3, green=0.0),
    ),
    "normal reported as normal": (
        NORMAL,
        NORMAL,
        dict(matched_findings=0, false_findings=0, missing_findings=0, location_errors=0, severity_errors=0,
             location_correct=0, location_total=0, severity_correct=3, severity_total=3, green=1.0),
    ),
    "one of two lesions, surgery made up": (
        TWO_LESIONS,
        ONE_OF_TWO_AND_SURGERY,
        # matched: left frontal, 1-2cm, side left. Location error: transtentorial -> supratentorial. Severity
        # error: 2-6 -> one. Missing: the cerebellum. False: prior_surgery. Agreement: size and shift.
        dict(matched_findings=3, false_findings=1, missing_findings=1, location_errors=1, severity_errors=1,
             location_correct=1, location_total=2, severity_correct=2, severity_total=3, green=3 / 7),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_counted_studies(case: str) -> None:
    reference, generated, expected = CASES[case]
    counts = compare_findings(reference, generated)
    assert counts.keys() == expected.keys()
    for name, value in expected.items():
        assert counts[name] == pytest.approx(value), name


def test_partial_findings_count_only_what_is_stated() -> None:
    counts = compare_findings({"largest_mass_bucket": ">2cm"}, {})
    assert (counts["missing_findings"], counts["severity_correct"], counts["severity_total"]) == (1, 0, 1)
    assert counts["green"] == 0.0
    assert compare_findings({}, {"locations": ["brainstem"]})["false_findings"] == 1


def test_summary_means_pooled_accuracies_and_green() -> None:
    per_study = [compare_findings(reference, generated) for reference, generated, _ in CASES.values()]
    summary = summarize(per_study)
    # In CASES order: misplaced (3, 0, 1, 2, 1), made up (0, 1, 0, 0, 0), normal (0, ...),
    # one of two (3, 1, 1, 1, 1) as (matched, false, missing, location, severity).
    expected = {
        "matched_findings": 6 / 4,
        "false_findings": 2 / 4,
        "missing_findings": 2 / 4,
        "location_errors": 3 / 4,
        "severity_errors": 2 / 4,
        "location_accuracy": 1 / 3,  # (0 + 0 + 0 + 1) / (1 + 0 + 0 + 2)
        "severity_accuracy": 9 / 12,  # (1 + 3 + 3 + 2) / (3 + 3 + 3 + 3)
        "green": (3 / 7 + 0.0 + 1.0 + 3 / 7) / 4,
        "num_studies": 4.0,
    }
    assert summary == pytest.approx(expected)


def test_summary_of_studies_without_locations_and_of_none() -> None:
    assert math.isnan(summarize([compare_findings(NORMAL, NORMAL)])["location_accuracy"])
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def _random_findings(rng: np.random.Generator) -> dict[str, Any]:
    """Schema-valid findings with keys sometimes left out (unknown)."""
    choices = {
        "lesion_count_bucket": LESION_COUNT_BUCKETS,
        "largest_mass_bucket": MASS_BUCKETS,
        "side": SIDES,
        "tumor_location": TUMOR_LOCATIONS,
    }
    findings: dict[str, Any] = {key: str(rng.choice(values)) for key, values in choices.items()}
    findings |= {
        key: bool(rng.random() < 0.4) for key in ("enhancing_lesion", "midline_shift", "prior_surgery")
    }
    findings["white_matter_disease"] = bool(rng.random() < 0.4)
    findings["locations"] = sorted(
        rng.choice(LOCATIONS, size=int(rng.integers(0, 4)), replace=False).tolist()
    )
    return {key: value for key, value in findings.items() if rng.random() < 0.9}


def test_every_label_is_counted_once_and_roles_swap() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        reference, generated = _random_findings(rng), _random_findings(rng)
        counts = compare_findings(reference, generated)
        both = counts["matched_findings"] + counts["location_errors"] + counts["severity_errors"]
        assert both + counts["false_findings"] == len(positive_findings(generated))
        assert both + counts["missing_findings"] == len(positive_findings(reference))
        assert min(counts[name] for name in counts) >= 0 and 0.0 <= counts["green"] <= 1.0
        swapped = compare_findings(generated, reference)
        assert (swapped["false_findings"], swapped["missing_findings"]) == (
            counts["missing_findings"],
            counts["false_findings"],
        )
        assert compare_findings(reference, reference)["green"] == 1.0


def test_extractors_by_name() -> None:
    extract = get_extractor("phantom")
    assert extract("FINDINGS:\nThere is a 1.2 x 1.0 cm enhancing lesion in the brainstem.")["locations"] == [
        "brainstem"
    ]
    with pytest.raises(ValueError, match=r"'green'.*choose one of: phantom") as error:
        get_extractor("green")
    assert all(name in str(error.value) for name in EXTRACTORS)


def test_evaluate_does_not_load_the_phantom_until_asked() -> None:
    code = "import sys, brainvlp.evaluate.clinical; print('brainvlp.phantom' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
