"""Structured clauses of a batch as integer tensors, for SeLIP's soft report-similarity target.

Shape legend: B studies, C clauses (padded to the batch's most), W words of a clause (padded likewise).

Each clause (``brainvlp.findings``: modality, side, site, appearance) is phrased as SeLIP does
(``clause_text``) and split into lower-case words; words, sites and appearances become 52-bit hashes.
52 bits because a float64 holds them exactly: the loss gathers them across workers through the same
float path as its features. Hash 0 marks padding. With tens of thousands of distinct words, a collision
(which could only raise a text Dice) has a probability around 1e-7 per run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

import numpy as np

from brainvlp.findings import clause_text, study_clauses

_WORD = re.compile(r"[a-z0-9]+(?:[/'-][a-z0-9]+)*")


def stable_hash(text: str) -> int:
    """A 52-bit, process-independent, non-zero hash of ``text`` (Python's ``hash`` is salted per process)."""
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 12
    return value or 1


def clause_words(text: str) -> list[str]:
    """Lower-case words of a phrased clause, punctuation dropped: the multiset the text Dice compares."""
    return _WORD.findall(text.lower())


def encode_clauses(findings: Sequence[str | None], study_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``clause_words`` B x C x W, ``clause_site`` and ``clause_appearance`` B x C (int64 hashes) and
    ``clause_mask`` B x C (bool) from each study's findings JSON; a study without clauses has none."""
    studies = []
    for raw, study_id in zip(findings, study_ids, strict=True):
        try:
            studies.append(study_clauses(json.loads(raw)) if raw else [])
        except ValueError as err:  # json errors are ValueErrors too
            raise ValueError(f"study {study_id}: findings clauses: {err}") from err
    num_clauses = max(1, max(len(clauses) for clauses in studies))
    words = [[[stable_hash(w) for w in clause_words(clause_text(c))] for c in clauses] for clauses in studies]
    num_words = max(1, max((len(ws) for clauses in words for ws in clauses), default=1))
    out = {
        "clause_words": np.zeros((len(studies), num_clauses, num_words), dtype=np.int64),
        "clause_site": np.zeros((len(studies), num_clauses), dtype=np.int64),
        "clause_appearance": np.zeros((len(studies), num_clauses), dtype=np.int64),
        "clause_mask": np.zeros((len(studies), num_clauses), dtype=bool),
    }
    for b, (clauses, clause_hashes) in enumerate(zip(studies, words, strict=True)):
        for c, (clause, hashes) in enumerate(zip(clauses, clause_hashes, strict=True)):
            out["clause_words"][b, c, : len(hashes)] = hashes
            out["clause_site"][b, c] = stable_hash(clause["site"].lower())
            out["clause_appearance"][b, c] = stable_hash(clause["appearance"].lower())
            out["clause_mask"][b, c] = True
    return out
