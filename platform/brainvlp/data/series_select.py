"""Choosing one series per sequence from a DICOM study's series by their descriptions (brat section 8.1).

brat kept each visit's T1 post-contrast series, found by "a long, clinician-validated list of keywords"
of over 50 expressions "such as 'Axial T1 post SENSE' or 'Ax T1 POST'". That list is not published:
``BRAT_T1C_PATTERNS`` is ours, not brat's, written from common Siemens, GE and Philips naming to cover
those two examples and their usual variants. Audit it against a site's own export (count the distinct
series descriptions first) before trusting it there.

Method. A :class:`SelectionRule`'s ``patterns`` are regular expressions searched, case-insensitively, in
each series' SeriesDescription and in its ProtocolName, after lowercasing and turning underscores into
spaces (``dicom.match_text``: Siemens' "t1_mprage_tra_post" then reads as words, so ``\\b`` works). A
match of any ``exclude`` expression vetoes the series (pre-contrast, subtractions, perfusion, maps). The
optional ``contrast`` filter needs a recorded contrast agent (True) or its absence (False); many sites never
fill that field, so the default T1c rule relies on names alone. ``acquisition`` filters on
MRAcquisitionType. Localisers and single-slice series are never chosen. Among the candidates the thinnest
slices win, then the most slices (``prefer="most_slices"``: the reverse), then the lower series number:
the full-resolution diagnostic series rather than a thick reformat.

Limits. Names are all it knows: a T1 post-contrast series described only as "AX SE" is not found, and one
series can be chosen for two sequences if their rules overlap (the default rules exclude each other's
names). Reasons name series by description, number and uid hash (``SeriesInfo.label``), never PHI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

from brainvlp.data.dicom import SeriesInfo, match_text

Acquisition = Literal["2D", "3D"]
Prefer = Literal["thinnest", "most_slices"]

# Tokens for "with contrast": post (not post-op), +C / C+, gad / gado / gd, contrast, CE, w/ C, KM (German
# Kontrastmittel), MDC (Italian mezzo di contrasto), enhanced.
_WITH_CONTRAST = (
    r"(\bpost(?! ?-?op)|\+ ?c\b|\bc ?\+|\bgad|\bgd\b|\bcontrast|\bce\b|\bw/ ?c\b|\bkm\b|\bmdc\b|\benh)"
)
BRAT_T1C_PATTERNS: tuple[str, ...] = (
    r"\bt1.*"
    + _WITH_CONTRAST,  # "Ax T1 POST", "Axial T1 post SENSE", "T1 +C", "t1_se_tra_KM", "T1W_3D_TFE_GD"
    r"(\bpost(?! ?-?op)|\+ ?c\b|\bgad|\bgd\b|\bcontrast).*\bt1",  # "POST T1 AX", "Gad T1 FS", "+C T1"
    r"\bmp ?-?rage.*" + _WITH_CONTRAST,  # Siemens "MPRAGE post", "t1_mprage_sag_gd"
    r"\b(f?spgr|bravo|ir ?-?f?spgr)\b.*" + _WITH_CONTRAST,  # GE "Ax BRAVO +C", "3D SPGR POST"
    r"\b(vibe|tfe|thrive|cube|space)\b.*" + _WITH_CONTRAST,  # 3D gradient / fast spin echo, any vendor
    r"\bt1.*\bsense\b.*\bpost",  # Philips "T1 SENSE post" (brat's example)
    r"\bax(ial)? ?t1 ?post",  # "Ax T1 POST", "AXIAL T1POST" (brat's example)
    r"\b3d ?t1 ?\+ ?c",  # "3D T1 +C"
    r"\bpost ?-?(gad|gd|gado|contrast)\b",  # "Post Gad Ax", "post-contrast sag"
)
# Not a plain post-contrast volume: pre-contrast, without contrast, subtractions, projections, dynamic or
# perfusion series, angiography, diffusion, parameter maps; T2-weighted and FLAIR post-contrast series.
_NOT_T1C = (
    r"\bpre\b",
    r"\bw/ ?o\b",
    r"\bwithout\b",
    r"\bnon ?-?(con|contrast)\b",
    r"\b(sub|subtraction|mip|mpr reformat)\b",
    r"\b(perf|perfusion|dsc|dce|dyn|dynamic)\b",
    r"\b(mra|tof|angio)\b",
    r"\b(dwi|diff|adc|trace|swi)\b",
    r"\bmap\b",
    r"\bt2",
    r"^(?!.*\bt1).*flair",
)
_NOT_ANATOMY = (r"\b(sub|mip|map|perf|perfusion|dwi|diff|adc|trace|tof|angio)\b",)
# FLAIR and T2* (gradient echo, susceptibility) are T2-weighted too, but other sequences.
_NOT_T2 = (
    r"flair",
    r"dark ?-?fluid",
    r"\bt2 ?\*",
    r"\bstar\b",
    r"\b(swi|swan|gre|ffe|hemo)\b",
    r"\bt1",
    *_NOT_ANATOMY,
)


@dataclass(frozen=True)
class SelectionRule:
    """How one sequence's series is recognised; plain types so that it can sit in an ingest spec."""

    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    contrast: bool | None = None  # True: a contrast agent must be recorded; False: must not be
    acquisition: Acquisition | None = None
    prefer: Prefer = "thinnest"

    def __post_init__(self) -> None:
        # Specs arrive from YAML as lists: store tuples (hashable, comparable), and fail on a bad pattern now
        # rather than on the first study.
        for name in ("patterns", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise ValueError(f"{name} must be a list of regular expressions, not one string")
            object.__setattr__(self, name, tuple(value))
            for pattern in getattr(self, name):
                try:
                    re.compile(pattern)
                except re.error as err:
                    raise ValueError(f"{name}: {pattern!r} is not a regular expression ({err})") from None
        if not self.patterns:
            raise ValueError("patterns must hold at least one regular expression")
        if self.acquisition not in (None, *get_args(Acquisition)):
            raise ValueError(f"acquisition must be one of {get_args(Acquisition)} or None")
        if self.prefer not in get_args(Prefer):
            raise ValueError(f"prefer must be one of {get_args(Prefer)}, got {self.prefer!r}")


DEFAULT_RULES: Mapping[str, SelectionRule] = MappingProxyType(
    {
        "t1c": SelectionRule(patterns=BRAT_T1C_PATTERNS, exclude=_NOT_T1C),
        "t1": SelectionRule(
            patterns=(r"\bt1", r"\bmp ?-?rage\b", r"\b(f?spgr|bravo)\b"),
            exclude=(*BRAT_T1C_PATTERNS, r"\bt2", r"\bt1 ?rho\b", *_NOT_ANATOMY),
            contrast=False,
        ),
        "t2": SelectionRule(
            patterns=(r"\bt2",),
            exclude=_NOT_T2,
        ),
        "flair": SelectionRule(patterns=(r"flair", r"dark ?-?fluid"), exclude=(r"\bt1", *_NOT_ANATOMY)),
    }
)


def _matches(patterns: tuple[str, ...], series: SeriesInfo) -> bool:
    texts = (match_text(series.description), match_text(series.protocol))
    return any(re.search(p, text, re.IGNORECASE) for p in patterns for text in texts)


def _rank_key(series: SeriesInfo, prefer: Prefer) -> tuple[float, ...]:
    thickness = series.slice_thickness if series.slice_thickness is not None else float("inf")
    number = series.number if series.number is not None else float("inf")
    if prefer == "thinnest":
        return (thickness, -series.num_slices, number, series.index)
    return (-series.num_slices, thickness, number, series.index)


def _choose(series: list[SeriesInfo], rule: SelectionRule) -> tuple[SeriesInfo | None, str]:
    named = [s for s in series if _matches(rule.patterns, s) and not _matches(rule.exclude, s)]
    if not named:
        return None, f"no series name matched ({len(series)} series in the study)"
    dropped: list[str] = []
    candidates = []
    for s in named:
        if s.localizer:
            dropped.append("localiser")
        elif s.num_slices < 2:
            dropped.append("single slice")
        elif rule.contrast is not None and s.contrast != rule.contrast:
            dropped.append("contrast agent recorded" if s.contrast else "no contrast agent recorded")
        elif rule.acquisition is not None and s.acquisition != rule.acquisition:
            dropped.append(f"acquisition {s.acquisition or 'unknown'}")
        else:
            candidates.append(s)
    if not candidates:
        why = ", ".join(f"{dropped.count(d)} {d}" for d in dict.fromkeys(dropped))
        return None, f"{len(named)} series matched by name, none usable ({why})"
    chosen = min(candidates, key=lambda s: _rank_key(s, rule.prefer))
    thickness = (
        f"{chosen.slice_thickness:g} mm" if chosen.slice_thickness is not None else "thickness unknown"
    )
    basis = f"thinnest {thickness}" if rule.prefer == "thinnest" else f"most slices {chosen.num_slices}"
    if len(candidates) == 1:
        basis = f"{thickness}, {chosen.num_slices} slices"
    count = f"{len(candidates)} candidate{'s' if len(candidates) > 1 else ''}"
    return chosen, f"matched {chosen.label} ({count}; {basis})"


def select_series(
    series: list[SeriesInfo], rules: Mapping[str, SelectionRule] = DEFAULT_RULES
) -> dict[str, tuple[SeriesInfo | None, str]]:
    """Per sequence name, the series chosen (None when none fits) and a short reason naming no PHI."""
    return {name: _choose(series, rule) for name, rule in rules.items()}
