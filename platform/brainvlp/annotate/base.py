"""What every annotator shares: its answer per report (``Annotation``), reading a JSON answer out of free
text, and the Ray Data callable that runs an annotator on batches of reports.

Reading an answer. A language model's response may wrap its JSON in prose or code fences; the answer is
the first JSON object in it: from each ``{`` among the first ``MAX_OPENINGS`` of the response's first
``MAX_ANSWER_CHARS`` characters, a JSON object is decoded (``json.JSONDecoder.raw_decode``), and the first
that decodes is taken. That bounds the work on a runaway response. The object must then pass
``brainvlp.findings.validate_findings``. Statuses name what went wrong, never what was written:

- ``ok``; ``empty_report`` (nothing to annotate: the annotator is not called);
- ``invalid_json`` (no JSON object found), ``invalid_findings`` (an object off the schema);
- ``too_long`` (the prompt exceeds the model's input budget), ``empty_rewrite`` (the rewrite was empty).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from brainvlp.findings import validate_findings

MAX_ANSWER_CHARS = 20_000
MAX_OPENINGS = 32
OK = "ok"


@dataclass(frozen=True)
class Annotation:
    """One report's outcome: ``findings`` as compact JSON (None unless ok), ``report`` the rewritten text
    (None: not rewritten), ``status`` and ``calls``, the number of findings answers asked for (2: retried)."""

    status: str
    findings: str | None = None
    report: str | None = None
    calls: int = 0


@dataclass(frozen=True)
class Answer:
    """A findings answer checked: the findings object, or the status and an error that names the rule."""

    findings: dict[str, Any] | None
    status: str = OK
    error: str = ""


class Annotator(Protocol):
    def annotate(self, reports: Sequence[str]) -> list[Annotation]: ...


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def first_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text`` (bounded scan, see the module docstring), or None."""
    text = text[:MAX_ANSWER_CHARS]
    position = text.find("{")
    for _ in range(MAX_OPENINGS):
        if position < 0:
            return None
        try:
            value, _end = _DECODER.raw_decode(text, position)
        except (ValueError, RecursionError):
            value = None
        if isinstance(value, dict):
            return value
        position = text.find("{", position + 1)
    return None


def check_findings(findings: Any) -> Answer:
    """A findings object checked against the schema; the error names the field and rule, not the value."""
    try:
        validate_findings(findings)
    except ValueError as err:
        return Answer(None, "invalid_findings", str(err))
    return Answer(dict(findings))


def parse_answer(text: str) -> Answer:
    """A model's response read into findings (first JSON object, then the schema)."""
    found = first_json_object(text)
    if found is None:
        return Answer(None, "invalid_json", "the answer holds no JSON object")
    return check_findings(found)


def to_json(findings: Mapping[str, Any]) -> str:
    """Findings as the manifest stores them: compact JSON, keys sorted (the same answer, the same text)."""
    return json.dumps(findings, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def extracted(extract: Callable[[str], Any], reports: Sequence[str]) -> list[Annotation]:
    """Annotations by a deterministic reader of report text (one call each, nothing to retry)."""
    results = []
    for report in reports:
        answer = check_findings(extract(report))
        findings = to_json(answer.findings) if answer.findings is not None else None
        results.append(Annotation(answer.status, findings, None, 1))
    return results


def annotate_reports(annotator: Annotator, reports: Sequence[str | None]) -> list[Annotation]:
    """``annotator``'s annotations of ``reports``; blank reports are ``empty_report`` without a call."""
    present = [i for i, report in enumerate(reports) if isinstance(report, str) and report.strip()]
    results = [Annotation("empty_report")] * len(reports)
    for index, annotation in zip(present, annotator.annotate([reports[i] for i in present]), strict=True):
        results[index] = annotation
    return results


class AnnotateBatch:
    """Ray Data's callable class: builds the annotator once per actor (a model loads once), then annotates
    each batch of ``{"row", "part", "report"}`` into ``{"row", "part", "report", "findings", "status",
    "calls"}``. Only row numbers travel with the text: the other manifest columns stay on the driver."""

    def __init__(self, config: Any, prompts: Mapping[str, str]) -> None:
        from brainvlp.annotate.config import ANNOTATORS

        self.annotator = ANNOTATORS.build(config, prompts=prompts)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        reports = [r if isinstance(r, str) else None for r in batch["report"]]
        results = annotate_reports(self.annotator, reports)
        return {
            "row": np.asarray(batch["row"], dtype=np.int64),
            "part": np.asarray(batch["part"], dtype=np.int64),
            "report": np.asarray([r.report for r in results], dtype=object),
            "findings": np.asarray([r.findings for r in results], dtype=object),
            "status": np.asarray([r.status for r in results], dtype=object),
            "calls": np.asarray([r.calls for r in results], dtype=np.int64),
        }
