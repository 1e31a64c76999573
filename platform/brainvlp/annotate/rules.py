"""The ``rules`` annotator: findings read from real report text by rules (``evaluate.rules_extract``),
no rewrite. A baseline that needs no model; deterministic, hence no retry.

The extractor leaves out what a report does not state (right for scoring generated reports: silence is
not an error). Annotation follows brat's rule instead, which the ``lm`` prompt also gives (Fig. 14, rule
(b)): a yes/no question the report does not answer gets the normal answer, false. ``unstated: unknown``
keeps the extractor's reading. Only the yes/no findings are filled: a lesion's count, size or side left
unknown by a report that describes a lesion would be contradicted by "none".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from brainvlp.annotate.base import Annotation, extracted
from brainvlp.annotate.config import RulesAnnotatorConfig
from brainvlp.evaluate.rules_extract import extract_rule_findings
from brainvlp.findings import BOOLEAN_FINDINGS


def _unstated_as_normal(report: str) -> dict[str, Any]:
    findings = extract_rule_findings(report)
    return {**dict.fromkeys(BOOLEAN_FINDINGS, False), **findings}


class RulesAnnotator:
    def __init__(self, config: RulesAnnotatorConfig, prompts: Mapping[str, str] | None = None) -> None:
        self.config = config

    def annotate(self, reports: Sequence[str]) -> list[Annotation]:
        read = _unstated_as_normal if self.config.unstated == "normal" else extract_rule_findings
        return extracted(read, reports)
