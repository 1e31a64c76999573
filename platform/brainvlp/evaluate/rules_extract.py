"""Findings from real brain-MRI report text by rules: the ``"rules"`` extractor of ``evaluate.clinical``.

Real reports, unlike the phantom's (``phantom.extract``), cannot be read back exactly; these rules read them
into the ``brainvlp.findings`` schema so that generated reports can be scored GREEN-style without a judge
model. Like the phantom reader, ``extract_rule_findings`` never raises on a string, stays linear-time on
garbage (input cut at ``MAX_CHARS``, bounded regex gaps, fixed word windows) and ignores what it does not
recognise.

Method. FINDINGS, IMPRESSION and ADDENDUM are read when the report has such headers (``brainvlp.sections``),
else everything but HISTORY, TECHNIQUE and COMPARISON up to their first blank line (an indication "?
metastases" states nothing). Negation is NegEx (Chapman et al. 2001), simplified: a trigger ("no", "not",
"without", "negative for", "absence of", "free of", "no evidence of", ...) negates the next
``NEGATION_WINDOW`` words (commas do not stop it: "no mass, haemorrhage or shift"), a trailing one ("not
seen", "absent", "resolved") its clause back to a comma; "but", "however", "except" and a colon end the
scope; "no (interval) change", "no increase", "not only" negate nothing. Per sentence:

- it *describes a lesion* when a lesion noun (lesion, mass, tumour, metastasis, focus, nodule, glioma,
  neoplasm, deposit, abnormality, abnormal/nodular/ring... enhancement) is not negated ("mass effect" is no
  lesion). A white-matter-disease sentence counts only tumour nouns ("white matter lesions" are none), a
  post-operative one only with residual, recurrent, progressive or new disease (a cavity is no lesion).
- ``locations``: non-negated regions of lesion sentences with their side: "left frontal lobe", "bilateral
  frontal lobes", "left and right temporal", "right frontal and parietal" (both lobes right), "frontal lobe
  on the left". A lobe without a side is no location (the schema has none) but is still supratentorial.
- ``side``: the side with more distinct lateralised regions (the schema's side with more lesions, without
  counting lesions), bilateral on a tie, "NA" for infratentorial lesions only (the phantom's rule).
- ``tumor_location``: supratentorial (lobes, deep grey matter, hemisphere, insula, corpus callosum),
  infratentorial (cerebellum, brainstem, posterior fossa), the words themselves, or transtentorial.
- ``lesion_count_bucket``: a number before plural lesion nouns ("three lesions", "more than 15 metastases")
  wins; else "multiple"/"several"/a bare plural give 2-6, "numerous"/"innumerable" >15, and singular
  descriptions count the distinct places they name (a sentence opening "The"/"This" names none new).
- ``largest_mass_bucket``: the largest dimension printed in lesion sentences ("3.2 x 2.1 cm", "12 mm"; not
  a midline shift's millimetres), with the phantom's boundaries; "subcentimetre" alone gives "<1cm".
- ``enhancing_lesion``: true for a non-negated "enhancing"/"enhancement" (not "non-enhancing") in a lesion
  sentence; false when nothing enhances and an enhancement is negated or a lesion is non-enhancing.
- ``midline_shift`` (midline near shift/displaced/deviated, subfalcine herniation, midline "not central"),
  ``white_matter_disease`` (white matter disease/changes/hyperintensities, small vessel disease,
  leukoaraiosis, microangiopathy, Fazekas grade) and ``prior_surgery`` (resection, post-operative,
  craniotomy, surgical cavity, "status post" but not of radiotherapy): true if stated anywhere, else false
  if negated.

Keys the text says nothing about are left out (unknown), except that a plainly normal statement ("No
intracranial mass.", "No acute intracranial abnormality.", "Normal MRI of the brain.") in a report without
lesion sentences gives count "none", size, side and tumour location "NA", no locations and no enhancement.
Limits: hedges ("cannot be excluded") read as present; any lesion counts, an infarct described as a lesion
too; a lesion named again elsewhere may be counted twice, two lesions in one region once; a size in a
lesion sentence is taken for the lesion's; side words after the region are read only as "on the left".
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Any

from brainvlp.sections import SECTION_ALIASES

MAX_CHARS = 20_000  # the longest real report is a few thousand characters; more is garbage to cap
NEGATION_WINDOW = 6  # NegEx's scope, in words
_POST_WINDOW = 10  # a trailing trigger negates its clause: "previously seen ... lesion ... has resolved"
_SIDE_REACH = 4  # a side word names a region at most this many words on ("left posterior frontal lobe")
_INHERIT_REACH = 3  # "right frontal and parietal": the second region takes the first one's side

_SECTION_OF = {alias: name for name, aliases in SECTION_ALIASES.items() for alias in aliases}
_HEADERS = sorted(_SECTION_OF, key=len, reverse=True)
# A header opens a line and ends in a colon or the line: "FINDINGS:", "Impression :", "FINDINGS\n".
_HEADER = re.compile(
    r"^[ \t]*(" + "|".join(r"[ \t]+".join(map(re.escape, h.split())) for h in _HEADERS) + r")[ \t]*(?::|$)",
    re.IGNORECASE | re.MULTILINE,
)
_READ, _UNREAD = {"findings", "impression", "addendum"}, {"history", "technique", "comparison"}
_TOKEN = re.compile(r"[a-z][a-z0-9]*|\d+(?:\.\d+)?|[:<>,]")
_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_NUMBERING = re.compile(r"^\d{1,3}[.)]\s+")

# Longest first, so that "no evidence of" governs the words after "of", not "evidence of".
_PRE_TRIGGERS = [tuple(t.split()) for t in ("no evidence of", "no signs of", "no longer", "negative for")]
_PRE_TRIGGERS += [tuple(t.split()) for t in ("absence of", "free of", "without", "no", "not", "neither")]
_PRE_TRIGGERS += [("nor",), ("never",)]
# "No (significant) change in the mass" and "not only" negate nothing (NegEx's pseudo-negations).
_PSEUDO = {"change", "changes", "increase", "decrease", "difference", "growth", "enlargement", "only"}
_PSEUDO_MODIFIERS = {"significant", "interval", "appreciable", "substantial", "definite", "further"}
_SEEN = {"seen", "identified", "visualised", "visualized", "demonstrated", "present", "evident", "detected"}
_SEEN |= {"appreciated", "visible"}
_POST_TRIGGERS = {"absent", "resolved"}
_TERMINATORS = {"but", "however", "although", "though", "except", "whereas", "yet", "apart", "aside", ":"}

_TUMOUR = {"mass", "masses", "tumour", "tumours", "tumor", "tumors", "metastasis", "metastases"}
_TUMOUR |= {"glioma", "gliomas", "glioblastoma", "neoplasm", "neoplasms", "nodule", "nodules"}
_TUMOUR |= {"deposit", "deposits", "meningioma", "meningiomas"}
_WEAK = {"lesion", "lesions", "focus", "foci"}  # also name white matter disease and scars
_PLURAL = ({w for w in _TUMOUR | _WEAK if w.endswith("s")} - {"mass", "metastasis", "focus"}) | {"foci"}
_CONTEXT = {"abnormality", "abnormalities"}
_ENHANCE = {"enhancing", "enhancement", "enhances", "enhance"}  # not "enhanced": "contrast-enhanced MRI"
_ABNORMAL = {"abnormal", "pathological", "pathologic", "nodular", "ring", "rim", "focal", "solid", "avid"}
_ABNORMAL |= {"avidly", "heterogeneous", "heterogeneously", "homogeneous", "homogeneously", "peripheral"}
_ABNORMAL |= {"peripherally", "leptomeningeal", "patchy", "irregular", "intense", "intensely", "enhancing"}
_QUALIFIED = re.compile(r"\b(?:new|other|additional|further|another|remaining)\b")
_ANAPHORA = {"the", "this", "these", "it", "that"}
_MORE = {"another", "second", "third", "additional"}

_NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_NUMBER_WORDS = {word: number for number, word in enumerate(_NUMBERS, start=1)}
_VAGUE = {"multiple": 2, "several": 2, "few": 2, "numerous": 16, "innumerable": 16, "countless": 16}
_VAGUE |= {"myriad": 16, "multiplicity": 2}
_COUNT_BLOCKERS = {"mm", "cm", "x", "by", "of", "<", ">", ":"}

_SIDE_WORDS = {"left": ("left",), "right": ("right",), "bilateral": ("left", "right")}
_SIDE_WORDS |= {"bilaterally": ("left", "right"), "both": ("left", "right")}
_LOBE = re.compile(r"(?:fronto|parieto|temporo|occipito){0,3}(?:front|pariet|tempor|occipit)(?:al|o)")
_LOBE_STEM = re.compile(r"front|pariet|tempor|occipit")
_LOBE_NAMES = {"front": "frontal", "pariet": "parietal", "tempor": "temporal", "occipit": "occipital"}
_NOT_LOBE = {"horn", "horns", "bone", "bones", "sinus", "sinuses", "artery", "arteries", "muscle", "squama"}
_DEEP, _SUPRA, _INFRA = "basal_ganglia_thalamus", "supratentorial", "infratentorial"
_REGION_WORDS = dict.fromkeys(("thalamus", "thalami", "thalamic", "putamen", "caudate", "lentiform"), _DEEP)
_REGION_WORDS |= dict.fromkeys(("cerebellum", "cerebellar", "vermis", "vermian"), "cerebellum")
_REGION_WORDS |= dict.fromkeys(("brainstem", "pons", "pontine", "midbrain", "medulla"), "brainstem")
_REGION_WORDS |= dict.fromkeys(("insula", "insular", "callosum", "hemisphere", "hemispheres"), _SUPRA)
_REGION_WORDS |= {"hemispheric": _SUPRA, "supratentorial": _SUPRA, "infratentorial": _INFRA}
_AFTER = {"ganglia": ("basal", _DEEP), "ganglion": ("basal", _DEEP), "stem": ("brain", "brainstem")}
_AFTER |= {"fossa": ("posterior", _INFRA)}
_INFRA_REGIONS = {"cerebellum", "brainstem", _INFRA}

_NUM = r"\d{1,3}(?:\.\d{1,2})?"
_SIZE = re.compile(rf"(?<![\d.]){_NUM}(?:\s?(?:cm|mm))?(?:\s?(?:x|×|by)\s?{_NUM}(?:\s?(?:cm|mm))?){{0,2}}")
_UNIT = re.compile(r"(cm|mm)$")
_SHIFT_AFTER = re.compile(r"\W{0,3}(?:of\s+)?(?:\w+ward\s+)?(?:midline|shift)")
_SUBCM = re.compile(r"\bsub-?centimet(?:er|re)\b")
_NORMAL = re.compile(
    r"\b(?:no|without|negative\s+for)\s+(?:evidence\s+of\s+)?(?:(?:acute|focal|intracranial|parenchymal|"
    r"significant|definite|discrete|abnormal|suspicious|signal|space-occupying|mass|metastatic)\s+){0,4}"
    r"(?:mass|masses|lesions?|tumou?rs?|abnormalit(?:y|ies)|metastas[ie]s|disease)\b"
    r"|\b(?:normal|unremarkable)\s+(?:[\w-]+\s+){0,3}?(?:mri|mr|study|examination|exam|scan)\b"
    r"|\b(?:brain|parenchyma)\s+(?:is|appears)\s+(?:normal|unremarkable)\b"
)
_WMD = re.compile(
    r"\bwhite[\s-]+matter\s+(?:[a-z]+\s+){0,2}?(?:hyperintens\w*|disease|changes?|lesions?|abnormalit\w*|"
    r"ischa?emi\w*|foci)|\bsmall[\s-]+vessel\s+(?:[a-z]+\s+){0,2}?(?:disease|changes?|ischa?emi\w*)"
    r"|\bleu?koaraiosis|\bmicroangiopath\w*|\bmicrovascular\s+(?:ischa?emic\s+)?(?:disease|changes?)"
    r"|\bperiventricular\s+(?:flair\s+|t2\s+)?hyperintens\w*|\bfazekas\b"
)
_FAZEKAS_ZERO = re.compile(r"\bfazekas\s+(?:grade\s+|score\s+)?0\b")
_SURGERY = re.compile(
    r"\bresect\w*|\bpost-?\s?operative|\bpost-?\s?surgical|\bcranio(?:tomy|ctomy|plasty)\b"
    r"|\b(?:surgical|operative)\s+(?:cavity|bed|changes?|defect)|\b(?:prior|previous)\s+surgery\b"
    r"|\bstatus\s+post\b|\bs/p\b|\bburr\s+holes?\b|\bdebulking\b"
)
_NOT_SURGERY = re.compile(r"\W{1,3}(?:[a-z-]+\W{1,3}){0,2}?(?:radi|chemo|gamma|proton|srs\b)")
_ACTIVE = re.compile(r"\b(?:residual|recurren\w*|progressi\w*|new)\b")


@dataclass(frozen=True)
class _Sentence:
    """One lower-case sentence, its words (with their offsets) and which of them are negated."""

    text: str
    words: list[str]
    starts: list[int]
    negated: list[bool]

    def span_negated(self, start: int, end: int) -> bool:
        """Whether any word overlapping text[start:end] is negated."""
        first, last = max(bisect_right(self.starts, start) - 1, 0), bisect_left(self.starts, end)
        return any(self.negated[first:last])


def _reading(text: str) -> str:
    """The text to read: FINDINGS/IMPRESSION/ADDENDUM when present, else all but history, technique and
    comparison (each up to its first blank line)."""
    headers = list(_HEADER.finditer(text))
    if not headers:
        return text
    spans = [("preamble", 0, headers[0].start())]
    ends = [header.start() for header in headers[1:]] + [len(text)]
    for header, end in zip(headers, ends, strict=True):
        spans.append((_SECTION_OF.get(" ".join(header[1].lower().split()), ""), header.end(), end))
    read = [text[start:end] for name, start, end in spans if name in _READ]
    if read:
        return "\n".join(read)
    # No FINDINGS header: an unread section (the history) runs only to its first blank line.
    parts = []
    for name, start, end in spans:
        body = text[start:end]
        if name in _UNREAD:
            rest = _PARAGRAPH.split(body, maxsplit=1)
            body = rest[1] if len(rest) == 2 else ""
        parts.append(body)
    return "\n".join(parts)


def _mark(flags: list[bool], words: list[str], index: int, step: int) -> None:
    """Negate words from ``index`` on in direction ``step`` up to a terminator: NEGATION_WINDOW words
    forwards across commas ("no mass, haemorrhage or hydrocephalus"), _POST_WINDOW back to a comma."""
    left = NEGATION_WINDOW if step > 0 else _POST_WINDOW
    while left and 0 <= index < len(words) and words[index] not in _TERMINATORS:
        if words[index] == ",":
            if step < 0:
                return
        else:
            flags[index], left = True, left - 1
        index += step


def _negation(words: list[str]) -> list[bool]:
    flags = [False] * len(words)
    for i, word in enumerate(words):
        for trigger in _PRE_TRIGGERS:
            if tuple(words[i : i + len(trigger)]) == trigger:
                end = i + len(trigger)
                after = [w for w in words[end : end + 3] if w not in _PSEUDO_MODIFIERS]
                if not (after and after[0] in _PSEUDO):
                    _mark(flags, words, end, 1)
                break
        if word in _POST_TRIGGERS:
            _mark(flags, words, i - 1, -1)
        elif word in _SEEN and i > 0 and words[i - 1] in ("not", "longer"):
            _mark(flags, words, i - 2, -1)
    return flags


def _sentences(text: str) -> list[_Sentence]:
    """Sentences end at a line break or at . ! ? ; before white space (decimal points keep sizes whole)."""
    lines = (_NUMBERING.sub("", line.strip()) for line in text.lower().splitlines())
    sentences = []
    for piece in (p.strip() for line in lines for p in re.split(r"(?<=[.!?;])\s+", line)):
        tokens = list(_TOKEN.finditer(piece))
        if tokens:
            words = [token[0] for token in tokens]
            sentences.append(_Sentence(piece, words, [t.start() for t in tokens], _negation(words)))
    return sentences


def _region_names(words: list[str], i: int) -> list[str]:
    """The regions word ``i`` names: lobes ("frontoparietal" is two), deep grey matter, cerebellum, ..."""
    word = words[i]
    after = words[i + 1] if i + 1 < len(words) else ""
    if _LOBE.fullmatch(word) and after not in _NOT_LOBE:
        return [_LOBE_NAMES[stem] for stem in _LOBE_STEM.findall(word)]
    if word in _AFTER:
        before, region = _AFTER[word]
        return [region] if i > 0 and words[i - 1] == before else []
    if word.startswith("hemispher") and i > 0 and words[i - 1] == "cerebellar":
        return []  # "cerebellar hemisphere": the cerebellum, named by the word before
    return [_REGION_WORDS[word]] if word in _REGION_WORDS else []


def _regions(s: _Sentence) -> list[tuple[str, frozenset[str]]]:
    """(region, sides) for each non-negated region the sentence names; sides empty when none is given."""
    found, pending, last_index, last_sides = [], [], -10, frozenset[str]()
    for i, word in enumerate(s.words):
        if word in _SIDE_WORDS:
            pending.append((i, _SIDE_WORDS[word]))
            continue
        names = _region_names(s.words, i)
        if not names:
            continue
        sides = frozenset(side for j, named in pending if i - j <= _SIDE_REACH for side in named)
        if not sides and i - last_index <= _INHERIT_REACH:
            sides = last_sides
        after = " ".join(s.words[i + 1 : i + 6])  # "frontal lobe on the left"
        if not sides:
            sides = frozenset(side for side in ("left", "right") if f"on the {side}" in after)
        pending, last_index, last_sides = [], i, sides
        if not s.negated[i]:
            found += [(name, sides) for name in names]
    return found


def _enhancement(s: _Sentence, has_tumour: bool) -> tuple[bool, bool]:
    """(an enhancing lesion is stated, an enhancement is negated or a lesion called non-enhancing)."""
    positive = negative = False
    for i, word in enumerate(s.words):
        non = word == "nonenhancing" or (word in _ENHANCE and i > 0 and s.words[i - 1] == "non")
        if non and has_tumour:
            negative = True
        if word not in _ENHANCE or non:
            continue
        if s.negated[i]:
            negative = True
        elif has_tumour or _ABNORMAL.intersection(s.words[max(i - 2, 0) : i]):
            positive = True
    return positive, negative and not _QUALIFIED.search(s.text)


def _lesion_nouns(s: _Sentence) -> list[int]:
    """Indices of the non-negated nouns by which the sentence describes a lesion (module docstring)."""
    if _SURGERY.search(s.text) and not _ACTIVE.search(s.text):
        return []
    weak_ok = _WMD.search(s.text) is None
    nouns = []
    for i, word in enumerate(s.words):
        if s.negated[i] or (word == "mass" and s.words[i + 1 : i + 2] == ["effect"]):
            continue
        abnormal = word == "enhancement" and _ABNORMAL.intersection(s.words[max(i - 2, 0) : i])
        if word in _TUMOUR or abnormal or (weak_ok and (word in _WEAK or word in _CONTEXT)):
            nouns.append(i)
    return nouns


def _explicit_count(s: _Sentence, nouns: list[int]) -> int | None:
    """The largest number or quantifier put before a lesion noun ("three lesions", "numerous foci")."""
    counts = []
    for i in nouns:
        for j in range(max(i - 4, 0), i):
            word = s.words[j]
            if any(w in _COUNT_BLOCKERS for w in s.words[j + 1 : i]) or s.negated[j]:
                continue
            number = _NUMBER_WORDS.get(word, int(word) if word.isdigit() and len(word) < 4 else None)
            if number is not None and (s.words[i] in _PLURAL or number == 1):
                more = s.words[max(j - 2, 0) : j] in (["more", "than"], ["greater", "than"]) or (
                    j > 0 and s.words[j - 1] in (">", "over")
                )
                counts.append(number + more)
            elif word in _VAGUE and s.words[i] in _PLURAL:
                counts.append(_VAGUE[word])
    return max(counts, default=None)


def _largest_cm(s: _Sentence) -> float | None:
    """The largest dimension printed in the sentence, in cm; a midline shift's millimetres are not one."""
    largest = None
    for match in _SIZE.finditer(s.text):
        unit = _UNIT.search(match[0])
        if unit is None or _SHIFT_AFTER.match(s.text, match.end()):
            continue
        values = [float(v) / (10 if unit[1] == "mm" else 1) for v in re.findall(_NUM, match[0])]
        values = [value for value in values if 0 < value < 30]  # 30 cm and more is no brain lesion
        largest = max([*values, *([] if largest is None else [largest])], default=None)
    if largest is None and _SUBCM.search(s.text):
        largest = 0.9
    return largest


