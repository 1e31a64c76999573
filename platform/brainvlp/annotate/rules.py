"""The ``rules`` annotator: findings read from real report text by rules (``evaluate.rules_extract``),
no rewrite. A baseline that needs no model; deterministic, hence no retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from brainvlp.annotate.base import Annotation, extracted
from brainvlp.annotate.config import RulesAnnotatorConfig
from brainvlp.evaluate.rules_extract import extract_rule_findings


class RulesAnnotator:
    def __init__(self, config: RulesAnnotatorConfig, prompts: Mapping[str, str] | None = None) -> None:
        self.config = config

    def annotate(self, reports: Sequence[str]) -> list[Annotation]:
        return extracted(extract_rule_findings, reports)
