"""The evaluate job: embed a held-out split with an exported model and write retrieval metrics + report.

Images and reports are scored with the rule the model was trained with (``scoring`` in its export: dot
product, max over Q-Former views, PVA, ColBERT).

Shape legend: N studies in the split.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from brainvlp.data.batches import BATCH_COLUMNS, collate
from brainvlp.data.shards import decode_volumes, read_index, split_files
from brainvlp.embed import IMAGE_KEYS, TEXT_KEYS, Embedder, to_device
from brainvlp.evaluate.compare import write_comparison_report
from brainvlp.evaluate.config import EvaluateSpec
from brainvlp.evaluate.plots import read_training_curves
from brainvlp.evaluate.report import format_retrieval_table
from brainvlp.evaluate.retrieval import (
    chance_levels,
    retrieval_metrics_from_scores,
    retrieval_ranks_from_scores,
)
from brainvlp.export import load_export
from brainvlp.findings import positive_findings
from brainvlp.losses.scoring import NEEDS, concat, score_matrix
from brainvlp.spec import SpecError


@ray.remote(num_cpus=1)
def score_split(model_dir: str, files: list[str], batch_size: int) -> dict[str, Any]:
    """The image-by-report score matrix of every study in ``files`` (and Q-Former views with their
    attention, for the collapse diagnostics); a Ray task, so it runs on a worker."""
    model, meta = load_export(model_dir)
    scoring = meta.get("scoring", "dot")  # exports from before scorings were recorded are dot-product
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # a GPU only if Ray gave one
    embedder = Embedder(model, scale_max=meta["scale_max"]).eval().to(device)
    images, texts, views, attention = [], [], [], []
    with torch.no_grad():
        for path in files:
            table = pq.read_table(path, columns=BATCH_COLUMNS)
            for batch in table.to_batches(max_chunksize=batch_size):
                numpy_batch = {
                    name: batch.column(name).to_numpy(zero_copy_only=False) for name in BATCH_COLUMNS
                }
                batch_on_device = to_device(collate(numpy_batch, pad_id=meta["pad_token_id"]), device)
                out = {k: v.cpu() for k, v in embedder.represent(batch_on_device, NEEDS[scoring]).items()}
                images.append({k: out[k].float() for k in IMAGE_KEYS if k in out})
                texts.append({k: out[k] for k in TEXT_KEYS if k in out})
                if "views" in out:
                    views.append(out["views"].float())
                    attention.append(out["attn"].float())
    result = {"sim_NN": score_matrix(scoring, concat(images), concat(texts)).numpy(), "scoring": scoring}
    if views:
        result["views_NQE"], result["attn_NQP"] = torch.cat(views).numpy(), torch.cat(attention).numpy()
    return result


def read_study_side(files: list[str]) -> dict[str, Any]:
    """What the report shows of the split's studies: finding labels, the first sequence's volume (scaled to
    [0, 1] per study for display), its middle axial slice, and the lesion masks."""
    finding_sets, volumes, masks = [], [], []
    for path in files:
        table = pq.read_table(path, columns=["volume", "volume_shape", "mask", "findings"])
        finding_sets += [
            positive_findings(json.loads(f) if f else None) for f in table.column("findings").to_pylist()
        ]
        decoded = decode_volumes(table.column("volume").to_pylist(), table.column("volume_shape").to_pylist())
        for volume_CDHW, mask in zip(decoded, table.column("mask").to_pylist(), strict=True):
            first_DHW = volume_CDHW[0].astype(np.float32)
            volumes.append(first_DHW / max(float(first_DHW.max()), 1.0))
            masks.append(None if mask is None else np.frombuffer(mask, np.uint8).reshape(first_DHW.shape))
    slices = [v[v.shape[0] // 2] for v in volumes]
    return {"finding_sets": finding_sets, "volumes_NDHW": volumes, "masks_NDHW": masks, "slices_NHW": slices}


def run_evaluate(spec: EvaluateSpec, run_dir: Path) -> dict[str, Any]:
    models = dict(spec.models) or ({"model": spec.model} if spec.model else {})
    if not models:
        raise SpecError("model", "required: a pretrain export directory (or models: {name: export})")
    if spec.shards is None:
        raise SpecError("shards", "required: the output directory of an ingest job")
    index = read_index(spec.shards)
    files = split_files(spec.shards, spec.split)
    scorer = score_split.options(num_gpus=spec.gpus_per_model)
    refs = {name: scorer.remote(str(path), files, spec.batch_size) for name, path in models.items()}
    study = read_study_side(files)
    finding_sets = study["finding_sets"]
    chance = chance_levels(len(finding_sets), finding_sets=finding_sets)
    results = {}
    for name, ref in refs.items():
        result = ray.get(ref)
        sim_NN = result["sim_NN"] = np.array(result["sim_NN"])  # writable: torch reads it
        result["metrics"] = retrieval_metrics_from_scores(sim_NN, finding_sets=finding_sets)
        result["ranks"] = {k: v.numpy() for k, v in retrieval_ranks_from_scores(sim_NN).items()}
        result["curves"] = read_training_curves(Path(models[name]).parent)
        results[name] = result
        print(f"{name} ({result['scoring']}):\n" + format_retrieval_table(result["metrics"], chance))
    details = {
        "models": ", ".join(models),
        "shards": str(spec.shards),
        "split": spec.split,
        "studies": len(finding_sets),
        "studies_with_findings": int(np.sum([bool(s) for s in finding_sets])),
        "sequences": ", ".join(index["sequences"]),
        "evaluated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    downstream = Path(spec.downstream) if spec.downstream else None
    report = write_comparison_report(run_dir, results, chance, details, study, downstream)
    print(f"evaluate: report written to {report} and {report.with_suffix('.html')}")
    first = next(iter(results.values()))
    return {
        "metrics": first["metrics"],
        "chance": chance,
        "models": {n: r["metrics"] for n, r in results.items()},
    }