def _stated(s: _Sentence, pattern: re.Pattern[str], unless: re.Pattern[str] | None = None) -> bool | None:
    """True when the sentence states the pattern un-negated, False when only negated, None when neither;
    a match that ``unless`` continues does not count ("status post radiotherapy" is no surgery)."""
    spans = [m.span() for m in pattern.finditer(s.text) if not (unless and unless.match(s.text, m.end()))]
    return None if not spans else not all(s.span_negated(*span) for span in spans)


def _midline(s: _Sentence) -> bool | None:
    """Whether the sentence states a midline shift ("not central" is one), None when it says nothing."""
    states = []
    for i, word in enumerate(s.words):
        if word == "subfalcine" and s.words[i + 1 : i + 2] == ["herniation"]:
            states.append(not s.negated[i])
        # Only "midline" and its verb decide: "midline shift, without hydrocephalus" is a shift.
        for k in range(max(i - 4, 0), min(i + 5, len(s.words))) if word == "midline" else ():
            if s.words[k].startswith(("shift", "displace", "deviat")):
                states.append(not (s.negated[i] or s.negated[k]))
                break
            if s.words[k] in ("central", "maintained", "preserved", "normal"):
                states.append(s.negated[k])
                break
    return None if not states else any(states)


def _merge(old: bool | None, new: bool | None) -> bool | None:
    """A statement anywhere that the finding is present wins over negated mentions elsewhere."""
    return new if old is None else old or bool(new)


