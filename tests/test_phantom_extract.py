"""Phantom reports read back into findings: exact on the phantom's own studies, every phrasing included, and
never raising on a model's garbled imitation."""

from __future__ import annotations

import ast
import inspect
import re
import string
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from brainvlp.findings import (
    LESION_COUNT_BUCKETS,
    LOCATIONS,
    MASS_BUCKETS,
    SIDES,
    TUMOR_LOCATIONS,
    validate_findings,
)
from brainvlp.phantom import reports
from brainvlp.phantom.extract import extract_phantom_findings
from brainvlp.phantom.generate import PhantomConfig, StudyRecord, draw_report, simulate_study
from brainvlp.phantom.reports import LOCATION_WORDS, study_findings

# Up to 8 lesions, so that counts beyond "six" (written in digits) and the 7-15 bucket occur too.
CONFIG = PhantomConfig(num_studies=1, num_patients=1, shape=(36, 40, 36), max_lesions=8, seed=11)
MIN_STUDIES, MAX_STUDIES = 300, 3000

PickSite = tuple[str, tuple[str, ...]]  # (function in reports.py, its options)


class Drawn(NamedTuple):
    report: str
    findings: dict[str, Any]


def _draw(index: int) -> Drawn:
    """Study ``index``'s report and findings as ``generate.simulate_study`` draws them, without its images.
    ``test_drawn_studies_are_the_generators`` checks that this is the generator's report and findings."""
    return Drawn(*draw_report(CONFIG, index))


def _options(node: ast.expr) -> list[tuple[str, ...]]:
    """The option tuples a ``_pick`` argument can evaluate to: a literal, a module constant, or either
    branch of a conditional. Any other form fails, so that a new kind of call site is noticed here."""
    if isinstance(node, ast.IfExp):
        return _options(node.body) + _options(node.orelse)
    if isinstance(node, ast.Name):
        return [tuple(getattr(reports, node.id))]
    if isinstance(node, ast.Tuple):
        return [tuple(ast.literal_eval(node))]
    raise AssertionError(f"unrecognised _pick argument at reports.py line {node.lineno}")


def _is_pick(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_pick"


def _pick_sites() -> set[PickSite]:
    """Every (function, options) pair with which reports.py calls ``_pick``, read from its source."""
    tree = ast.parse(Path(reports.__file__).read_text())
    sites = set()
    for function in (node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)):
        for call in ast.walk(function):
            if _is_pick(call):
                sites.update((function.name, options) for options in _options(call.args[1]))
    return sites


# Branches drawn with rng.random()/rng.choice rather than _pick, recognised in the report text.
TEXT_FEATURES: dict[str, Callable[[str], bool]] = {
    "examination header": lambda text: "EXAMINATION:" in text,
    "technique header": lambda text: "TECHNIQUE:" in text,
    "count sentence": lambda text: re.search(r"There are \w+ lesions, in ", text) is not None,
    "count in digits": lambda text: re.search(r"\b\d+ lesions\b", text) is not None,
    "summary impression": lambda text: " lesions involving " in text,
    "numbered impression": lambda text: re.search(r"^2\. ", text, re.MULTILINE) is not None,
    "craniocaudal diameter": lambda text: re.search(r"\d\.\d x \d\.\d x \d\.\d cm", text) is not None,
    **{f"extra {sentence!r}": (lambda text, s=sentence: s in text) for sentence in reports._NORMAL_EXTRAS},
}
FINDING_VALUES: dict[str, tuple[Any, ...]] = {
    "side": SIDES,
    "tumor_location": TUMOR_LOCATIONS,
    "largest_mass_bucket": MASS_BUCKETS,
    "lesion_count_bucket": tuple(bucket for bucket in LESION_COUNT_BUCKETS if bucket != ">15"),  # <= 8
    **{
        key: (False, True)
        for key in ("enhancing_lesion", "midline_shift", "white_matter_disease", "prior_surgery")
    },
}


class Coverage:
    """What the drawn studies exercised: ``_pick`` choices per call site, text branches, finding values."""

    def __init__(self) -> None:
        self.chosen: dict[PickSite, set[str]] = defaultdict(set)
        self.features: set[str] = set()
        self.values: dict[str, set[Any]] = defaultdict(set)
        self.locations: set[str] = set()

    def recording(self, pick: Callable[..., str]) -> Callable[..., str]:
        def record(rng: np.random.Generator, options: tuple[str, ...]) -> str:
            choice = pick(rng, options)
            caller = inspect.currentframe().f_back.f_code.co_name  # type: ignore[union-attr]
            self.chosen[(caller, tuple(options))].add(choice)
            return choice

        return record

    def add(self, study: Drawn) -> None:
        self.features.update(name for name, seen in TEXT_FEATURES.items() if seen(study.report))
        for key in FINDING_VALUES:
            self.values[key].add(study.findings[key])
        self.locations.update(study.findings["locations"])

    def missing(self, sites: set[PickSite]) -> list[str]:
        missing = [
            f"{function}: {option!r}"
            for function, options in sorted(sites)
            for option in options
            if option not in self.chosen[(function, options)]
        ]
        missing += [f"branch: {name}" for name in TEXT_FEATURES if name not in self.features]
        missing += [
            f"{k}={v!r}" for k, values in FINDING_VALUES.items() for v in values if v not in self.values[k]
        ]
        return missing + [f"location {loc}" for loc in LOCATIONS if loc not in self.locations]


