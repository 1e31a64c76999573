"""The local GREEN judge: its response format parsed against hand-counted examples, unparsable responses
counted rather than guessed, a tiny Llama judge loaded from a local path (the path a real GREEN model
takes), as a Ray task, and its counts in the report-generation table."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import yaml

from brainvlp.evaluate.green_judge import (
    DEFAULT_PROMPT,
    JudgeConfig,
    check_prompt,
    judge_pairs,
    parse_response,
    run_judge,
    unparsed,
)
from brainvlp.pipeline import load_spec
from brainvlp.spec import SpecError
from conftest import save_tiny_llama

RESPONSE = """[Explanation]:
The candidate places the mass on the wrong side and misses the midline shift.

[Clinically Significant Errors]:
(a) False report of a finding: 1. Oedema in the right occipital lobe
(b) Missing a finding present in the reference: 1. Midline shift
(c) Misidentification of a finding's anatomic location/position: 1. Mass side
(d) Misassessment of the severity of a finding: 0.
(e) Mentioning a comparison that isn't in the reference: 0.
(f) Omitting a comparison detailing a change from a prior study: 0.

[Clinically Insignificant Errors]:
(a) False report of a finding: 2. Sinus mucosal thickening; cisterns
(b) Missing a finding present in the reference: 0.
(c) Misidentification of a finding's anatomic location/position: 0.
(d) Misassessment of the severity of a finding: 0.
(e) Mentioning a comparison that isn't in the reference: 0.
(f) Omitting a comparison detailing a change from a prior study: 0.

[Matched Findings]:
3. Enhancing mass; perilesional oedema; no hydrocephalus
"""


def test_a_response_is_parsed_into_greens_categories() -> None:
    counts = parse_response(RESPONSE)
    assert counts["false_findings"] == 1 and counts["missing_findings"] == 1  # significant errors only
    assert counts["location_errors"] == 1 and counts["severity_errors"] == 0
    assert counts["matched_findings"] == 3
    assert counts["green"] == pytest.approx(3 / (3 + 3))  # insignificant errors do not count


def test_nothing_matched_scores_zero_as_in_greens_implementation() -> None:
    response = RESPONSE.replace("3. Enhancing mass; perilesional oedema; no hydrocephalus", "0.")
    assert parse_response(response)["green"] == 0.0


@pytest.mark.parametrize(
    "response",
    [
        "",
        "The reports agree.",
        RESPONSE.replace(
            "(f) Omitting a comparison detailing a change from a prior study: 0.\n\n[Clinically In",
            "[Clinically In",
        ),
        RESPONSE.split("[Matched Findings]")[0],
        RESPONSE.replace("3. Enhancing", "Three: enhancing"),
    ],
    ids=["empty", "prose", "no-f-line", "no-matched", "matched-in-words"],
)
def test_a_response_off_the_format_is_unparsed_not_guessed(response: str) -> None:
    counts = parse_response(response)
    assert all(math.isnan(value) for value in counts.values())
    assert unparsed([counts, parse_response(RESPONSE)]) == 1


def test_runaway_responses_parse_in_linear_time() -> None:
    started = time.perf_counter()
    parse_response("(a) " * 200_000 + "[Clinically Significant Errors]:" + "(b)" * 100_000)
    assert time.perf_counter() - started < 5


def test_prompt_templates_are_checked() -> None:
    assert check_prompt(DEFAULT_PROMPT) is None
    assert "{reference}" in check_prompt("only {candidate}")
    assert "placeholders" in check_prompt("{reference} {candidate} {other}")


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama and its tokenizer saved as a judge model directory (as GREEN's would be)."""
    return save_tiny_llama(tmp_path_factory.mktemp("judge"), [DEFAULT_PROMPT, RESPONSE] * 3)


def test_a_local_judge_model_runs_and_its_garbage_is_counted(judge_dir: Path) -> None:
    config = JudgeConfig(path=str(judge_dir), batch_size=2, max_new_tokens=8, num_gpus=0)
    pairs = [("Left frontal mass.", "Right frontal mass."), ("Normal study.", "Normal study."), ("a", "b")]
    results = judge_pairs(config, pairs)
    assert len(results) == 3 and unparsed(results) == 3  # a random model does not follow the format


def test_the_judge_runs_as_one_ray_task_and_judges_each_pair_once(local_ray, judge_dir: Path) -> None:
    config = JudgeConfig(path=str(judge_dir), batch_size=4, max_new_tokens=4, num_gpus=0)
    pairs = [("x y", "x"), ("x y", "x"), ("z", "z")]
    results = run_judge(config, pairs)
    assert len(results) == 3 and results[0] is not results[2]


def _rg_spec(tmp_path: Path, judge: dict) -> Path:
    spec = {
        "kind": "report_generation",
        "run_name": "rg",
        "output_root": str(tmp_path),
        "shards": str(tmp_path / "shards"),
        "models": [{"name": "scratch", "init": "scratch", "vision": {"name": "resnet"}}],
        "scoring": {"judge": judge},
    }
    path = tmp_path / "rg.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_judge_settings_are_checked_with_the_spec(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"scoring\.judge\.path"):
        load_spec(_rg_spec(tmp_path, {"num_gpus": 1}))
    with pytest.raises(SpecError, match="unknown extractor 'radgraph'; choose one of: phantom"):
        spec = yaml.safe_load(_rg_spec(tmp_path, {"path": "x"}).read_text())
        spec["scoring"] = {"extractor": "radgraph"}
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(spec))
        load_spec(tmp_path / "bad.yaml")
