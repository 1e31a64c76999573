"""The brat recipe (configs/brat/): every spec runs, in order, at the CPU size of tests/recipe_reduced.yaml on
phantom data: ingest -> pretrain -> tune -> downstream -> evaluate, each step reading the one before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from brainvlp.phantom.config import PhantomConfig
from brainvlp.phantom.generate import generate_phantom
from brainvlp.pipeline import load_spec
from brainvlp.runner import run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ORDER = ("ingest.yaml", "pretrain.yaml", "tune.yaml", "downstream.yaml", "evaluate.yaml")


def test_the_brat_recipe_runs_reduced_on_phantom_data(tmp_path: Path, local_ray) -> None:
    generate_phantom(
        PhantomConfig(num_studies=48, num_patients=40, shape=(64, 64, 64), seed=0), str(tmp_path)
    )
    reductions = yaml.safe_load((REPO / "tests" / "recipe_reduced.yaml").read_text())
    assert set(reductions) == set(ORDER)
    root = tmp_path / "runs"
    for name in ORDER:
        overrides = [o.format(root=root, phantom=tmp_path / "manifest.csv") for o in reductions[name]]
        run(load_spec(REPO / "configs" / "brat" / name, overrides))
    assert (root / "brat" / "export" / "model.safetensors").exists()
    assert (root / "brat-tune" / "best.yaml").exists()
    downstream = json.loads((root / "brat-downstream" / "metrics.json").read_text())
    assert downstream["runs"] and (root / "brat-downstream" / "report.html").exists()
    evaluation = json.loads((root / "brat-evaluate" / "metrics.json").read_text())
    assert set(evaluation["models"]) == {"brat"}
    assert "## Downstream" in (root / "brat-evaluate" / "report.md").read_text()
