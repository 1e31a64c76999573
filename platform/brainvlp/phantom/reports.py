"""Findings and report text of the phantom dataset, both derived from the same drawn lesions.

The findings follow ``brainvlp.findings`` exactly; the report says the same thing in varied radiology prose
(several phrasings per finding, negated normals, numbered impressions sometimes), so that text and labels
never disagree. Every sentence about a lesion names its side and region in words (``LOCATION_WORDS``):
that is what text-image retrieval has to learn.

Rules (deterministic, so labels are reproducible):
- ``side``: the side with more lesions, ``bilateral`` on a tie with lesions on both sides, ``NA`` when there
  are no lesions or only midline ones (cerebellum, brainstem).
- ``midline_shift``: a supratentorial lesion with oedema whose largest diameter is >= 2.5 cm.
- ``tumor_location``: infratentorial = cerebellum/brainstem, supratentorial = everything else, both =
  transtentorial.
- ``clauses`` (SeLIP): one per lesion in report order, then the resection cavity, then white matter disease
  (the FINDINGS section's order); ``NORMAL_CLAUSE`` alone when there is none of them. A lesion clause is
  seen on "T1 post-contrast" when enhancing, else on "FLAIR"; its appearance is a canonical phrase of its
  kind (the report varies the wording, the clause does not, so equal kinds compare equal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from brainvlp.findings import LOCATIONS, NORMAL_CLAUSE

INFRATENTORIAL = frozenset({"cerebellum", "brainstem"})
LOCATION_WORDS = {
    loc: loc.replace("_basal_ganglia_thalamus", " thalamus/basal ganglia").replace("_", " ")
    for loc in LOCATIONS
}
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")


@dataclass(frozen=True)
class Lesion:
    """A lesion as the radiologist reports it; ``centre_mm`` is its template-space (MNI) centre."""

    location: str
    diameters_cm: tuple[float, float, float]  # along MNI x, y, z, one decimal
    enhancing: bool
    oedema: bool
    centre_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def largest_cm(self) -> float:
        return max(self.diameters_cm)

    @property
    def necrotic(self) -> bool:
        """Large enhancing lesions are drawn (and reported) rim-enhancing with a necrotic centre."""
        return self.enhancing and self.largest_cm >= 2.0


def midline_shift_lesion(lesions: list[Lesion]) -> Lesion | None:
    """The lesion that causes midline shift under the documented rule, if any (the largest qualifying)."""
    causes = [
        lesion
        for lesion in lesions
        if lesion.oedema and lesion.largest_cm >= 2.5 and lesion.location not in INFRATENTORIAL
    ]
    return max(causes, key=lambda lesion: lesion.largest_cm, default=None)


def _count_bucket(count: int) -> str:
    if count <= 1:
        return ("none", "one")[count]
    return "2-6" if count <= 6 else "7-15" if count <= 15 else ">15"


def _mass_bucket(lesions: list[Lesion]) -> str:
    if not lesions:
        return "NA"
    largest = max(lesion.largest_cm for lesion in lesions)
    return "<1cm" if largest < 1.0 else "1-2cm" if largest <= 2.0 else ">2cm"


def _side(lesions: list[Lesion]) -> str:
    left = sum(lesion.location.startswith("left_") for lesion in lesions)
    right = sum(lesion.location.startswith("right_") for lesion in lesions)
    if left == right:
        return "bilateral" if left else "NA"
    return "left" if left > right else "right"


def _tumor_location(lesions: list[Lesion]) -> str:
    infra = {lesion.location in INFRATENTORIAL for lesion in lesions}
    if not infra:
        return "NA"
    if len(infra) == 2:
        return "transtentorial"
    return "infratentorial" if infra == {True} else "supratentorial"


def _side_and_site(location: str) -> tuple[str, str]:
    """A location as a clause's side and site: ``left_frontal_lobe`` -> ``("left", "frontal lobe")``."""
    side = location.partition("_")[0]
    if side in ("left", "right"):
        return side, LOCATION_WORDS[location].removeprefix(f"{side} ")
    return "none", LOCATION_WORDS[location]


def _clause(modality: str, side: str, site: str, appearance: str) -> dict[str, str]:
    return {"modality": modality, "side": side, "site": site, "appearance": appearance}