def _bucket(count: int) -> str:
    return ("none", "one")[count] if count <= 1 else "2-6" if count <= 6 else "7-15" if count <= 15 else ">15"


def _mass_bucket(largest_cm: float) -> str:
    """The phantom's boundaries (``phantom.reports._mass_bucket``): below 1 cm, 1 to 2 cm inclusive, above."""
    return "<1cm" if largest_cm < 1.0 else "1-2cm" if largest_cm <= 2.0 else ">2cm"


def _is_normal(s: _Sentence) -> bool:
    """A plainly normal statement about the whole brain: not about one region, nor "no new lesion"."""
    if _NORMAL.search(s.text) is None or _QUALIFIED.search(s.text):
        return False
    return not any(_region_names(s.words, i) for i in range(len(s.words)))


@dataclass
class _Lesions:
    """What the lesion sentences of a report say, gathered sentence by sentence."""

    described: bool = False
    regions: set[tuple[str, frozenset[str]]] = field(default_factory=set)
    explicit: list[int] = field(default_factory=list)  # numbers put before lesion nouns
    estimates: list[int] = field(default_factory=list)  # lower bounds: a bare plural, "another"
    places: set[frozenset[tuple[str, frozenset[str]]]] = field(default_factory=set)
    singular: bool = False
    largest_cm: float | None = None
    enhancing: bool | None = None

    def add(self, s: _Sentence) -> None:
        nouns = _lesion_nouns(s)
        positive, negative = _enhancement(s, bool(nouns))
        self.enhancing = True if positive or self.enhancing else (False if negative else self.enhancing)
        if not nouns:
            return
        self.described, regions = True, _regions(s)
        self.regions.update(regions)
        count = _explicit_count(s, nouns)
        if count is not None:
            self.explicit.append(count)
        for i in (i for i in nouns if s.words[i] in _TUMOUR | _WEAK):
            if s.words[i] in _PLURAL:
                self.estimates.append(2)
                continue
            self.singular = True
            if _MORE.intersection(s.words[max(i - 3, 0) : i]):
                self.estimates.append(2)
            if s.words[0] not in _ANAPHORA:  # "The mass ..." names a lesion already counted
                self.places.add(frozenset(regions))
        size = _largest_cm(s)
        if size is not None and (self.largest_cm is None or size > self.largest_cm):
            self.largest_cm = size

    def count(self) -> int | None:
        """The explicit number if any, else the largest lower bound; None when only context nouns speak."""
        if self.explicit:
            return max(self.explicit)
        singular = max(len(self.places - {frozenset()}), 1) if self.singular else 0
        return max([*self.estimates, singular]) or None


