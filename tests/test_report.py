"""Retrieval reports: the console table with chance; the evaluation report of several models (strict JSON,
markdown tables, per-finding breakdown, plots, one self-contained page) and its guard against free text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from brainvlp.evaluate.compare import per_finding_recall, write_comparison_report
from brainvlp.evaluate.report import format_retrieval_table
from brainvlp.evaluate.retrieval import chance_levels, retrieval_metrics, retrieval_ranks

HEADER_TITLES = ("R@1 ↑", "R@5 ↑", "R@10 ↑", "R@5 (F) ↑", "P@5 (F) ↑", "MdR ↓", "MnR ↓")


@pytest.fixture
def evaluation():
    gen = torch.Generator().manual_seed(0)
    image_ND = torch.randn(60, 16, generator=gen)
    text_ND = image_ND + 1.5 * torch.randn(60, 16, generator=gen)
    rng = random.Random(0)
    finding_sets = [frozenset(rng.sample(["a", "b", "c"], rng.randint(0, 2))) for _ in range(60)]
    return (
        retrieval_metrics(image_ND, text_ND, finding_sets=finding_sets),
        chance_levels(60, finding_sets),
        retrieval_ranks(image_ND, text_ND),
    )


def test_table_has_brat_columns_directions_and_chance(evaluation):
    metrics, chance, _ = evaluation
    lines = format_retrieval_table(metrics, chance).splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["", *HEADER_TITLES]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["text → image", "image → text", "*chance*"]
    assert len({len(line) for line in lines}) == 1  # aligned for the console
    assert f"{metrics['text_to_image']['R@1']:.3f}" in lines[2]
    assert f"*{chance['MnR']:.1f}*" in lines[4]


def test_table_without_findings_drops_finding_columns_and_shows_nan_as_na():
    metrics = {
        d: {"R@1": 0.5, "R@5": 1.0, "R@10": 1.0, "MdR": 1.5, "MnR": float("nan")}
        for d in ("text_to_image", "image_to_text")
    }
    table = format_retrieval_table(metrics, chance_levels(4))
    assert "(F)" not in table
    assert "n/a" in table


def _study(finding_sets: list[frozenset[str]], shape=(4, 8, 8)) -> dict:
    rng = np.random.default_rng(0)
    volumes = [rng.random(shape).astype(np.float32) for _ in finding_sets]
    masks = [np.zeros(shape, np.uint8) for _ in finding_sets]
    masks[0][1:3, 2:5, 2:5] = 1
    return {
        "finding_sets": finding_sets,
        "volumes_NDHW": volumes,
        "masks_NDHW": masks,
        "slices_NHW": [v[shape[0] // 2] for v in volumes],
    }


def _result(image_ND: torch.Tensor, text_ND: torch.Tensor, finding_sets, scoring: str = "dot") -> dict:
    sim_NN = (image_ND @ text_ND.T).numpy()
    return {
        "sim_NN": sim_NN,
        "scoring": scoring,
        "metrics": retrieval_metrics(image_ND, text_ND, finding_sets=finding_sets),
        "ranks": {k: v.numpy() for k, v in retrieval_ranks(image_ND, text_ND).items()},
        "curves": {"loss": [(1, 2.0), (2, 1.5)]},
    }


@pytest.fixture
def two_models():
    gen = torch.Generator().manual_seed(0)
    image_ND = torch.nn.functional.normalize(torch.randn(60, 16, generator=gen), dim=-1)
    text_ND = torch.nn.functional.normalize(image_ND + 1.5 * torch.randn(60, 16, generator=gen), dim=-1)
    rng = random.Random(0)
    finding_sets = [frozenset(rng.sample(["a", "b", "c"], rng.randint(0, 2))) for _ in range(60)]
    views = {"views_NQE": torch.randn(60, 4, 8, generator=gen).numpy(),
             "attn_NQP": torch.rand(60, 4, 4, generator=gen).numpy()}  # fmt: skip
    results = {
        "views": _result(image_ND, text_ND, finding_sets, "pva") | views,
        "global": _result(image_ND, image_ND.roll(1, 0), finding_sets),
    }
    return results, chance_levels(60, finding_sets), _study(finding_sets)


def test_writes_strict_json_markdown_plots_and_one_page(tmp_path: Path, two_models):
    results, chance, study = two_models
    results["global"]["metrics"]["image_to_text"]["P@5(F)"] = float("nan")  # must become null, not NaN
    results["global"]["metrics"]["image_to_text"]["R@1"] = np.float32(0.5)  # numpy scalars: plain numbers
    details = {"models": "views, global", "export": tmp_path / "export", "split": "test"}
    report = write_comparison_report(tmp_path / "run", results, chance, details, study)
    assert report == tmp_path / "run" / "report.md"

    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["models"]["views"]["metrics"]["text_to_image"]["R@1"] == pytest.approx(
        results["views"]["metrics"]["text_to_image"]["R@1"]
    )
    assert record["models"]["global"]["metrics"]["image_to_text"]["P@5(F)"] is None
    assert record["models"]["global"]["metrics"]["image_to_text"]["R@1"] == 0.5
    assert record["details"]["export"] == str(tmp_path / "export")
    assert record["chance"]["R@1"] == pytest.approx(1 / 60)
    assert set(record["models"]["views"]["collapse"]) >= {"view_collapse", "attention_collapse"}
    assert "collapse" not in record["models"]["global"]

    text = report.read_text()
    for expected in ("| views |", "| global |", "| *chance* |", "per finding", "Collapse", "optimistic"):
        assert expected in text
    html = (tmp_path / "run" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5  # recall, training, MDS, overlays, examples x 2
    assert 'src="recall_at_k.png"' not in html


def test_per_finding_recall_counts_the_queries_that_carry_each_finding():
    finding_sets = [frozenset({"a"}), frozenset({"a", "b"}), frozenset({"a"}), frozenset({"b"}), frozenset()]
    rank_N = np.array([1, 7, 5, 2, 1])
    breakdown = per_finding_recall(rank_N, finding_sets)
    assert breakdown == {"a": (pytest.approx(2 / 3), 3)}  # "b" has 2 queries: too few to report


@pytest.mark.parametrize(
    "details",
    [{"note": "FINDINGS: There is a 2 cm enhancing mass. " * 10}, {"note": "line\nbreak"}, {"ids": ["p1"]}],
)
def test_refuses_free_text_details(tmp_path: Path, two_models, details):
    results, chance, study = two_models
    with pytest.raises(ValueError, match="details"):
        write_comparison_report(tmp_path, results, chance, details, study)
    assert not (tmp_path / "metrics.json").exists()
