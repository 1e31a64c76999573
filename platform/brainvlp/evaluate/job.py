"""The evaluate job: embed a held-out split with an exported model and write retrieval metrics + report.

Images and reports are scored with the rule the model was trained with (``scoring`` in its export: dot
product, max over Q-Former views, PVA, ColBERT).

Shape legend: N studies in the split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from brainvlp.data.shards import read_index, split_files
from brainvlp.evaluate.report import format_retrieval_table, write_retrieval_report
from brainvlp.evaluate.retrieval import (
    chance_levels,
    retrieval_metrics_from_scores,
    retrieval_ranks_from_scores,
)
from brainvlp.export import load_export
from brainvlp.findings import positive_findings
from brainvlp.losses.scoring import NEEDS, concat, score_matrix
from brainvlp.spec import SpecError
from brainvlp.train.task import BATCH_COLUMNS, IMAGE_KEYS, TEXT_KEYS, PretrainTask, collate


@dataclass
class EvaluateSpec:
    kind: Literal["evaluate"] = "evaluate"
    run_name: str | None = None
    output_root: str = "runs"
    model: str | None = None  # a pretrain export directory; in a pipeline, the pretrain step's
    models: dict[str, str] = field(default_factory=dict)  # several exports by name, compared side by side
    shards: str | None = None  # an ingest output directory; in a pipeline, the ingest step's
    split: str = "test"
    batch_size: int = 16


@ray.remote(num_cpus=1)
def score_split(model_dir: str, files: list[str], batch_size: int) -> dict[str, Any]:
    """The image-by-report score matrix of every study in ``files``; a Ray task, so it runs on a worker."""
    model, meta = load_export(model_dir)
    scoring = meta.get("scoring", "dot")  # exports from before scorings were recorded are dot-product
    task = PretrainTask(model, loss=None, scale_max=meta["scale_max"], augment=None).eval()
    images, texts, findings, study_ids = [], [], [], []
    with torch.no_grad():
        for path in files:
            table = pq.read_table(path, columns=BATCH_COLUMNS)
            for batch in table.to_batches(max_chunksize=batch_size):
                numpy_batch = {
                    name: batch.column(name).to_numpy(zero_copy_only=False) for name in BATCH_COLUMNS
                }
                out = task.represent(collate(numpy_batch, pad_id=meta["pad_token_id"]), NEEDS[scoring])
                images.append({k: out[k].float() for k in IMAGE_KEYS if k in out})
                texts.append({k: out[k] for k in TEXT_KEYS if k in out})
                findings.extend(batch.column("findings").to_pylist())
                study_ids.extend(batch.column("study_id").to_pylist())
    sim_NN = score_matrix(scoring, concat(images), concat(texts))
    return {"sim_NN": sim_NN, "scoring": scoring, "findings": findings, "study_ids": study_ids}


def run_evaluate(spec: EvaluateSpec, run_dir: Path) -> dict[str, Any]:
    if spec.model is None:
        raise SpecError("model", "required: a pretrain export directory")
    if spec.shards is None:
        raise SpecError("shards", "required: the output directory of an ingest job")
    index = read_index(spec.shards)
    files = split_files(spec.shards, spec.split)
    result = ray.get(score_split.remote(str(spec.model), files, spec.batch_size))
    finding_sets = [positive_findings(json.loads(f) if f else None) for f in result["findings"]]
    sim_NN = result["sim_NN"]
    metrics = retrieval_metrics_from_scores(sim_NN, finding_sets=finding_sets)
    chance = chance_levels(len(sim_NN), finding_sets=finding_sets)
    details = {
        "model": str(spec.model),
        "shards": str(spec.shards),
        "split": spec.split,
        "studies": len(sim_NN),
        "scoring": result["scoring"],
        "studies_with_findings": int(np.sum([bool(s) for s in finding_sets])),
        "sequences": ", ".join(index["sequences"]),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    ranks = retrieval_ranks_from_scores(sim_NN)
    write_retrieval_report(
        run_dir, metrics, chance, title="Retrieval evaluation", details=details, ranks=ranks
    )
    print(format_retrieval_table(metrics, chance))
    print(f"evaluate: report written to {run_dir / 'report.md'}")
    return {"metrics": metrics, "chance": chance}