def _lesion_findings(lesions: _Lesions) -> dict[str, Any]:
    """Location, side, tumour location, count and size of described lesions (keys left out if unknown)."""
    locations, sided, tentorial = set(), set(), set()
    for name, named_sides in lesions.regions:
        tentorial.add(_INFRA if name in _INFRA_REGIONS else _SUPRA)
        if name in _LOBE_NAMES.values():
            locations.update(f"{side}_{name}_lobe" for side in named_sides)
        elif name == _DEEP:
            locations.update(f"{side}_{name}" for side in named_sides)
        elif name in ("cerebellum", "brainstem"):
            locations.add(name)
        if name not in _INFRA_REGIONS:
            sided.update((side, name) for side in named_sides)
    found: dict[str, Any] = {}
    count = lesions.count()
    if count is not None:
        found["lesion_count_bucket"] = _bucket(count)
    if lesions.largest_cm is not None:
        found["largest_mass_bucket"] = _mass_bucket(lesions.largest_cm)
    left = sum(side == "left" for side, _ in sided)
    if sided:  # the side with more lesions, approximated by the one with more distinct regions
        found["side"] = (
            "bilateral" if 2 * left == len(sided) else "left" if 2 * left > len(sided) else "right"
        )
    elif tentorial == {_INFRA}:
        found["side"] = "NA"  # midline structures only, the phantom's rule
    if locations:
        found["locations"] = sorted(locations)
    if tentorial:
        found["tumor_location"] = "transtentorial" if len(tentorial) == 2 else tentorial.pop()
    return found


