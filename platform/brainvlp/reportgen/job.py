"""The report-generation job (``kind: report_generation``): brat Table 4 as one spec.

For every image encoder of ``models`` and every seed, one Ray Train run (``reportgen.loop``) trains the
bridge and the language model (and a scratch encoder) on the ingest's training split with DeepSpeed,
selects weights on the dev split and writes the test split's reports; the splits are the ingest's, by
patient. The driver then scores every run (``reportgen.scoring``) and writes the report.

Outputs in the run directory: ``tokenizer/`` (a trained tokenizer, shared by every run so that ids agree),
``<model>/seed<k>/`` (checkpoints, ``history.jsonl``, ``test.parquet``: the test studies' reference and
generated reports, which are data of the run like the shards they come from), ``metrics.json``,
``report.md`` / ``report.html``. A rerun with the same run name skips the runs that finished.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from brainvlp.data.shards import read_index, split_files
from brainvlp.errors import UserError
from brainvlp.models.language import load_tokenizer_dir, train_report_tokenizer
from brainvlp.reportgen.config import ReportGenSpec
from brainvlp.reportgen.loop import train_loop
from brainvlp.reportgen.model import COLUMNS
from brainvlp.reportgen.scoring import score_runs, write_report
from brainvlp.spec import SpecError, to_plain


def run_report_generation(spec: ReportGenSpec, run_dir: Path) -> dict[str, Any]:
    if spec.shards is None:
        raise SpecError("shards", "required: the output directory of an ingest job")
    index = read_index(spec.shards)
    for split in (spec.train_split, spec.dev_split, spec.test_split):
        if not index["splits"].get(split):
            raise UserError(f"{spec.shards}: no {split!r} studies for report generation")
    if not index.get("report_text"):
        raise UserError(
            f"{spec.shards}: the shards hold no report text; ingest with report.keep_text: true to train a "
            "report generator"
        )
    run_dir = run_dir.resolve()
    tokenizer_dir = _tokenizer(spec, run_dir)
    rows = index["splits"][spec.train_split]
    steps_per_epoch = rows // (spec.micro_batch * spec.train.num_workers)
    if steps_per_epoch < 1:
        raise SpecError("train.batch_size", f"{spec.train.batch_size} exceeds the {rows} training studies")
    runs = [(entry.name, seed) for entry in spec.models for seed in range(spec.seeds)]
    print(
        f"report_generation: {len(spec.models)} model(s) x {spec.seeds} seed(s), {spec.train.epochs} "
        f"epochs of {steps_per_epoch} steps each, global batch {spec.train.batch_size}"
    )
    for position, (name, seed) in enumerate(runs, start=1):
        out = run_dir / name / f"seed{seed}"
        if (out / "test.parquet").exists():
            print(f"report_generation: run {position}/{len(runs)} ({name}, seed {seed}) already done")
            continue
        config = {"spec": to_plain(spec), "model": name, "seed": seed, "index": index,
                  "tokenizer": str(tokenizer_dir), "steps_per_epoch": steps_per_epoch}  # fmt: skip
        selected = _fit(spec, config, out)
        print(f"report_generation: run {position}/{len(runs)} ({name}, seed {seed}) done: {selected}")
    results = score_runs(spec, run_dir)
    written = write_report(spec, results, run_dir)
    print(f"report_generation: report written to {written}")
    return results


def _tokenizer(spec: ReportGenSpec, run_dir: Path) -> Path:
    """The directory of the LM's tokenizer: trained once on the training split's reports (and kept for a
    rerun), the LM's own, or a given one."""
    lm = spec.generator.language_model
    if lm.tokenizer == "model":
        return Path(lm.path)
    if lm.tokenizer != "train":
        return Path(lm.tokenizer)
    directory = run_dir / "tokenizer"
    if not (directory / "tokenizer.json").exists():
        files = split_files(spec.shards, spec.train_split)
        reports = pq.read_table(files, columns=["report_text"]).column("report_text").to_pylist()
        tokenizer = train_report_tokenizer([r for r in reports if r], lm.vocab_size)
        tokenizer.save_pretrained(str(directory))
    load_tokenizer_dir(directory)  # fails here, not in every worker, if it cannot be read
    return directory


def _fit(spec: ReportGenSpec, config: dict[str, Any], out: Path) -> str:
    """One Train run; the test reports and the history come back in its final checkpoint."""
    files = {
        split: split_files(spec.shards, split)
        for split in (spec.train_split, spec.dev_split, spec.test_split)
    }
    datasets = {
        "train": ray.data.read_parquet(files[spec.train_split], columns=COLUMNS,
                                       shuffle=ray.data.FileShuffleConfig(seed=config["seed"])),
        spec.dev_split: ray.data.read_parquet(files[spec.dev_split], columns=COLUMNS),
        spec.test_split: ray.data.read_parquet(files[spec.test_split], columns=COLUMNS),
    }  # fmt: skip
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=spec.train.num_workers,
            use_gpu=spec.train.use_gpu,
            resources_per_worker=spec.train.ray_resources(),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name="train",
            storage_path=str(out),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=spec.train.max_failures),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"report generation finished without a checkpoint; see {out / 'train'}")
    with result.checkpoint.as_directory() as checkpoint:
        for name in ("history.jsonl", "test.parquet"):  # test.parquet last: it marks the run as done
            shutil.copy(Path(checkpoint) / name, out / name)
    return str(result.metrics.get("selected", "last epoch"))
