"""Report generation's example reports (brat Fig. 10): sentences coloured by agreeing / wrong / missing
findings, escaped, shown only on opt-in; the whole report rendered in headless Chromium."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from brainvlp.evaluate.html import CHROMIUM_BINARIES, screenshot
from brainvlp.phantom.extract import extract_phantom_findings
from brainvlp.phantom.reports import Lesion, study_findings, write_report
from brainvlp.pipeline import load_spec
from brainvlp.reportgen.examples import example_block
from brainvlp.reportgen.scoring import score_runs
from brainvlp.reportgen.scoring import write_report as write_rg_report
from test_green_judge import RESPONSE

FRONTAL = Lesion("left_frontal_lobe", (2.5, 2.0, 1.5), True, True)
CEREBELLUM = Lesion("cerebellum", (1.2, 1.0, 0.8), False, False)
OCCIPITAL = Lesion("right_occipital_lobe", (1.2, 1.0, 0.8), False, False)


def _study(lesions: list[Lesion], seed: int = 0) -> tuple[str, str]:
    text = write_report(
        lesions, white_matter_disease=False, cavity=None, shift_mm=6, rng=np.random.default_rng(seed)
    )
    return text, json.dumps(study_findings(lesions, False, False))


def _row(reference: list[Lesion], generated: list[Lesion], study: str = "s0") -> dict:
    text, findings = _study(reference)
    return {"study_id": study, "reference": text, "generated": _study(generated, 1)[0], "findings": findings}


def test_sentences_are_coloured_by_their_findings() -> None:
    block = example_block(_row([FRONTAL, CEREBELLUM], [FRONTAL, OCCIPITAL]), extract_phantom_findings)
    # The frontal lesion agrees on both sides; the occipital one is wrong; the cerebellar one is missing.
    agree = [s for s in block.split('<span class="finding-agree">')[1:]]
    assert any("frontal" in s.split("</span>")[0] for s in agree)
    wrong = block.split('<span class="finding-wrong">')[1:]
    assert wrong and all("occipital" in s.split("</span>")[0] for s in wrong)
    missing = block.split('<span class="finding-missing">')[1:]
    assert missing and all("cerebell" in s.split("</span>")[0] for s in missing)
    assert "3 misplaced" in block  # the location, the side and infra- vs supratentorial and "GREEN" in block


def test_a_perfect_report_has_nothing_wrong_or_missing() -> None:
    block = example_block(_row([FRONTAL], [FRONTAL]), extract_phantom_findings)
    assert "finding-agree" in block
    assert "finding-wrong" not in block and "finding-missing" not in block
    assert "0 false, 0 missing, 0 misplaced, 0 misjudged; GREEN 1.00" in block


def test_report_text_is_escaped_and_garbage_is_harmless() -> None:
    row = _row([FRONTAL], [])
    row["generated"] = '<script>alert(1)</script> left frontal lobe mass & "<b>'
    block = example_block(row, extract_phantom_findings)
    assert "<script>" not in block and "&lt;script&gt;" in block and "&amp;" in block
    plain = example_block({**row, "generated": ""}, None)
    assert "finding-" not in plain and "counts" not in plain


def _run_dir(tmp_path: Path, show_examples: bool, **scoring) -> tuple[Path, object]:
    """A finished report-generation run (two models, two seeds) without the training: the scoring and the
    report read only the runs' test tables and histories."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_file = tmp_path / "rg.yaml"
    spec = {
        "kind": "report_generation",
        "run_name": "rg",
        "output_root": str(tmp_path),
        "shards": str(tmp_path / "shards"),
        "models": [
            {"name": "scratch", "init": "scratch", "vision": {"name": "resnet", "layers": [1, 1, 1, 1]}},
            {"name": "brat", "init": "scratch", "vision": {"name": "resnet", "layers": [1, 1, 1, 1]}},
        ],
        "seeds": 2,
        "scoring": {
            "show_examples": show_examples,
            "num_examples": 2,
            "bootstrap": {"resamples": 50},
            **scoring,
        },
    }
    spec_file.write_text(yaml.safe_dump(spec))
    loaded = load_spec(spec_file)
    run_dir = tmp_path / "rg"
    pairs = [([FRONTAL, CEREBELLUM], [FRONTAL, OCCIPITAL]), ([FRONTAL], [FRONTAL]), ([OCCIPITAL], [])]
    for model in ("scratch", "brat"):
        for seed in (0, 1):
            directory = run_dir / model / f"seed{seed}"
            directory.mkdir(parents=True)
            rows = [_row(ref, gen, f"s{k}") for k, (ref, gen) in enumerate(pairs)]
            pq.write_table(pa.Table.from_pylist(rows), directory / "test.parquet")
            history = [{"epoch": e, "loss": 3.0 / e + seed, "dev_loss": 3.5 / e} for e in (1, 2, 3)]
            (directory / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history))
    return run_dir, loaded


def test_examples_appear_only_on_opt_in(tmp_path: Path) -> None:
    run_dir, spec = _run_dir(tmp_path / "off", show_examples=False)
    report = write_rg_report(spec, score_runs(spec, run_dir), run_dir).read_text()
    assert "Examples" not in report and "frontal" not in report
    assert "frontal" not in (run_dir / "metrics.json").read_text()

    run_dir, spec = _run_dir(tmp_path / "on", show_examples=True)
    report = write_rg_report(spec, score_runs(spec, run_dir), run_dir).read_text()
    assert "## Examples (seed 0)" in report and report.count('<table class="example">') == 4
    page = (run_dir / "report.html").read_text()
    assert 'class="finding-wrong"' in page and "data:image/png;base64," in page


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    if not any(shutil.which(name) for name in CHROMIUM_BINARIES):
        pytest.skip("chromium not installed")
    run_dir, spec = _run_dir(tmp_path, show_examples=True)
    write_rg_report(spec, score_runs(spec, run_dir), run_dir)
    png = screenshot(run_dir / "report.html", tmp_path / "shot.png", width=1000, height=2400, timeout_s=60)
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    grey = rgb.mean(axis=2)
    assert grey.std() > 10 and (grey < 245).mean() > 0.03  # text, table and curves drawn
    # The three highlight colours of the example sentences made it onto the page.
    for colour in ((0xDA, 0xFB, 0xE1), (0xFF, 0xD7, 0xD5), (0xFF, 0xF1, 0xC2)):
        assert (np.abs(rgb - np.array(colour)).max(axis=2) <= 3).sum() > 200, colour


def test_a_judge_model_scores_the_clinical_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from brainvlp.evaluate import green_judge

    calls = []

    def judge(config, pairs):  # one response follows GREEN's format, the next does not
        calls.append(len(pairs))
        return [green_judge.parse_response(RESPONSE if k % 2 == 0 else "") for k in range(len(pairs))]

    monkeypatch.setattr(green_judge, "run_judge", judge)
    run_dir, spec = _run_dir(tmp_path, show_examples=False, judge={"path": "/models/green"})
    results = score_runs(spec, run_dir)
    assert calls == [12]  # every model's and seed's reports in one judge task
    metrics = results["models"]["brat"]["metrics"]
    assert metrics["false_findings"][0] == 1.0 and metrics["green"][0] == pytest.approx(0.5)
    assert "location_accuracy" not in metrics and results["models"]["brat"]["judge_unparsed"] == 3
    report = write_rg_report(spec, results, run_dir).read_text()
    assert "judged by the model in `/models/green`" in report and "brat 3/6" in report
    assert "location_errors ↓" in report