_NORMAL_FINDINGS = {"lesion_count_bucket": "none", "largest_mass_bucket": "NA", "side": "NA"}
_NORMAL_FINDINGS |= {"tumor_location": "NA"}
_KEY_ORDER = ("enhancing_lesion", "lesion_count_bucket", "largest_mass_bucket", "side", "locations")
_KEY_ORDER += ("midline_shift", "white_matter_disease", "prior_surgery", "tumor_location")
_STATEMENTS: dict[str, Any] = {
    "midline_shift": _midline,
    "white_matter_disease": lambda s: False if _FAZEKAS_ZERO.search(s.text) else _stated(s, _WMD),
    "prior_surgery": lambda s: _stated(s, _SURGERY, unless=_NOT_SURGERY),
}


def extract_rule_findings(text: str) -> dict[str, Any]:
    """The findings (``brainvlp.findings`` schema) a radiology report states, by the rules of the module
    docstring; keys it says nothing about are left out. Never raises on a string; ``TypeError`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"expected report text, got {type(text).__name__}")
    sentences = _sentences(_reading(text[:MAX_CHARS]))
    found: dict[str, Any] = {}
    for key, reader in _STATEMENTS.items():
        state = None
        for sentence in sentences:
            state = _merge(state, reader(sentence))
        if state is not None:
            found[key] = state
    lesions = _Lesions()
    for sentence in sentences:
        lesions.add(sentence)
    if lesions.described:
        found.update(_lesion_findings(lesions))
    elif any(map(_is_normal, sentences)):
        found.update(_NORMAL_FINDINGS, locations=[])
        lesions.enhancing = bool(lesions.enhancing)
    if lesions.enhancing is not None:
        found["enhancing_lesion"] = lesions.enhancing
    return {key: found[key] for key in _KEY_ORDER if key in found}
