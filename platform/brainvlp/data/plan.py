"""Shard planning: which studies go into which shard file, decided once and identically on every re-run.

A plan depends only on the manifest, the ingest spec and the pseudonymisation key, so an interrupted ingest
re-run with the same inputs recomputes the same plan and can skip the shards already written; its digest
detects a re-run against different inputs.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

MIB = 1 << 20


def shard_capacity(bytes_per_study: int, shard_mb: float) -> int:
    """Studies per shard under the ``shard_mb`` bound (at least one: a single study may exceed it)."""
    return max(1, int(shard_mb * MIB // bytes_per_study))


def plan_shards(
    studies: list[dict[str, Any]], *, capacity: int, min_shards: int, seed: int
) -> list[dict[str, Any]]:
    """Group studies into shards of one split each, rows shuffled across shards by patient.

    Patients are put in a seeded random order and their studies kept together, so that no shard is one
    scanner, one site or one date (manifests are usually sorted by one of them). Each split gets enough
    shards to respect ``capacity``, and at least its share of ``min_shards`` so that a small ingest still
    spreads over the cluster's CPUs; shards of a split differ in size by at most one study.
    """
    plans = []
    for split in sorted({s["split"] for s in studies}):
        in_split = [s for s in studies if s["split"] == split]
        patients = sorted({s["patient_pid"] for s in in_split})
        rank = {patients[i]: r for r, i in enumerate(np.random.default_rng(seed).permutation(len(patients)))}
        in_split.sort(key=lambda s: (rank[s["patient_pid"]], s["manifest_row"]))
        wanted = max(
            math.ceil(len(in_split) / capacity), math.ceil(min_shards * len(in_split) / len(studies))
        )
        count = min(len(in_split), wanted)
        bounds = np.linspace(0, len(in_split), count + 1).round().astype(int)
        for number, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            plans.append(
                {"file": f"{split}-{number:05d}.parquet", "split": split, "studies": in_split[lo:hi]}
            )
    return plans


def plan_digest(plans: list[dict[str, Any]], settings: Mapping[str, Any]) -> str:
    """sha256 over every shard's studies (ids, pseudonyms, inputs, reports) and the ``settings``."""
    content = {
        "settings": settings,
        "shards": [
            {
                "file": plan["file"],
                "studies": [
                    [
                        s.get(key)
                        for key in (
                            "study_id",
                            "patient_pid",
                            "fold",
                            "manifest_row",
                            "images",
                            "mask",
                            "dicom",
                        )
                    ]
                    + [s["report"], s["findings"]]  # hashed, never stored
                    + ([s["dicom"]] if s.get("dicom") else [])  # NIfTI plans keep their digest
                    for s in plan["studies"]
                ],
            }
            for plan in plans
        ],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
