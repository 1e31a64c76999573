"""Test-wide environment: CPU DeepSpeed, quiet and fast Ray, no model hub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from brainvlp.runtime import use_cpu_local_env

use_cpu_local_env()


def _tiny_pipeline(tmp_path: Path, *, num_workers: int = 1, epochs: int = 6) -> dict:
    """A whole pipeline small enough for CPU tests: 24 phantom studies (one corrupt), a tiny model."""
    return {
        "kind": "pipeline",
        "run_name": "tiny",
        "output_root": str(tmp_path / "runs"),
        "phantom": {
            "dataset": {"num_studies": 24, "num_patients": 20, "shape": [32, 32, 32], "corrupt_studies": 1}
        },
        "ingest": {
            "tokenizer": "builtin:tiny",
            "volume": {"spacing": [6.0, 6.0, 6.0], "shape": [16, 32, 32]},
            "splits": {"dev": 0.15, "test": 0.25},
            "min_shards": 5,
        },
        "pretrain": {
            "data": {"augment": {"enabled": False}},
            "model": {
                "vision": {
                    "name": "resnet",
                    "layers": [1, 1, 1, 1],
                    "widths": [4, 8, 8, 16],
                    "max_pool": False,
                },
                "text": {"path": "builtin:tiny"},
                "embed_dim": 16,
                "proj_hidden": 32,
            },
            "train": {
                "num_workers": num_workers,
                "cpus_per_worker": 0.5,
                "batch_size": 4,
                "epochs": epochs,
                "lr": 3e-3,
                "log_every": 1,
                "eval_every": 8,
                "select": "best_dev_R@5",
            },
            "deepspeed": {"zero_stage": 2},
        },
        "evaluate": {"split": "test"},
    }


@pytest.fixture(scope="session")
def tiny_pipeline() -> Callable[..., dict]:
    return _tiny_pipeline


@pytest.fixture(scope="module")
def local_ray():
    """An embedded 2-CPU Ray for the tests of one module, shut down after them."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def ingest_tiny(tmp_path: Path) -> Path:
    """The tiny pipeline's phantom and ingest steps (on the Ray already started); returns the shards."""
    import yaml

    from brainvlp.pipeline import load_spec
    from brainvlp.runner import run

    spec = _tiny_pipeline(tmp_path)
    del spec["pretrain"], spec["evaluate"]
    spec["ingest"]["report"] = {"keep_text": True}  # for report generation
    spec_file = tmp_path / "ingest.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    run(load_spec(spec_file))
    return tmp_path / "runs" / "tiny" / "ingest"


@contextmanager
def killed_driver(spec_file: Path) -> Iterator[subprocess.Popen]:
    """``brainvlp run spec_file`` in a process group of its own, with its own embedded Ray, SIGKILLed with
    all of it (as a lost head node) when the block ends."""
    repo = Path(__file__).resolve().parents[1]
    path = f"{repo / 'platform'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "brainvlp.cli", "run", str(spec_file)],
        env={**env, "PYTHONPATH": path},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield driver
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()


def save_tiny_llama(directory: Path, texts: list[str], vocab_size: int = 300) -> Path:
    """A random 1-layer Llama (hidden 32) with a BPE trained on ``texts``, saved as a local model directory:
    what ``from_pretrained(path, local_files_only=True)`` loads for a real LM (judges, annotators)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from brainvlp.models.language import train_report_tokenizer

    tokenizer = train_report_tokenizer(texts, vocab_size=vocab_size)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
