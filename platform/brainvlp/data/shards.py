"""Parquet shard format: what ingest writes and pretrain / evaluate read.

A shard directory holds:

- ``{split}-{NNNNN}.parquet``: one split per file (so a job reads a split by file name). Columns:

  ============== ====================== =====================================================
  study_id       string                 as in the manifest (not a patient identifier)
  patient_pid    string                 keyed-hash pseudonym of the patient id
  split          string                 train / dev / test, assigned per patient
  fold           int16                  cross-validation fold of train patients, -1 elsewhere
  volume         binary                 int16 C x D x H x W, C-order, 0..scale_max
  volume_shape   list<int32>            (C, D, H, W)
  spacing        list<float32>          output voxel size in mm, (D, H, W) order
  present        list<bool>             per channel: sequence present (else a zero channel)
  mask           binary (nullable)      uint8 D x H x W lesion mask on the volume's grid
  input_ids      list<int32>            the whole report tokenised once, [CLS] ... [SEP]
  sentence_spans list<list<int32>>      per sentence, [start, end) into input_ids
  sentence_sec.. list<string>           per sentence, its report section (``brainvlp.sections.SECTION_KEYS``)
  truncated      bool                   sentences or tokens were cut
  report_text    string (nullable)      the kept sentences, space-joined (report.keep_text; a report
                                        generator's target), else null
  findings       string                 structured findings as JSON (brainvlp.findings), or ""
  ============== ====================== =====================================================

- ``rejects.parquet``: study_id, manifest_row, manifest_line, reason, detail: every study not in a shard.
- ``index.json``: format version, sequences, volume shape, tokenizer, per-split row counts, the shard list
  with row counts and sha256, and reject counts by reason. Readers trust the index, not a directory listing.

Volumes are raw bytes plus shape rather than an Arrow tensor type: decoding bytes with ``np.frombuffer`` is
~3x faster than the fixed-shape tensor column (ENVIRONMENT.md).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from brainvlp.errors import MissingInputError, UserError

FORMAT = "brainvlp-shards/3"  # 2: sentence_sections; 3: report_text

SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("patient_pid", pa.string()),
        ("split", pa.string()),
        ("fold", pa.int16()),
        ("volume", pa.binary()),
        ("volume_shape", pa.list_(pa.int32())),
        ("spacing", pa.list_(pa.float32())),
        ("present", pa.list_(pa.bool_())),
        ("mask", pa.binary()),
        ("input_ids", pa.list_(pa.int32())),
        ("sentence_spans", pa.list_(pa.list_(pa.int32()))),
        ("sentence_sections", pa.list_(pa.string())),
        ("truncated", pa.bool_()),
        ("report_text", pa.string()),
        ("findings", pa.string()),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        ("study_id", pa.string()),
        ("manifest_row", pa.int64()),
        ("manifest_line", pa.int64()),  # 1-based line of a CSV/TSV/JSONL manifest, row of a Parquet one
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_table_atomic(rows: Sequence[Mapping[str, Any]], schema: pa.Schema, path: str | Path) -> None:
    """Write rows as Parquet under a temporary name, then rename: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    table = pa.Table.from_pylist(list(rows), schema=schema)
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_index(shard_dir: str | Path, index: Mapping[str, Any]) -> Path:
    path = Path(shard_dir) / "index.json"
    tmp = path.with_name(".tmp-index.json")
    tmp.write_text(json.dumps({"format": FORMAT, **index}, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_index(shard_dir: str | Path) -> dict[str, Any]:
    """The index of a shard directory; a clear error when it is missing or of another format."""
    path = Path(shard_dir) / "index.json"
    if not path.exists():
        raise MissingInputError(f"{path} not found: is {shard_dir} the output directory of an ingest job?")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise UserError(
            f"{path}: format {index.get('format')!r}, expected {FORMAT!r}; re-run the ingest job to rewrite "
            "the shards in the current format"
        )
    return index


def split_files(shard_dir: str | Path, split: str) -> list[str]:
    """Absolute paths of the shards of ``split``; an error listing the splits that exist if it is empty."""
    index = read_index(shard_dir)
    files = [str(Path(shard_dir) / s["file"]) for s in index["shards"] if s["split"] == split]
    if not files:
        available = sorted({s["split"] for s in index["shards"]})
        raise UserError(f"{shard_dir}: no shards for split {split!r}; splits with data: {available}")
    return files


def volume_views(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Each row of a binary column as a uint8 view into Arrow's buffer: nothing is copied. Ray Data's numpy
    batches hold ``bytes`` objects instead, one copy of every volume before it is even stacked."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = []
    for chunk in chunks:
        _, offsets_buffer, data_buffer = chunk.buffers()
        kind = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        offsets = np.frombuffer(offsets_buffer, dtype=kind)[chunk.offset : chunk.offset + len(chunk) + 1]
        data = np.frombuffer(data_buffer, dtype=np.uint8)
        views.extend(data[lo:hi] for lo, hi in itertools.pairwise(offsets))
    return views


def decode_volumes(volume: Sequence[bytes | np.ndarray], volume_shape: Sequence[Sequence[int]]) -> np.ndarray:
    """Stack raw int16 volume bytes (or uint8 views of them) into one ``B x C x D x H x W`` int16 array, the
    only copy (no float conversion)."""
    shapes = {tuple(int(v) for v in shape) for shape in volume_shape}
    if len(shapes) != 1:
        raise ValueError(f"volumes of different shapes in one batch: {sorted(shapes)}")
    (shape,) = shapes
    out = np.empty((len(volume), *shape), dtype=np.int16)
    for i, raw in enumerate(volume):
        out[i] = np.frombuffer(raw, dtype=np.int16).reshape(shape)
    return out


def pad_token_ids(input_ids: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token lists into ``input_ids`` and ``attention_mask`` int64 arrays (B x T_max)."""
    max_len = max(len(ids) for ids in input_ids)
    ids = np.full((len(input_ids), max_len), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids), max_len), dtype=np.int64)
    for i, row in enumerate(input_ids):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def pad_spans(sentence_spans: Sequence[Sequence[Sequence[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Spans as int64 ``B x S_max x 2`` (padding (0, 0)) and a bool ``B x S_max`` mask of real sentences."""
    max_sentences = max(1, max(len(spans) for spans in sentence_spans))
    spans = np.zeros((len(sentence_spans), max_sentences, 2), dtype=np.int64)
    mask = np.zeros((len(sentence_spans), max_sentences), dtype=bool)
    for i, row in enumerate(sentence_spans):
        if len(row):
            spans[i, : len(row)] = np.asarray([list(span) for span in row], dtype=np.int64)
            mask[i, : len(row)] = True
    return spans, mask
