"""Radiology reports -> sections -> sentences -> one token sequence with per-sentence spans (METHODS 1.2).

The whole report is tokenised in one pass, and each kept sentence records its ``[start, end)`` token range
in that sequence, so the text encoder runs once per report and sentence embeddings are mean-pooled from
its token states. Report text never appears in exceptions or logs: it may identify a patient.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import pysbd

from brainvlp.data.errors import RejectError
from brainvlp.errors import UserError
from brainvlp.sections import SECTION_ALIASES
from brainvlp.spec import PositiveInt, Range

if TYPE_CHECKING:  # transformers costs ~0.7 s to import; `brainvlp validate` reads this module's config
    from transformers import PreTrainedTokenizerBase

# Header spellings -> canonical section key. Synonyms fold into one key so that a spec can ask for
# "impression" whether a site writes IMPRESSION or CONCLUSION.
_CANONICAL = {alias: key for key, aliases in SECTION_ALIASES.items() for alias in aliases}


def _alternation(names: list[str]) -> str:
    # Longest first, so that "clinical history" wins over "history"; any whitespace between words.
    return "|".join(r"\s+".join(map(re.escape, n.split())) for n in sorted(names, key=len, reverse=True))


# A header opens a line (any case; colon, or nothing else on the line) or, in one-line exports, sits
# inline in capitals followed by a colon ("... normal. IMPRESSION: ...").
_HEADER = re.compile(
    rf"^[ \t]*(?P<line>(?i:{_alternation(list(_CANONICAL))}))[ \t]*(?::|$)"
    rf"|(?<=\s)(?P<inline>{_alternation([n.upper() for n in _CANONICAL])})[ \t]*:",
    re.MULTILINE,
)
# A line break is a soft wrap (becomes a space) when the next line continues the sentence: it starts in
# lower case, or with a number that is not a list marker ("1.8 cm" but not "2. No ..."). Other breaks are
# kept, and pysbd treats them as sentence boundaries (one finding per line, numbered lists).
_SOFT_WRAP = re.compile(r"[ \t]*\n[ \t]*(?=[a-z(]|\d+(?!\d)(?![.)]\s))")


def split_sections(text: str) -> dict[str, str]:
    """Split a report at its section headers; ``{"report": text}`` when it has none.

    Keys are canonical lower-case names ("findings", "impression", "history", ...); repeated sections are
    joined in order and empty ones left out. Text before the first header is kept as "preamble".
    Line endings and Unicode (NFKC) are normalised first.
    """
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    headers = list(_HEADER.finditer(text))
    if not headers:
        return {"report": text.strip()}
    sections: dict[str, list[str]] = {}
    preamble = text[: headers[0].start()].strip()
    if preamble:
        sections["preamble"] = [preamble]
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        body = text[header.end() : following.start() if following else len(text)].strip()
        name = " ".join((header["line"] or header["inline"]).lower().split())
        if body:
            sections.setdefault(_CANONICAL[name], []).append(body)
    return {key: "\n".join(bodies) for key, bodies in sections.items()}


@functools.lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False)


def split_sentences(text: str) -> list[str]:
    """Clinical-text-aware sentence split (pysbd keeps "2.3 x 1.8 cm", "e.g.", "vs.", "1. ... 2. ...").

    Hard-wrapped lines are rejoined first; whitespace inside a sentence collapses to single spaces.
    """
    return list(iter_sentences(text))


# pysbd's rules are superlinear in the length of what it is given (a 220 kB report took 18 s, 450 kB
# 75 s), so it sees the text in chunks of about this size, cut where a sentence ends anyway.
CHUNK_CHARS = 2000
_SENTENCE_END = re.compile(r"[.!?]\s+(?=[A-Z0-9])")


def iter_sentences(text: str) -> Iterator[str]:
    """``split_sentences`` lazily and in linear time: pysbd segments one chunk at a time, so a caller
    that needs the first N sentences stops reading a long report after them."""
    for chunk in _chunks(_SOFT_WRAP.sub(" ", text)):
        for sentence in _segmenter().segment(chunk):
            if joined := " ".join(sentence.split()):
                yield joined


def _chunks(text: str) -> Iterator[str]:
    """Pieces of at most ~``CHUNK_CHARS``, cut at line breaks (sentence boundaries for pysbd as well), else
    after a sentence-ending mark, else at a space; only a longer run without either is cut blindly."""
    while len(text) > CHUNK_CHARS:
        window = text[:CHUNK_CHARS]
        cut = window.rfind("\n") + 1
        if cut <= 0:
            ends = list(_SENTENCE_END.finditer(window))
            cut = ends[-1].end() if ends else window.rfind(" ") + 1
        cut = cut if cut > 0 else CHUNK_CHARS
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


@dataclass
class ReportConfig:
    """Which sections to keep and how much of them (brat: 20 sentences, 256 tokens)."""

    sections: tuple[str, ...] = ("findings", "impression")
    max_sentences: PositiveInt = 20
    max_tokens: Annotated[int, Range(ge=3)] = 256  # room for special tokens and text
    # Store the kept sentences' text in the shards (``report_text``): what report generation learns to
    # write. Off by default: report text stays out of everything but the manifest unless a spec asks.
    keep_text: bool = False

    def __post_init__(self) -> None:
        self.sections = tuple(s.lower() for s in self.sections)  # YAML gives lists
        if not self.sections:
            raise ValueError("sections must name at least one section, e.g. ('findings', 'impression')")
        if self.max_sentences < 1:
            raise ValueError(f"max_sentences must be >= 1, got {self.max_sentences}")
        if self.max_tokens < 3:
            raise ValueError(f"max_tokens must leave room for special tokens and text, got {self.max_tokens}")


@dataclass
class TokenizedReport:
    """One report as one token sequence; ``sentence_spans[i]`` is sentence i's ``[start, end)`` and
    ``sentence_sections[i]`` the section it comes from (a ``SECTION_KEYS`` entry); ``text`` the kept
    sentences joined by spaces (what was tokenised, before the token budget): a report generator's target."""

    input_ids: list[int]
    sentence_spans: list[tuple[int, int]]
    sentence_sections: list[str]
    num_sentences: int
    truncated: bool
    text: str = ""


