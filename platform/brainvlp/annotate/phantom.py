"""The ``phantom`` annotator: a phantom report read back exactly (``phantom.extract``, reached through
``evaluate.clinical``'s extractor registry, so this layer does not depend on the phantom), no rewrite.

It makes the annotation step testable end to end against the phantom's ground truth, and annotates a
phantom data set without a model. The reader is deterministic, so an answer off the schema (which it does
not give) would fail again: there is no retry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from brainvlp.annotate.base import Annotation, extracted
from brainvlp.annotate.config import PhantomAnnotatorConfig
from brainvlp.evaluate.clinical import get_extractor


class PhantomAnnotator:
    def __init__(self, config: PhantomAnnotatorConfig, prompts: Mapping[str, str] | None = None) -> None:
        self.config = config

    def annotate(self, reports: Sequence[str]) -> list[Annotation]:
        return extracted(get_extractor("phantom"), reports)