def _lesion_clause(lesion: Lesion) -> dict[str, str]:
    """Enhancement shows on post-contrast T1, non-enhancing lesions on FLAIR (how the phantom paints them)."""
    if lesion.necrotic:
        appearance = "rim-enhancing necrotic mass"
    else:
        appearance = "enhancing mass" if lesion.enhancing else "non-enhancing lesion"
    appearance += " with surrounding oedema" if lesion.oedema else ""
    modality = "T1 post-contrast" if lesion.enhancing else "FLAIR"
    return _clause(modality, *_side_and_site(lesion.location), appearance)


def phantom_clauses(
    lesions: list[Lesion], white_matter_disease: bool, cavity: tuple[str, float] | None
) -> list[dict[str, str]]:
    """SeLIP clauses of a study, in the order the FINDINGS section reports them (see module docstring)."""
    clauses = [_lesion_clause(lesion) for lesion in lesions]
    if cavity is not None:
        clauses.append(_clause("FLAIR", *_side_and_site(cavity[0]), "resection cavity"))
    if white_matter_disease:
        clauses.append(_clause("FLAIR", "bilateral", "periventricular white matter", "hyperintensities"))
    return clauses or [dict(NORMAL_CLAUSE)]


def study_findings(
    lesions: list[Lesion],
    white_matter_disease: bool,
    prior_surgery: bool,
    *,
    cavity: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """The study's findings object (schema of ``brainvlp.findings``), key order as documented there.
    ``cavity`` is ``(location, diameter_cm)`` as for ``write_report``: its clause needs the site."""
    if prior_surgery != (cavity is not None):
        raise ValueError("cavity must be given exactly when prior_surgery is true")
    return {
        "enhancing_lesion": any(lesion.enhancing for lesion in lesions),
        "lesion_count_bucket": _count_bucket(len(lesions)),
        "largest_mass_bucket": _mass_bucket(lesions),
        "side": _side(lesions),
        "locations": sorted({lesion.location for lesion in lesions}),
        "midline_shift": midline_shift_lesion(lesions) is not None,
        "white_matter_disease": white_matter_disease,
        "prior_surgery": prior_surgery,
        "tumor_location": _tumor_location(lesions),
        "clauses": phantom_clauses(lesions, white_matter_disease, cavity),
    }


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _article(word: str) -> str:
    return f"an {word}" if word[0].lower() in "aeiou" else f"a {word}"


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def _size(lesion: Lesion, rng: np.random.Generator) -> str:
    """Axial diameters largest first (sometimes with the craniocaudal one), in cm with one decimal."""
    x, y, z = lesion.diameters_cm
    dims = [*sorted((x, y), reverse=True), z][: 3 if rng.random() < 0.3 else 2]
    return " x ".join(f"{d:.1f}" for d in dims) + " cm"


def _kind(lesion: Lesion, rng: np.random.Generator) -> str:
    if lesion.necrotic:
        return _pick(rng, ("rim-enhancing", "ring-enhancing", "peripherally enhancing necrotic"))
    if lesion.enhancing:
        return _pick(rng, ("enhancing", "avidly enhancing", "homogeneously enhancing"))
    return _pick(rng, ("non-enhancing", "T1-hypointense non-enhancing", "FLAIR-hyperintense non-enhancing"))


def _join_locations(lesions: list[Lesion]) -> str:
    words = [f"the {LOCATION_WORDS[loc]}" for loc in sorted({lesion.location for lesion in lesions})]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _lesion_sentence(lesion: Lesion, rng: np.random.Generator) -> str:
    loc, size, kind = LOCATION_WORDS[lesion.location], _size(lesion, rng), _kind(lesion, rng)
    noun = _pick(rng, ("lesion", "mass") if lesion.largest_cm >= 1.0 else ("lesion", "focus"))
    if lesion.oedema:
        oedema = _pick(
            rng,
            (", with surrounding vasogenic oedema", " with perilesional oedema", ", surrounded by oedema"),
        )
    else:
        oedema = _pick(rng, ("", ", without surrounding oedema", " with no perilesional oedema"))
    template = _pick(
        rng,
        (
            "There is a {size} {kind} {noun} in the {loc}{oedema}.",
            "{a_kind} {noun} measuring {size} is seen in the {loc}{oedema}.",
            "In the {loc} there is a {size} {kind} {noun}{oedema}.",
            "{Loc}: {kind} {noun}, {size}{oedema}.",
        ),
    )
    return template.format(
        size=size,
        kind=kind,
        noun=noun,
        loc=loc,
        oedema=oedema,
        a_kind=_capitalise(_article(kind)),
        Loc=_capitalise(loc),
    )


def _shift_sentence(lesion: Lesion | None, shift_mm: int, rng: np.random.Generator) -> str:
    if lesion is None:
        return _pick(
            rng, ("No midline shift.", "There is no midline shift.", "Midline structures are not displaced.")
        )
    loc = LOCATION_WORDS[lesion.location]
    away = "right" if lesion.location.startswith("left_") else "left"
    template = _pick(
        rng,
        (
            "There is {mm} mm of midline shift to the {away} from mass effect of the {loc} lesion.",
            "Mass effect from the {loc} lesion causes {mm} mm {away}ward midline shift.",
            "The {loc} lesion causes {mm} mm midline shift to the {away}.",
        ),
    )
    return template.format(mm=shift_mm, away=away, loc=loc)


_WMD = (
    "Scattered periventricular FLAIR hyperintensities, likely chronic small vessel ischaemic change.",
    "Mild periventricular white matter disease.",
    "Patchy periventricular FLAIR hyperintensities in keeping with small vessel disease.",
)
_NO_WMD = ("No significant white matter disease.", "No periventricular white matter signal abnormality.")
_NO_ENHANCEMENT = (
    "No abnormal enhancement.",
    "There is no abnormal intracranial enhancement.",
    "No pathological enhancement after contrast administration.",
)
_VENTRICLES = (
    "The ventricles are normal in size.",
    "Ventricles and sulci are normal in size and configuration.",
    "No hydrocephalus.",
)
_NORMAL_EXTRAS = (
    "No intracranial haemorrhage.",
    "Grey-white matter differentiation is preserved.",
    "The basal cisterns are patent.",
    "No extra-axial collection.",
    "The major intracranial flow voids are preserved.",
    "The orbits and paranasal sinuses are unremarkable.",
)
_NORMAL_IMPRESSIONS = (
    "Normal MRI of the brain.",
    "No acute intracranial abnormality.",
    "Unremarkable contrast-enhanced MRI of the brain.",
    "No intracranial mass or abnormal enhancement.",
)
_NO_MASS = ("No mass lesion.", "No focal parenchymal signal abnormality.", "No intracranial mass.")
_WMD_IMPRESSIONS = (
    "Chronic small vessel ischaemic change.",
    "Mild white matter disease.",
    "Periventricular small vessel disease.",
)


def _number(count: int) -> str:
    return _NUMBERS[count] if count < len(_NUMBERS) else str(count)


def _cavity_sentence(cavity: tuple[str, float], rng: np.random.Generator) -> str:
    location, diameter_cm = cavity
    template = _pick(
        rng,
        (
            "Postoperative changes with a {size:.1f} cm resection cavity in the {loc}.",
            "Status post resection in the {loc}, with a small CSF-filled cavity.",
            "There is a resection cavity in the {loc} from prior surgery.",
        ),
    )
    return template.format(size=diameter_cm, loc=LOCATION_WORDS[location])


def _findings_section(
    lesions: list[Lesion],
    white_matter_disease: bool,
    cavity: tuple[str, float] | None,
    shift_mm: int,
    rng: np.random.Generator,
) -> list[str]:
    """FINDINGS sentences: lesions first, then mass effect, other findings and a varying set of normals."""
    sentences = []
    if len(lesions) > 1 and rng.random() < 0.5:
        sentences.append(f"There are {_number(len(lesions))} lesions, in {_join_locations(lesions)}.")
    sentences += [_lesion_sentence(lesion, rng) for lesion in lesions]
    if not lesions:
        sentences.append(_pick(rng, _NO_MASS))
    if not any(lesion.enhancing for lesion in lesions) and (not lesions or rng.random() < 0.5):
        sentences.append(_pick(rng, _NO_ENHANCEMENT))
    if cavity is not None:
        sentences.append(_cavity_sentence(cavity, rng))
    if white_matter_disease:
        sentences.append(_pick(rng, _WMD))
    elif rng.random() < 0.4:
        sentences.append(_pick(rng, _NO_WMD))
    shifter = midline_shift_lesion(lesions)
    if shifter is not None or rng.random() < 0.8:
        sentences.append(_shift_sentence(shifter, shift_mm, rng))
    if shifter is None and rng.random() < 0.7:
        sentences.append(_pick(rng, _VENTRICLES))
    extras = rng.choice(len(_NORMAL_EXTRAS), size=int(rng.integers(0, 4)), replace=False)
    sentences += [_NORMAL_EXTRAS[i] for i in sorted(extras)]
    return sentences


def _impression_line(lesion: Lesion, rng: np.random.Generator) -> str:
    loc, kind = LOCATION_WORDS[lesion.location], _kind(lesion, rng)
    noun = _pick(rng, ("lesion", "mass") if lesion.largest_cm >= 1.0 else ("lesion", "focus"))
    oedema = _pick(rng, (" with oedema", " with surrounding oedema")) if lesion.oedema else ""
    if lesion.necrotic:
        ddx = _pick(rng, (", concerning for high-grade glioma", ", most likely a high-grade neoplasm", ""))
    elif lesion.enhancing:
        ddx = _pick(rng, (", differential includes metastasis", ", likely neoplastic", ""))
    else:
        ddx = _pick(rng, (", possibly a low-grade glioma", ", likely a low-grade neoplasm", ""))
    template = _pick(
        rng,
        (
            "{Kind} {noun} in the {loc}{oedema}{ddx}.",
            "{size} {kind} {noun} in the {loc}{ddx}.",
            "{Loc} {kind} {noun}{oedema}{ddx}.",
        ),
    )
    return template.format(
        Kind=_capitalise(kind),
        kind=kind,
        noun=noun,
        loc=loc,
        Loc=_capitalise(loc),
        oedema=oedema,
        ddx=ddx,
        size=_size(lesion, rng),
    )


def _impression(
    lesions: list[Lesion],
    white_matter_disease: bool,
    cavity: tuple[str, float] | None,
    shift_mm: int,
    rng: np.random.Generator,
) -> str:
    """IMPRESSION: a normal statement, or one line per lesion (or a summary) plus the other findings."""
    if not lesions:
        return _pick(rng, _NORMAL_IMPRESSIONS)
    if len(lesions) > 1 and rng.random() < 0.4:
        largest = max(lesions, key=lambda lesion: lesion.largest_cm)
        lines = [
            f"{_capitalise(_number(len(lesions)))} lesions involving {_join_locations(lesions)}, the largest "
            f"measuring {_size(largest, rng)} in the {LOCATION_WORDS[largest.location]}."
        ]
    else:
        lines = [_impression_line(lesion, rng) for lesion in lesions]
    shifter = midline_shift_lesion(lesions)
    if shifter is not None:
        lines.append(f"{shift_mm} mm midline shift from the {LOCATION_WORDS[shifter.location]} lesion.")
    if cavity is not None:
        lines.append(f"Postoperative changes in the {LOCATION_WORDS[cavity[0]]}.")
    if white_matter_disease:
        lines.append(_pick(rng, _WMD_IMPRESSIONS))
    if rng.random() < (0.6 if len(lines) > 1 else 0.1):
        return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, start=1))
    return " ".join(lines)


def write_report(
    lesions: list[Lesion],
    *,
    white_matter_disease: bool,
    cavity: tuple[str, float] | None,
    shift_mm: int,
    rng: np.random.Generator,
) -> str:
    """The report of one study: optional EXAMINATION/TECHNIQUE lines, then FINDINGS and IMPRESSION.

    ``cavity`` is ``(location, diameter_cm)`` of a resection cavity (prior surgery); ``shift_mm`` is the
    midline shift drawn into the image when the midline-shift rule fires.
    """
    header = []
    if rng.random() < 0.3:
        header.append("EXAMINATION: MRI brain with and without contrast.")
    if rng.random() < 0.3:
        header.append("TECHNIQUE: Axial FLAIR and post-contrast T1-weighted images.")
    findings = " ".join(_findings_section(lesions, white_matter_disease, cavity, shift_mm, rng))
    impression = _impression(lesions, white_matter_disease, cavity, shift_mm, rng)
    sections = [*header, f"FINDINGS:\n{findings}", f"IMPRESSION:\n{impression}"]
    return "\n\n".join(sections)