def prepare_report(
    text: str | None, tokenizer: PreTrainedTokenizerBase, config: ReportConfig
) -> TokenizedReport:
    """Select sections, split sentences, tokenise once and locate every sentence's token span.

    A report without headers keeps its whole text. Beyond ``max_sentences`` sentences are dropped; beyond
    ``max_tokens`` the content is cut before the closing special token(s), sentences that no longer start
    inside the budget are dropped and a sentence cut mid-way keeps its clipped span.
    """
    if text is None:
        raise RejectError("missing_report", "report text is missing")
    if not text.strip():
        raise RejectError("empty_report", "report text is blank")
    sections = split_sections(text)
    kept = ["report"] if "report" in sections else [name for name in config.sections if name in sections]
    # One sentence beyond the budget tells that the report was truncated; the rest is never segmented.
    labelled = list(
        itertools.islice(
            ((sentence, name) for name in kept for sentence in iter_sentences(sections[name])),
            config.max_sentences + 1,
        )
    )
    if not labelled:
        raise RejectError("empty_report", f"no sentences in sections {', '.join(config.sections)}")
    truncated = len(labelled) > config.max_sentences
    sentences = [sentence for sentence, _ in labelled[: config.max_sentences]]
    # Sentence character starts in the joined text locate each token's sentence by bisection.
    starts = [0]
    for sentence in sentences[:-1]:
        starts.append(starts[-1] + len(sentence) + 1)
    text = " ".join(sentences)
    encoding = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, verbose=False)
    ids, special = encoding["input_ids"], encoding["special_tokens_mask"]
    content = [i for i, is_special in enumerate(special) if not is_special]
    if not content:
        raise RejectError("empty_report", "the kept sentences produce no tokens")
    lead, tail = ids[: content[0]], ids[content[-1] + 1 :]
    budget = config.max_tokens - len(lead) - len(tail)
    if budget < 1:
        raise UserError(
            f"max_tokens={config.max_tokens} leaves no room beside the tokenizer's special tokens"
        )
    truncated = truncated or len(content) > budget
    spans: dict[int, list[int]] = {}
    for position, token in enumerate(content[:budget], start=len(lead)):
        # A token's last character: BPE offsets may include the space before a word, i.e. the separator.
        start, end = encoding["offset_mapping"][token]
        sentence = bisect.bisect_right(starts, max(start, end - 1)) - 1
        spans.setdefault(sentence, [position, position])[1] = position + 1
    input_ids = lead + [ids[token] for token in content[:budget]] + tail
    # Sentences that produced no token (e.g. only characters the normaliser strips) have no span.
    sentence_spans = [tuple(spans[i]) for i in sorted(spans)]
    sentence_sections = [labelled[i][1] for i in sorted(spans)]
    return TokenizedReport(input_ids, sentence_spans, sentence_sections, len(sentence_spans), truncated, text)
