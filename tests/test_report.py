"""Retrieval report files: strict JSON, a readable markdown table with chance, and the recall@k curve."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from brainvlp.evaluate.report import CURVE_FILE, format_retrieval_table, write_retrieval_report
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


def test_writes_json_markdown_and_curve(tmp_path: Path, evaluation):
    metrics, chance, ranks = evaluation
    metrics["image_to_text"]["P@5(F)"] = float("nan")  # must become null, not the non-standard NaN
    details = {"model": "dual_encoder_small", "export": tmp_path / "export", "split": "test", "started": "t0"}
    report = write_retrieval_report(
        tmp_path / "run", metrics, chance, title="Retrieval on phantom", details=details, ranks=ranks
    )
    assert report == tmp_path / "run" / "report.md"

    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["metrics"]["text_to_image"]["R@1"] == metrics["text_to_image"]["R@1"]
    assert record["metrics"]["image_to_text"]["P@5(F)"] is None
    assert record["chance"]["R@1"] == pytest.approx(1 / 60)
    assert record["details"]["export"] == str(tmp_path / "export")

    text = report.read_text()
    assert text.startswith("# Retrieval on phantom\n")
    assert format_retrieval_table(metrics, chance) in text
    for expected in ("dual_encoder_small", "| split | test |", "| candidates per query | 60 |", "optimistic"):
        assert expected in text
    assert f"]({CURVE_FILE})" in text
    assert (tmp_path / "run" / CURVE_FILE).read_bytes().startswith(b"\x89PNG")


def test_without_ranks_there_is_no_curve(tmp_path: Path, evaluation):
    metrics, chance, _ = evaluation
    report = write_retrieval_report(tmp_path, metrics, chance, title="t", details={})
    assert not (tmp_path / CURVE_FILE).exists()
    assert "not drawn" in report.read_text()


@pytest.mark.parametrize(
    "details",
    [{"note": "FINDINGS: There is a 2 cm enhancing mass. " * 10}, {"note": "line\nbreak"}, {"ids": ["p1"]}],
)
def test_refuses_free_text_details(tmp_path: Path, evaluation, details):
    metrics, chance, _ = evaluation
    with pytest.raises(ValueError, match="details"):
        write_retrieval_report(tmp_path, metrics, chance, title="t", details=details)
    assert not (tmp_path / "metrics.json").exists()


def test_rejects_ranks_outside_the_candidate_pool(tmp_path: Path, evaluation):
    metrics, chance, _ = evaluation
    with pytest.raises(ValueError, match="ranks"):
        write_retrieval_report(
            tmp_path, metrics, chance, title="t", details={}, ranks={"text_to_image": [1, 61]}
        )
    assert not (tmp_path / "metrics.json").exists()  # nothing half-written
