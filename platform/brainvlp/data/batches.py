"""Ray Data batches -> tensors for the pretraining task: the columns it reads and their collation.

Shape legend: B batch, S sentences.

Kept apart from ``brainvlp.embed`` and ``brainvlp.train.task`` so that the modules DeepSpeed wraps import no
Ray: they run, and are benchmarked on a GPU, as plain PyTorch.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from brainvlp.data.clauses import encode_clauses
from brainvlp.data.shards import decode_volumes, pad_spans, pad_token_ids, volume_views
from brainvlp.findings import TUMOR_LOCATIONS
from brainvlp.sections import SECTION_KEYS

BATCH_COLUMNS = [
    "study_id", "volume", "volume_shape", "input_ids", "sentence_spans", "sentence_sections", "findings"
]  # fmt: skip


def collate(batch: dict[str, np.ndarray], pad_id: int = 0) -> dict[str, Any]:
    """Ray Data numpy batch -> tensors; volumes stay int16 until they reach the training device."""
    input_ids, attention_mask = pad_token_ids(batch["input_ids"], pad_id)
    spans, sentence_mask = pad_spans(batch["sentence_spans"])
    return {
        "study_id": [str(s) for s in batch["study_id"]],
        "volume": torch.from_numpy(decode_volumes(batch["volume"], batch["volume_shape"])),
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention_mask),
        "spans": torch.from_numpy(spans),
        "sentence_mask": torch.from_numpy(sentence_mask),
        "section_ids": section_ids(batch["sentence_sections"], spans.shape[1]),
        "location": torch.tensor([tumor_location_id(f) for f in batch["findings"]], dtype=torch.long),
        **{
            key: torch.from_numpy(value)
            for key, value in encode_clauses(batch["findings"], batch["study_id"]).items()
        },
    }


class ArrowCollate(ArrowBatchCollateFn):
    """``collate`` for ``iter_torch_batches`` on Ray's Arrow batch: volumes are decoded from views into
    Arrow's buffer (one copy, into the int16 batch) rather than from the numpy batch's ``bytes`` objects (a
    copy of every volume first, measured at about half of the streaming time in benchmarks/stream.py). The
    small columns go through numpy as before; ``numpy`` collates a numpy batch the same way."""

    def __init__(self, pad_id: int = 0) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: pa.Table) -> dict[str, Any]:
        columns = {
            name: volume_views(batch[name]) if name == "volume" else batch[name].to_numpy()
            for name in batch.column_names
        }
        return collate(columns, self.pad_id)

    def numpy(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        return collate(batch, self.pad_id)


def section_ids(sentence_sections: np.ndarray, width: int) -> torch.Tensor:
    """``B x S`` index of each sentence's section in ``SECTION_KEYS``; -1 on padding."""
    ids_BS = torch.full((len(sentence_sections), width), -1, dtype=torch.long)
    for row, names in enumerate(sentence_sections):
        ids_BS[row, : len(names)] = torch.tensor([SECTION_KEYS.index(name) for name in names])
    return ids_BS


def tumor_location_id(findings_json: str | None) -> int:
    """Index of the study's ``tumor_location`` finding in ``TUMOR_LOCATIONS``; -1 when unknown."""
    value = json.loads(findings_json).get("tumor_location") if findings_json else None
    return TUMOR_LOCATIONS.index(value) if value in TUMOR_LOCATIONS else -1
