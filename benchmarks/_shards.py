"""Synthetic studies for the data-loading benchmarks (``stream.py``, ``memory.py``): the same volumes as
brainvlp Parquet shards, as one ``.npy`` per study and as one ``.nii.gz`` per study.

A volume is a 1 x D x H x W int16 "head": an ellipsoid of smoothly varying tissue intensities (0..800,
like ingest's default ``scale_max``) with voxel noise, and zeros outside, so that it compresses about as
well as a preprocessed MRI does (zstd in the shards, gzip in the NIfTI files). Study ``i``'s volume depends
only on ``i`` and the shape: every format holds the same voxels.

Shards are written the way ingest writes them: the real ``SCHEMA`` through ``write_table_atomic`` (zstd),
rows split over files by the same capacity rule (``shard_capacity`` with ingest's 256 MB ``shard_mb`` and
``min_shards`` of 32) unless a fixed number of rows per file is asked for, and an ``index.json`` through
``write_index`` that the trainer's readers accept.
Reports are tiny fake ones: 40-120 token ids, 3-6 sentence spans with their sections, and findings JSON
with one or two SeLIP clauses, so that ``collate`` does its full work per row.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from brainvlp.data.plan import shard_capacity
from brainvlp.data.shards import SCHEMA, write_index, write_table_atomic

SEED = 20240612
SCALE_MAX = 800.0
SHARD_MB = 256.0  # ingest's default bound on a shard's uncompressed rows
MIN_SHARDS = 32  # ingest's default
MAX_TOKENS = 128
_NOISE_POOL = 4  # distinct noise fields; study i uses one of them shifted by i voxels
_SITES = ("frontal lobe", "parietal lobe", "temporal lobe", "occipital lobe", "cerebellum")


class VolumeSynth:
    """Study ``i``'s int16 ``1 x D x H x W`` volume, cheap to make: a fixed head and noise pool."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        rng = np.random.default_rng(SEED)
        axes = np.ogrid[tuple(slice(-1.0, 1.0, complex(0, n)) for n in shape)]
        radius2 = sum(a.astype(np.float32) ** 2 for a in axes) / np.float32(0.9**2)
        self.inside = radius2 < 1.0
        tissue = 300.0 + 250.0 * np.cos(3.0 * axes[0]) * np.cos(4.0 * axes[1]) * np.cos(5.0 * axes[2])
        self.head = np.where(self.inside, tissue, 0.0).astype(np.float32)
        self.noise = [rng.normal(0.0, 20.0, shape).astype(np.float32) for _ in range(_NOISE_POOL)]

    def __call__(self, index: int) -> np.ndarray:
        noise = np.roll(self.noise[index % _NOISE_POOL], index, axis=-1)
        volume = np.where(self.inside, self.head * (0.9 + 0.002 * (index % 100)) + noise, 0.0)
        return np.clip(np.rint(volume), 0, SCALE_MAX).astype(np.int16)[None]


def fake_report(index: int) -> dict[str, Any]:
    """Token ids, sentence spans and sections, and findings JSON of study ``index`` (no real text)."""
    rng = np.random.default_rng([SEED, index])
    num_tokens = int(rng.integers(40, 121))
    ids = [101, *rng.integers(1000, 30000, num_tokens - 2).tolist(), 102]
    cuts = np.sort(rng.choice(np.arange(2, num_tokens - 1), int(rng.integers(2, 6)), replace=False))
    bounds = [1, *cuts.tolist(), num_tokens - 1]
    spans = [[a, b] for a, b in itertools.pairwise(bounds)]
    sections = ["findings"] * (len(spans) - 1) + ["impression"]
    side = ("left", "right")[index % 2]
    clauses = [
        {"modality": "T1c", "side": side, "site": _SITES[index % 5], "appearance": "enhancing mass"},
        {"modality": "FLAIR", "side": "bilateral", "site": "periventricular white matter",
         "appearance": "hyperintensities"},
    ][: 1 + index % 2]  # fmt: skip
    findings = {
        "enhancing_lesion": True,
        "side": side,
        "tumor_location": "supratentorial",
        "clauses": clauses,
    }
    return {
        "input_ids": ids,
        "sentence_spans": spans,
        "sentence_sections": sections,
        "truncated": False,
        "findings": json.dumps(findings),
    }


