"""DICOM studies in ingest: a manifest row names a study's DICOM folder, zip or tar (``columns.dicom``)
instead of one image per sequence; each sequence's series is chosen by the spec's rules
(``data.series_select``) and loaded lazily (``data.dicom``), then preprocessed exactly as NIfTI images are.

What was chosen, and why, is recorded per ingested study and sequence in ``selection.parquet`` beside the
shards (the study id, the sequence, the series as ``SeriesInfo.label`` names it and the reason); the index
counts the chosen and the unmatched per sequence. A rejected study's reason names the series it failed on.
No DICOM tag that can carry PHI is read into any of it.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import pyarrow as pa

from brainvlp.data.dicom import load_series, read_study
from brainvlp.data.limits import IngestLimits
from brainvlp.data.series_select import DEFAULT_RULES, SelectionRule, select_series
from brainvlp.data.shards import write_table_atomic

SELECTION_SCHEMA = pa.schema(
    [("study_id", pa.string()), ("sequence", pa.string()), ("series", pa.string()), ("reason", pa.string())]
)


def rules_for(sequences: Sequence[str], rules: Mapping[str, SelectionRule]) -> dict[str, SelectionRule]:
    """Each sequence's rule: the spec's, else the shipped default (``DEFAULT_RULES``)."""
    return {seq: rules.get(seq) or DEFAULT_RULES[seq] for seq in sequences}


def dicom_sources(
    task: Mapping[str, Any],
    sequences: Sequence[str],
    rules: Mapping[str, SelectionRule],
    limits: IngestLimits,
) -> tuple[dict[str, Callable[[], nib.Nifti1Image] | None], list[dict[str, str]]]:
    """Per sequence a loader of its chosen series (None where no series matched: the missing-sequence
    rule decides), and the selection records."""
    chosen = select_series(read_study(task["dicom"], limits), rules_for(sequences, rules))
    loaders = {
        seq: None if series is None else functools.partial(load_series, series, limits=limits)
        for seq, (series, _) in ((seq, chosen[seq]) for seq in sequences)
    }
    records = [
        {"study_id": task["study_id"], "sequence": seq, "series": "" if s is None else s.label, "reason": why}
        for seq, (s, why) in ((seq, chosen[seq]) for seq in sequences)
    ]
    return loaders, records


def write_selection(records: list[dict[str, str]], run_dir: Path) -> dict[str, Any]:
    """``selection.parquet`` and its summary for the index: per sequence, studies with a chosen series and
    studies without one."""
    write_table_atomic(sorted(records, key=lambda r: (r["study_id"], r["sequence"])), SELECTION_SCHEMA,
                       run_dir / "selection.parquet")  # fmt: skip
    chosen = Counter(r["sequence"] for r in records if r["series"])
    unmatched = Counter(r["sequence"] for r in records if not r["series"])
    sequences = sorted(set(chosen) | set(unmatched))
    return {
        "file": "selection.parquet",
        "by_sequence": {s: {"chosen": chosen[s], "unmatched": unmatched[s]} for s in sequences},
    }
