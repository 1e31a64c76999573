"""The ``phantom`` annotator: a phantom report read back exactly (``phantom.extract``), no rewrite.

It makes the annotation step testable end to end against the phantom's ground truth, and annotates a
phantom data set without a model. The reader is deterministic, so an answer off the schema (which it does
not give) would fail again: there is no retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from brainvlp.annotate.base import Annotation, extracted
from brainvlp.annotate.config import PhantomAnnotatorConfig
from brainvlp.phantom.extract import extract_phantom_findings


class PhantomAnnotator:
    def __init__(self, config: PhantomAnnotatorConfig, prompts: Mapping[str, str] | None = None) -> None:
        self.config = config

    def annotate(self, reports: Sequence[str]) -> list[Annotation]:
        return extracted(extract_phantom_findings, reports)
