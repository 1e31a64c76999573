"""Findings back from a phantom report: the inverse of ``phantom.reports.write_report``.

Report generation is scored by comparing the findings of a generated report with the study's ground truth
(``evaluate.clinical``). On phantom data that needs no judge model: the phantom knows its own grammar, so
its reports can be read back exactly. ``extract_phantom_findings`` does that, and stays usable on a
language model's imitation of it (garbled, truncated or empty text): it never raises on a string, and a
sentence it does not recognise is ignored.

Method. The report is split at its headers (FINDINGS, IMPRESSION and their aliases in
``brainvlp.sections``); each sentence is then classified by the words ``write_report`` puts in it:

- a *lesion description* names a location (``LOCATION_WORDS``) and a lesion noun (lesion, mass, focus) and
  is neither a midline-shift nor a post-operative sentence nor negated ("No ..."). It gives the lesion's
  location (the first location named), its printed diameters, whether it enhances (the lesion kind, read
  from the phrases ``reports._kind`` produces, probed at import) and whether oedema surrounds it. FINDINGS
  describes every lesion exactly once, in order; only when FINDINGS describes none (a truncated or
  headerless imitation) are the IMPRESSION's per-lesion lines used instead;
- a *midline-shift sentence* mentions the midline; it is positive unless negated (no, not, without);
- a *post-operative sentence* mentions a resection or post-operative change; its location is the cavity's;
- a *white-matter sentence* is one of ``reports._WMD`` or ``reports._WMD_IMPRESSIONS``.

The findings then follow from the described lesions with the phantom's own rules (``reports._count_bucket``,
``_mass_bucket``, ``_side``, ``_tumor_location``, ``phantom_clauses``), while midline shift, white matter
disease and prior surgery are what the text states. Absent statements are negatives, as in the phantom's
reports (a normal study may say nothing about white matter or the midline).

Keys recovered, exactly on every ``write_report`` output (``tests/test_phantom_extract.py``): all of
``study_findings``: ``enhancing_lesion``, ``lesion_count_bucket``, ``largest_mass_bucket``, ``side``,
``locations``, ``midline_shift``, ``white_matter_disease``, ``prior_surgery``, ``tumor_location`` and
``clauses``. Limits: a report prints a lesion's two axial diameters and only sometimes the craniocaudal
one, so the largest diameter (hence ``largest_mass_bucket`` and, through necrosis, ``clauses``) is exact
only because ``phantom.generate`` always draws the largest diameter axially; a hand-built ``Lesion`` whose
craniocaudal diameter is largest may be read into a smaller bucket. ``largest_mass_bucket`` is left out
when lesions are described but none with a size, ``clauses`` when a lesion has no size or a cavity no
location. Nothing of a lesion beyond what the findings use (its centre, the midline shift in mm, a
cavity's diameter) is returned.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from brainvlp.findings import LOCATIONS
from brainvlp.phantom.reports import (
    _WMD,
    _WMD_IMPRESSIONS,
    LOCATION_WORDS,
    Lesion,
    _count_bucket,
    _kind,
    _mass_bucket,
    _side,
    _tumor_location,
    phantom_clauses,
)
from brainvlp.sections import SECTION_ALIASES


class _Choose:
    """Stands in for the generator's rng in ``reports._kind``: always picks option ``index`` (clamped), and
    records how many options there were, so the kind phrases come from the templates themselves."""

    def __init__(self, index: int) -> None:
        self.index, self.options = index, 1

    def integers(self, high: int) -> int:
        self.options = high
        return min(self.index, high - 1)


def _kind_phrases() -> dict[str, bool]:
    """Every lesion kind ``reports._kind`` writes (lower case) -> whether that kind enhances."""
    prototypes = [
        Lesion(LOCATIONS[0], (size, size, size), enhancing, False)
        for size, enhancing in ((2.5, True), (1.0, True), (1.0, False))
    ]  # necrotic, enhancing, non-enhancing
    phrases = {}
    for lesion in prototypes:
        index, rng = 0, _Choose(0)
        while index < rng.options:
            rng = _Choose(index)
            phrases[_kind(lesion, rng).lower()] = lesion.enhancing  # type: ignore[arg-type]
            index += 1
    return phrases


_KINDS = _kind_phrases()
# Longest first: "t1-hypointense non-enhancing" must win over "non-enhancing", and that over "enhancing".
_KIND = re.compile("|".join(re.escape(k) for k in sorted(_KINDS, key=len, reverse=True)))
_LOCATION_OF = {words.lower(): location for location, words in LOCATION_WORDS.items()}
_LOCATION = re.compile("|".join(re.escape(w) for w in sorted(_LOCATION_OF, key=len, reverse=True)))
_NOUN = re.compile(r"\b(?:lesion|mass|focus)\b")  # singular: "two lesions" counts, it does not describe
_NUMBER = r"(?<![\d.])(\d{1,3}(?:\.\d{1,3})?)"
_SIZE = re.compile(rf"{_NUMBER}\s?[x×]\s?{_NUMBER}(?:\s?[x×]\s?{_NUMBER})?\s?cm")
_NEGATION = re.compile(r"\b(?:no|not|without)\b")
# Bounded gap: a negation governs the oedema a few words on ("without surrounding oedema"), and an
# unbounded one would make garbage text of many "no"s quadratic to scan.
_OEDEMA_NEGATED = re.compile(r"\b(?:no|without)\b[^.;]{0,60}\b(?:oedema|edema)\b")
_OEDEMA = re.compile(r"\b(?:oedema|edema)\b")
_POSTOPERATIVE = re.compile(r"\b(?:resection|post-?operative)\b")
_NUMBERING = re.compile(r"^\d{1,3}[.)]\s+")


def _normalise(sentence: str) -> str:
    return " ".join(sentence.lower().split()).rstrip(".")


_WMD_SENTENCES = frozenset(_normalise(s) for s in (*_WMD, *_WMD_IMPRESSIONS))
_SECTION_OF = {alias: name for name in ("findings", "impression") for alias in SECTION_ALIASES[name]}
_HEADERS = sorted({alias for aliases in SECTION_ALIASES.values() for alias in aliases}, key=len, reverse=True)
# A header opens a line and ends in a colon ("FINDINGS:", "Impression :"), any case and spacing. Every
# section name is a header, so that e.g. TECHNIQUE ends the FINDINGS before it rather than joining them.
_HEADER = re.compile(
    r"^[ \t]*(" + "|".join(r"\s+".join(map(re.escape, h.split())) for h in _HEADERS) + r")[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)


@dataclass(frozen=True)
class _Described:
    """One lesion as a sentence describes it; ``dims_cm`` empty when the sentence gives no size."""

    location: str
    dims_cm: tuple[float, ...]
    enhancing: bool
    oedema: bool

    def as_lesion(self) -> Lesion:
        """A ``Lesion`` for the phantom's rules; an unstated craniocaudal diameter repeats the smallest
        printed one, which leaves the largest diameter, the only one the rules read, as printed."""
        dims = (*self.dims_cm, *[min(self.dims_cm, default=0.0)] * 3)[:3]
        return Lesion(self.location, (dims[0], dims[1], dims[2]), self.enhancing, self.oedema)


def _sections(text: str) -> tuple[str, str]:
    """(FINDINGS text, IMPRESSION text). Without a FINDINGS header, the text before the first header (the
    whole text when there is none) stands for FINDINGS: a model may leave the header out."""
    headers = list(_HEADER.finditer(text))
    bodies: dict[str, list[str]] = {"findings": [], "impression": []}
    ends = [header.start() for header in headers[1:]] + [len(text)] if headers else []
    for header, end in zip(headers, ends, strict=True):
        section = _SECTION_OF.get(" ".join(header[1].lower().split()))
        if section is not None:
            bodies[section].append(text[header.end() : end])
    if not bodies["findings"]:
        bodies["findings"].append(text[: headers[0].start()] if headers else text)
    return "\n".join(bodies["findings"]), "\n".join(bodies["impression"])


def _sentences(text: str) -> list[str]:
    """Lower-case sentences without list numbering ("2. "): a line break, or a full stop followed by white
    space, ends one (a decimal point is followed by a digit, so sizes stay whole)."""
    lines = (_NUMBERING.sub("", line.strip()) for line in text.lower().splitlines())
    pieces = (piece.strip() for line in lines for piece in re.split(r"(?<=\.)\s+", line))
    return [piece for piece in pieces if piece]


def _is_shift(sentence: str) -> bool:
    return "midline" in sentence


def _is_postoperative(sentence: str) -> bool:
    return _POSTOPERATIVE.search(sentence) is not None and not sentence.startswith("no ")


def _describe(sentence: str) -> _Described | None:
    """The lesion a sentence describes, or None when it describes none (see the module docstring)."""
    location = _LOCATION.search(sentence)
    if location is None or _NOUN.search(sentence) is None or sentence.startswith("no "):
        return None
    if _is_shift(sentence) or _is_postoperative(sentence):
        return None
    size = _SIZE.search(sentence)
    dims = tuple(float(number) for number in size.groups() if number is not None) if size else ()
    kind = _KIND.search(sentence)
    oedema = _OEDEMA.search(sentence) is not None and _OEDEMA_NEGATED.search(sentence) is None
    return _Described(_LOCATION_OF[location[0]], dims, bool(kind and _KINDS[kind[0]]), oedema)


def _cavity_location(sentences: list[str]) -> tuple[bool, str | None]:
    """(whether a resection is reported, its location if a post-operative sentence names one)."""
    reported, location = False, None
    for sentence in filter(_is_postoperative, sentences):
        reported = True
        named = _LOCATION.search(sentence)
        if named is not None and location is None:
            location = _LOCATION_OF[named[0]]
    return reported, location


def extract_phantom_findings(text: str) -> dict[str, Any]:
    """The findings (``brainvlp.findings`` schema) that a report in the phantom's grammar states; see the
    module docstring for the keys and their limits. Never raises on a string; ``TypeError`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"expected report text, got {type(text).__name__}")
    findings_text, impression_text = _sections(text)
    findings_sentences, impression_sentences = _sentences(findings_text), _sentences(impression_text)
    every = findings_sentences + impression_sentences
    described = [d for d in map(_describe, findings_sentences) if d is not None]
    if not described:
        described = [d for d in map(_describe, impression_sentences) if d is not None]
    lesions = [lesion.as_lesion() for lesion in described]
    sized = [lesion for lesion, d in zip(lesions, described, strict=True) if d.dims_cm]
    white_matter_disease = any(sentence in _WMD_SENTENCES for sentence in map(_normalise, every))
    prior_surgery, cavity_location = _cavity_location(every)
    findings: dict[str, Any] = {
        "enhancing_lesion": any(lesion.enhancing for lesion in lesions),
        "lesion_count_bucket": _count_bucket(len(lesions)),
        "largest_mass_bucket": _mass_bucket(sized),
        "side": _side(lesions),
        "locations": sorted({lesion.location for lesion in lesions}),
        "midline_shift": any(_is_shift(s) and not _NEGATION.search(s) for s in every),
        "white_matter_disease": white_matter_disease,
        "prior_surgery": prior_surgery,
        "tumor_location": _tumor_location(lesions),
    }
    if lesions and not sized:
        del findings["largest_mass_bucket"]  # lesions without any stated size: the size is unknown
    if len(sized) == len(lesions) and prior_surgery == (cavity_location is not None):
        # phantom_clauses reads only the cavity's site, not its diameter (0.0 here).
        cavity = None if cavity_location is None else (cavity_location, 0.0)
        findings["clauses"] = phantom_clauses(lesions, white_matter_disease, cavity)
    return findings