def _row(index: int, volume: np.ndarray) -> dict[str, Any]:
    return {
        "study_id": f"s{index:06d}",
        "patient_pid": f"p{index:06d}",
        "split": "train",
        "fold": -1,
        "volume": volume.tobytes(),
        "volume_shape": list(volume.shape),
        "spacing": [1.0, 1.0, 1.0],
        "present": [True],
        "mask": None,
        **fake_report(index),
    }


def write_shards(
    out_dir: Path, rows: int, shape: tuple[int, int, int], rows_per_shard: int | None = None
) -> list[Path]:
    """Shards of ``rows`` training studies plus their ``index.json``; returns the shard paths. Files hold
    ``rows_per_shard`` rows, or by default as many as ingest would put in them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    bytes_per_study = 2 * math.prod(shape) + 8 * MAX_TOKENS  # as IngestSpec.bytes_per_study, no mask
    count = min(rows, max(math.ceil(rows / shard_capacity(bytes_per_study, SHARD_MB)), MIN_SHARDS))
    if rows_per_shard is not None:
        count = math.ceil(rows / rows_per_shard)
    bounds = np.linspace(0, rows, count + 1).round().astype(int)
    synth, records = VolumeSynth(shape), []
    for number, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        path = out_dir / f"train-{number:05d}.parquet"
        write_table_atomic([_row(i, synth(i)) for i in range(lo, hi)], SCHEMA, path)
        records.append({"file": path.name, "split": "train", "rows": int(hi - lo), "sha256": "", "bytes": 0})
    write_index(
        out_dir,
        {
            "input_studies": rows,
            "sequences": ["t1c"],
            "volume_shape": [1, *shape],
            "spacing": [1.0, 1.0, 1.0],
            "scale_max": SCALE_MAX,
            "tokenizer": "builtin:tiny",
            "vocab_size": 30522,
            "pad_token_id": 0,
            "splits": {"train": rows},
            "shards": records,
            "truncated_reports": 0,
            "rejects": {"count": 0, "by_reason": {}, "file": "rejects.parquet"},
        },
    )
    return [out_dir / r["file"] for r in records]


def write_npy(out_dir: Path, rows: int, shape: tuple[int, int, int]) -> list[Path]:
    """One ``{study}.npy`` (int16, 1 x D x H x W) per study."""
    out_dir.mkdir(parents=True, exist_ok=True)
    synth, paths = VolumeSynth(shape), []
    for index in range(rows):
        paths.append(out_dir / f"s{index:06d}.npy")
        np.save(paths[-1], synth(index))
    return paths


def write_nifti(out_dir: Path, rows: int, shape: tuple[int, int, int]) -> list[Path]:
    """One ``{study}.nii.gz`` (int16, x y z = W H D, 1 mm) per study, as the seed repositories store data."""
    import nibabel as nib

    out_dir.mkdir(parents=True, exist_ok=True)
    synth, paths = VolumeSynth(shape), []
    for index in range(rows):
        paths.append(out_dir / f"s{index:06d}.nii.gz")
        image = nib.Nifti1Image(synth(index)[0].transpose(2, 1, 0), np.eye(4))
        image.set_data_dtype(np.int16)
        nib.save(image, str(paths[-1]))
    return paths


def cached(make: Any, out_dir: Path, rows: int, shape: tuple[int, int, int]) -> list[Path]:
    """``make(out_dir, rows, shape)`` unless ``out_dir`` already holds its output (marked by ``.done``)."""
    marker, wanted = out_dir / ".done", {"rows": rows, "shape": list(shape)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return sorted(p for p in out_dir.iterdir() if not p.name.startswith(".") and p.name != "index.json")
    paths = make(out_dir, rows, shape)
    marker.write_text(json.dumps(wanted))
    return paths
