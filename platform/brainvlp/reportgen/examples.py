"""Example generated reports beside their references, coloured by findings (brat Fig. 10).

Shown only when the spec opts in (``scoring.show_examples``): the texts are report text. Each sentence
is read alone with the spec's findings extractor, and its positive findings that belong to one sentence
(the boolean findings and lesion locations; counts and the largest size describe the whole study) are
compared with the other report's findings, read from its whole text:

- a generated sentence is *agreeing* when all its findings are in the reference, *wrong* when one is not;
- a reference sentence is *agreeing* when the generated report states all its findings, *missing* when
  one of them is absent from it;
- sentences stating no positive finding ("No midline shift.") stay uncoloured: the extractors read an
  unstated finding as a negative one, so a sentence cannot tell "said no" from "said nothing".

Each example also gives the study's GREEN counts (``evaluate.clinical.compare_findings``). The block is
HTML inside the Markdown report (``evaluate.html`` keeps it and styles the classes), with every text
escaped, so report text can neither break the page nor inject markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Iterable
from typing import Any

from brainvlp.data.reports import split_sections, split_sentences
from brainvlp.evaluate.clinical import compare_findings
from brainvlp.findings import BOOLEAN_FINDINGS, positive_findings

Extractor = Callable[[str], dict[str, Any]]
LEGEND = (
    '<p class="legend">Sentences: <span class="finding-agree">agreeing</span> (its findings are in the '
    'reference), <span class="finding-wrong">wrong</span> (a finding the reference lacks), '
    '<span class="finding-missing">missing</span> (a reference finding the generated report lacks); '
    "uncoloured sentences state no finding that can be read from them alone.</p>"
)


def _sentence_labels(sentence: str, extractor: Extractor) -> frozenset[str]:
    """The findings one sentence states that belong to it alone (see the module docstring)."""
    labels = positive_findings(extractor(sentence))
    return frozenset(label for label in labels if label in BOOLEAN_FINDINGS or label.startswith("location:"))


def _sentences(text: str) -> Iterable[tuple[str | None, list[str]]]:
    """(section name or None, its sentences) in the report's order."""
    for name, body in split_sections(text).items():
        yield (None if name == "report" else name), split_sentences(body)


def _coloured(text: str, extractor: Extractor, other: frozenset[str], off_class: str) -> str:
    """The report as HTML: a sentence whose findings are all in ``other`` (the other report's) marked
    agreeing, one with a finding outside it marked ``off_class``."""
    parts = []
    for section, sentences in _sentences(text):
        spans = []
        for sentence in sentences:
            labels = _sentence_labels(sentence, extractor)
            css = "" if not labels else off_class if labels - other else "finding-agree"
            escaped = html.escape(sentence)
            spans.append(f'<span class="{css}">{escaped}</span>' if css else escaped)
        heading = f"<b>{html.escape(section.upper())}:</b> " if section else ""
        parts.append(heading + " ".join(spans))
    return "<br>".join(parts)


def example_block(row: dict[str, Any], extractor: Extractor | None) -> str:
    """One study's reference and generated report (a ``test.parquet`` row), as an HTML table block."""
    reference, generated = row["reference"] or "", row["generated"] or ""
    if extractor is None:
        ref_html, gen_html, counts = html.escape(reference), html.escape(generated), ""
    else:
        truth = json.loads(row.get("findings") or "{}")
        read = extractor(generated)
        ref_html = _coloured(reference, extractor, positive_findings(read), "finding-missing")
        gen_html = _coloured(generated, extractor, positive_findings(truth), "finding-wrong")
        c = compare_findings(truth, read)
        counts = (
            f'<tr><td colspan="2" class="counts">{c["matched_findings"]} matched, '
            f"{c['false_findings']} false, {c['missing_findings']} missing, {c['location_errors']} "
            f"misplaced, {c['severity_errors']} misjudged; GREEN {c['green']:.2f}</td></tr>"
        )
    return (
        '<table class="example"><tr><th>reference</th><th>generated</th></tr>'
        f"<tr><td>{ref_html}</td><td>{gen_html}</td></tr>{counts}</table>"
    )