def _studies(coverage: Coverage) -> Iterator[Drawn]:
    """Studies of the phantom's own code path (``_draw``), drawn until at least MIN_STUDIES and every
    ``_pick`` option, text branch and finding value has occurred. The draw is seeded, so the count is fixed;
    the loop matters when reports.py changes, e.g. a new phrasing: it then draws on until the new option
    occurs (and the exactness test reads it), or fails naming what never did."""
    sites = _pick_sites()
    with pytest.MonkeyPatch.context() as patch:
        # reports.py looks _pick up at call time, so every call site goes through the recorder.
        patch.setattr(reports, "_pick", coverage.recording(reports._pick))
        for index in range(MAX_STUDIES):
            study = _draw(index)
            coverage.add(study)
            yield study
            if index + 1 >= MIN_STUDIES and not coverage.missing(sites):
                return
    raise AssertionError(f"not exercised in {MAX_STUDIES} studies: {coverage.missing(sites)}")


@pytest.fixture(scope="module")
def drawn() -> tuple[list[Drawn], Coverage]:
    coverage = Coverage()
    return list(_studies(coverage)), coverage


def test_pick_sites_are_read_from_the_templates() -> None:
    sites = _pick_sites()
    assert ("_kind", ("rim-enhancing", "ring-enhancing", "peripherally enhancing necrotic")) in sites
    assert ("_findings_section", reports._NO_ENHANCEMENT) in sites
    # Every call in the source is inside a function the walk saw ("def _pick(" is the one extra match).
    calls = len(re.findall(r"\b_pick\(", Path(reports.__file__).read_text())) - 1
    found = sum(1 for node in ast.walk(ast.parse(Path(reports.__file__).read_text())) if _is_pick(node))
    assert calls == found and len({function for function, _ in sites}) == 7


def test_drawn_studies_are_the_generators() -> None:
    for index in range(4):
        study = simulate_study(CONFIG, StudyRecord(index, f"ACC{index:06d}", 0, "MRN0000000"))
        assert _draw(index) == (study.report, study.findings)


def test_extraction_is_exact_on_every_phantom_report(drawn: tuple[list[Drawn], Coverage]) -> None:
    studies, coverage = drawn
    assert len(studies) >= MIN_STUDIES and not coverage.missing(_pick_sites())
    for study in studies:
        assert extract_phantom_findings(study.report) == study.findings, study.report


def test_normal_and_empty_reports_read_as_normal() -> None:
    normal = study_findings([], False, False)
    assert extract_phantom_findings("") == normal
    assert (
        extract_phantom_findings("FINDINGS:\nNo mass lesion. No midline shift.\n\nIMPRESSION:\nNormal.")
        == normal
    )


def test_model_like_text_is_read_by_its_statements() -> None:
    # No headers, a negated lesion, a lesion only in the impression, no size.
    headerless = (
        "There is a 2.4 x 2.0 cm enhancing mass in the right temporal lobe. No lesion in the cerebellum."
    )
    found = extract_phantom_findings(headerless)
    assert found["locations"] == ["right_temporal_lobe"] and found["largest_mass_bucket"] == ">2cm"
    assert found["side"] == "right" and found["enhancing_lesion"] and not found["midline_shift"]
    only_impression = "FINDINGS:\nNo midline shift.\n\nIMPRESSION:\nNon-enhancing lesion in the brainstem."
    found = extract_phantom_findings(only_impression)
    assert found["locations"] == ["brainstem"] and found["tumor_location"] == "infratentorial"
    assert "largest_mass_bucket" not in found and "clauses" not in found  # the size is not stated
    assert extract_phantom_findings("Status post resection.")["prior_surgery"] is True


def test_vocabulary_comes_from_the_report_module() -> None:
    for location, words in LOCATION_WORDS.items():
        text = f"FINDINGS:\n{words.capitalize()}: enhancing lesion, 1.2 x 1.0 cm."
        assert extract_phantom_findings(text)["locations"] == [location]
    for sentence in (*reports._WMD, *reports._WMD_IMPRESSIONS):
        assert extract_phantom_findings(sentence)["white_matter_disease"] is True
    for sentence in reports._NO_WMD:
        assert extract_phantom_findings(sentence)["white_matter_disease"] is False


def _garbage(rng: np.random.Generator, report: str) -> Iterator[str]:
    """Model-like damage to a real report, and text that is no report at all."""
    words = report.split()
    yield report[: int(rng.integers(len(report) + 1))]  # truncated anywhere
    yield " ".join(rng.permutation(words))  # shuffled words
    yield "".join(rng.choice(list(report), size=len(report)))  # shuffled characters
    yield "".join(rng.choice(list(string.printable + "×é—\u200b\x00"), size=int(rng.integers(0, 400))))
    yield report.replace(".", "", int(rng.integers(0, 20))).replace("\n", " ")


@pytest.mark.parametrize(
    "text",
    [
        "",
        " \n\t ",
        "FINDINGS:",
        "IMPRESSION:\nFINDINGS:\nIMPRESSION:",
        "1. 2. 3.",
        "9999999.99999 x 99999999 x 1e308 cm mass in the left frontal lobe.",
        "no " * 20_000 + "oedema",
        "lesion mass focus left frontal lobe " * 2_000,
        "Midline structures are not displaced from the resection cavity in the.",
    ],
)
def test_odd_strings_give_valid_findings(text: str) -> None:
    validate_findings(extract_phantom_findings(text))


def test_damaged_reports_never_raise(drawn: tuple[list[Drawn], Coverage]) -> None:
    rng = np.random.default_rng(0)
    for study in drawn[0][:150]:
        for text in _garbage(rng, study.report):
            validate_findings(extract_phantom_findings(text))


def test_non_text_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="report text"):
        extract_phantom_findings(None)  # type: ignore[arg-type]
