"""Report annotation (``kind: annotate``): the phantom annotator reproduces the phantom's truth through Ray
Data and ingest reads its manifest; the rules annotator's agreement per finding; a tiny random local LM
gives invalid answers that are retried exactly once; a fake LM's valid, prose-wrapped answers and rewrites;
parts are reused on a rerun; nothing of a report is printed; spec and prompt errors."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray.data  # noqa: F401  (its loggers bind the stderr of import time: not a test's capsys, closed later)
import yaml

from brainvlp.annotate import job
from brainvlp.annotate.base import annotate_reports, first_json_object, parse_answer
from brainvlp.annotate.config import (
    AnnotateSpec,
    LMAnnotatorConfig,
    RulesAnnotatorConfig,
    default_prompt,
    read_prompts,
)
from brainvlp.annotate.job import run_annotate
from brainvlp.annotate.lm import LMAnnotator, resolve_engine
from brainvlp.annotate.rules import RulesAnnotator
from brainvlp.data.manifest import ManifestColumns, read_records, read_studies
from brainvlp.errors import UserError
from brainvlp.findings import LOCATIONS, NORMAL_CLAUSE
from brainvlp.inputs import check_inputs
from brainvlp.phantom.generate import FINDING_COLUMNS, PhantomConfig, generate_phantom
from brainvlp.pipeline import load_spec
from brainvlp.spec import SpecError, parse
from conftest import save_tiny_llama

IDS = ["patient_id", "study_id"]
# Finding values specific enough that finding one in the console means a value leaked.
VALUES = (*LOCATIONS, "supratentorial", "infratentorial", "transtentorial", "<1cm", "1-2cm", ">2cm")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_phantom(PhantomConfig(num_studies=12, num_patients=10, shape=(24, 24, 24)), out)
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_records(str(path), "utf-8", IDS).rows]


def _truth(phantom: Path) -> dict[str, dict[str, Any]]:
    return {row["study_id"]: json.loads(row["findings"]) for row in _rows(phantom / "manifest.csv")}


def _spec(phantom: Path, annotator: dict[str, Any], **extra: Any) -> AnnotateSpec:
    return parse(AnnotateSpec, {"manifest": str(phantom / "manifest.csv"), "annotator": annotator, **extra})


def _no_text_leaks(phantom: Path, *texts: str) -> None:
    """No report line and no specific finding value in ``texts`` (console output, summary)."""
    lines = {line.strip() for row in _rows(phantom / "manifest.csv") for line in row["report"].splitlines()}
    for text in texts:
        assert not [line for line in lines if len(line) > 12 and line in text]
        assert not [value for value in VALUES if value in text]


def test_phantom_annotations_equal_the_truth_and_ingest_reads_them(
    local_ray, phantom: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "annotate"
    summary = run_annotate(_spec(phantom, {"name": "phantom", "batch_size": 4}, rows_per_shard=5), out)
    assert summary["rows"] == summary["ok"] == 12 and summary["invalid"] == {}
    assert summary["parts"] == {"total": 3, "annotated": 3, "reused": 0}
    rows, truth = _rows(out / "manifest.parquet"), _truth(phantom)
    assert [r["study_id"] for r in rows] == [r["study_id"] for r in _rows(phantom / "manifest.csv")]
    assert all(json.loads(r["findings"]) == truth[r["study_id"]] for r in rows)  # 100 % agreement
    assert {r["annotation_status"] for r in rows} == {"ok"}
    studies, rejects = read_studies(out / "manifest.parquet", ManifestColumns(), ("t1c", "flair"))
    assert len(studies) == 12 and not rejects  # ingest's reader accepts every row, findings included
    assert all(Path(s["images"]["t1c"]).is_file() and Path(s["mask"]).is_file() for s in studies)
    console = capsys.readouterr()
    assert "throughput" in console.out and "projection: 80,000 reports on 8 GPUs" in console.out
    _no_text_leaks(phantom, console.out, console.err, (out / "summary.json").read_text())

    # A rerun reuses every part: the annotator is not called again.
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a finished part was annotated again")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "_annotate_parts", refuse)
        again = run_annotate(_spec(phantom, {"name": "phantom", "batch_size": 4}, rows_per_shard=5), out)
    assert again["parts"] == {"total": 3, "annotated": 0, "reused": 3} and again["ok"] == 12
    assert _rows(out / "manifest.parquet") == rows


def test_an_interrupted_run_redoes_only_the_missing_part(local_ray, phantom: Path, tmp_path: Path) -> None:
    spec, out = _spec(phantom, {"name": "phantom"}, rows_per_shard=5, output_format="jsonl"), tmp_path / "a"
    run_annotate(spec, out)
    (out / "_parts" / "part-00001.json").unlink()  # as if the run died before part 1's record
    seen: list[list[int]] = []
    original = job._annotate_parts

    def spy(spec: Any, prompts: Any, chunks: Any, todo: list[int], *rest: Any) -> None:
        seen.append(list(todo))
        original(spec, prompts, chunks, todo, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(job, "_annotate_parts", spy)
        summary = run_annotate(spec, out)
    assert seen == [[1]] and summary["parts"]["reused"] == 2 and summary["ok"] == 12
    assert len(_rows(out / "manifest.jsonl")) == 12


def _agreement(found: dict[str, Any], truth: dict[str, Any], key: str) -> bool:
    if key == "locations":
        return sorted(found.get(key) or []) == sorted(truth.get(key) or [])
    return found.get(key) == truth.get(key)


def test_rules_annotator_agreement_per_finding(local_ray, phantom: Path, tmp_path: Path) -> None:
    summary = run_annotate(_spec(phantom, {"name": "rules"}), tmp_path / "rules")
    assert summary["rows"] == 12 and summary["ok"] == 12
    truth = _truth(phantom)
    rows = _rows(tmp_path / "rules" / "manifest.parquet")
    agreement = {
        key: sum(_agreement(json.loads(r["findings"]), truth[r["study_id"]], key) for r in rows) / len(rows)
        for key in FINDING_COLUMNS
    }
    print("rules vs phantom truth, agreement per finding:", json.dumps(agreement))
    # Unstated yes/no findings are false (brat's rule), as the phantom's truth has them.
    assert min(agreement.values()) >= 0.8, agreement
    unknown = RulesAnnotator(RulesAnnotatorConfig(unstated="unknown"))
    assert "prior_surgery" not in json.loads(unknown.annotate(["Normal MRI of the brain."])[0].findings)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory, phantom: Path) -> Path:
    """A tiny random Llama and its tokenizer saved as a local model directory."""
    texts = [default_prompt("findings"), default_prompt("rewrite")]
    texts += [row["report"] for row in _rows(phantom / "manifest.csv")]
    return save_tiny_llama(tmp_path_factory.mktemp("lm"), texts, vocab_size=600)


def test_a_random_local_lm_is_retried_once_then_left_without_findings(
    local_ray, phantom: Path, tiny_lm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotator = {
        "name": "lm", "path": str(tiny_lm), "num_gpus": 0, "batch_size": 4,
        "max_new_tokens": 8, "max_input_tokens": 2048,
    }  # fmt: skip
    out = tmp_path / "lm"
    summary = run_annotate(_spec(phantom, annotator, rows_per_shard=6), out)
    assert summary["ok"] == 0 and summary["invalid"] == {"invalid_json": 12} and summary["retried"] == 12
    parts = [pq.read_table(p).to_pylist() for p in sorted((out / "_parts").glob("part-*.parquet"))]
    assert [r["calls"] for part in parts for r in part] == [2] * 12  # exactly one retry each
    rows = _rows(out / "manifest.parquet")
    assert all(r["findings"] is None and r["annotation_status"] == "invalid_json" for r in rows)
    assert [r["report"] for r in rows] == [r["report"] for r in _rows(phantom / "manifest.csv")]  # no rewrite
    assert summary["reports_per_s"] > 0 and summary["projection"]["hours"] > 0
    console = capsys.readouterr()
    _no_text_leaks(phantom, console.out, console.err, (out / "summary.json").read_text())
    with capsys.disabled():  # the measured figures, with pytest -s
        print("\n" + "\n".join(line for line in console.out.splitlines() if "annotate:" in line))


VALID = {"enhancing_lesion": True, "locations": ["left_frontal_lobe"], "lesion_count_bucket": "one"}


class FakeLM(LMAnnotator):
    """The annotator's method around a scripted model: prompts are recorded, answers follow the text."""

    def _load(self) -> None:
        self.seen: list[str] = []

    def _generate(self, prompts: list[str]) -> list[str | None]:
        self.seen += prompts
        return [self.reply(prompt) for prompt in prompts]

    def reply(self, prompt: str) -> str | None:
        if prompt.rstrip().endswith("Rewritten report:"):
            return None if "HUGE" in prompt else "  Rewritten: " + prompt.split("Brain MRI report:\n")[1][:6]
        if "Rewritten: always" in prompt:
            return '{"side": "up"}'  # off the schema, also when retried
        if "Rewritten: prose" in prompt and "could not be used" not in prompt:
            return "I think the answer is yes."
        return "Sure, here it is:\n```json\n" + json.dumps(VALID) + "\n```\n{not this one}"


def test_the_lm_method_rewrites_retries_with_the_reason_and_reads_wrapped_json() -> None:
    config = LMAnnotatorConfig(path="unused", rewrite=True)
    annotator = FakeLM(config, read_prompts(config))
    reports = ["good report", "prose report", "always wrong", "", "HUGE report", None]
    results = annotate_reports(annotator, reports)
    assert [r.status for r in results] == [
        "ok", "ok", "invalid_findings", "empty_report", "too_long", "empty_report"
    ]  # fmt: skip
    assert json.loads(results[0].findings) == VALID and results[0].report == "Rewritten: good r"
    assert [r.calls for r in results] == [1, 2, 2, 0, 0, 0]
    assert results[2].findings is None and results[2].report == "Rewritten: always"
    retries = [p for p in annotator.seen if "could not be used" in p]
    assert len(retries) == 2 and "holds no JSON object" in retries[0]
    assert "'side' must be one of" in retries[1]  # the rule broken, not the answer
    findings_prompts = [p for p in annotator.seen if "JSON answer:" in p]
    assert len(findings_prompts) == 3 + 2 and all("Rewritten:" in p for p in findings_prompts)
    assert sum(1 for p in annotator.seen if "HUGE" in p) == 1  # a too-long row goes no further


def test_the_first_json_object_is_found_within_bounds() -> None:
    assert first_json_object('x {"a": [1, {"b": 2}]} {"c": 3}') == {"a": [1, {"b": 2}]}
    assert first_json_object("{broken {also} [1] {} tail") == {}
    assert first_json_object("no object [1, 2]") is None
    assert parse_answer('{"side": NaN}').status == "invalid_json"
    assert parse_answer('{"locations": "left"}').status == "invalid_findings"
    started = time.perf_counter()
    assert first_json_object("{" * 1_000_000) is None
    assert time.perf_counter() - started < 5


def _write_spec(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "annotate.yaml"
    path.write_text(yaml.safe_dump({"kind": "annotate", "output_root": str(tmp_path / "runs"), **data}))
    return path


def test_spec_errors_name_the_valid_annotators_and_the_placeholder(
    tmp_path: Path, phantom: Path, tiny_lm: Path
) -> None:
    manifest = str(phantom / "manifest.csv")
    with pytest.raises(SpecError, match=r"annotator\.name: 'gpt4' is not one of: lm, phantom, rules"):
        load_spec(_write_spec(tmp_path, {"manifest": manifest, "annotator": {"name": "gpt4"}}))
    with pytest.raises(SpecError, match=r"annotator\.name: required; choose one of: lm, phantom, rules"):
        load_spec(_write_spec(tmp_path, {"manifest": manifest}))
    with pytest.raises(SpecError, match=r"annotator\.path: the local directory of the model is required"):
        load_spec(_write_spec(tmp_path, {"manifest": manifest, "annotator": {"name": "lm"}}))
    rules = {"name": "rules", "rewrite": True}  # only an lm rewrites
    with pytest.raises(SpecError, match=r"annotator\.rewrite: unknown key"):
        load_spec(_write_spec(tmp_path, {"manifest": manifest, "annotator": rules}))
    with pytest.raises(SpecError, match=r"rows_per_shard: must be >= 1"):
        load_spec(_write_spec(tmp_path, {"manifest": manifest, "annotator": {"name": "rules"},
                                         "rows_per_shard": 0}))  # fmt: skip
    prompt = tmp_path / "findings.txt"
    prompt.write_text("Answer as JSON: {report")
    lm = {"name": "lm", "path": str(tiny_lm), "findings_prompt": str(prompt)}
    spec = load_spec(_write_spec(tmp_path, {"manifest": manifest, "annotator": lm}))
    with pytest.raises(UserError, match=r"annotator\.findings_prompt: .* must contain the placeholder"):
        check_inputs(spec)
    with pytest.raises(UserError, match=r"placeholder \{report\}"):
        read_prompts(spec.annotator)
    prompt.write_text("Answer as JSON: {report}")
    assert check_inputs(spec) == []
    spec.annotator.clauses = True  # and the template does not ask them
    with pytest.raises(UserError, match=r"findings_prompt: .* clauses: true needs the placeholder"):
        check_inputs(spec)
    spec.annotator.clauses = False
    spec.annotator.path = str(tmp_path)  # no config.json there
    with pytest.raises(UserError, match=r"annotator\.path: .* holds no config\.json"):
        check_inputs(spec)


def test_a_pipeline_ingests_the_annotated_manifest(tmp_path: Path, tiny_pipeline: Any) -> None:
    data = tiny_pipeline(tmp_path)
    del data["pretrain"], data["evaluate"]
    data["annotate"] = {"annotator": {"name": "phantom"}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    spec = load_spec(path)
    run_dir = Path(data["output_root"]) / "tiny"
    assert spec.steps == ("phantom", "annotate", "ingest")
    assert spec.annotate.manifest == str(run_dir / "phantom" / "manifest.csv")
    assert spec.ingest.manifest == str(run_dir / "annotate" / "manifest.parquet")
    assert spec.annotate.sequences == spec.ingest.sequences
    assert check_inputs(spec) == []  # both manifests are produced by earlier steps


class ClauseLM(FakeLM):
    """Answers without clauses first, with them when told they are missing."""

    def reply(self, prompt: str) -> str | None:
        if "'clauses' is missing" in prompt:
            return json.dumps({**VALID, "clauses": [dict(NORMAL_CLAUSE)]})
        return json.dumps(VALID)


def test_clauses_are_asked_for_and_an_answer_without_them_is_retried(tmp_path: Path) -> None:
    plain = read_prompts(LMAnnotatorConfig(path="unused"))["findings"]
    assert '"clauses"' not in plain and "{clauses}" not in plain
    config = LMAnnotatorConfig(path="unused", clauses=True)
    prompts = read_prompts(config)
    assert '"clauses": A list with one object per abnormality' in prompts["findings"]
    assert "{clauses}" not in prompts["findings"] and prompts["findings"].count("{report}") == 1
    annotator = ClauseLM(config, prompts)
    [result] = annotate_reports(annotator, ["a report"])
    assert result.status == "ok" and result.calls == 2
    assert json.loads(result.findings)["clauses"] == [dict(NORMAL_CLAUSE)]
    own = tmp_path / "findings.txt"
    own.write_text("Answer as JSON: {report}")  # no {clauses}
    with pytest.raises(UserError, match=r"findings_prompt: .* clauses: true needs the placeholder"):
        read_prompts(LMAnnotatorConfig(path="unused", clauses=True, findings_prompt=str(own)))


class _FakeVLLM:
    """Stands in for the ``vllm`` module (not installable without a GPU): records the engine's settings and
    requests, answers each request with valid findings."""

    def __init__(self, tokenizer_path: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True)
        self.engine_kwargs: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        fake = self

        class LLM:
            def __init__(self, **kwargs: Any) -> None:
                fake.engine_kwargs = kwargs

            def get_tokenizer(self) -> Any:
                return fake.tokenizer

            def generate(self, requests: list[dict[str, Any]], sampling: Any, use_tqdm: bool) -> list[Any]:
                fake.requests += requests
                fake.sampling = sampling
                text = json.dumps(VALID)
                return [type("Out", (), {"outputs": [type("C", (), {"text": text})]}) for _ in requests]

        self.LLM = LLM
        self.SamplingParams = lambda **kwargs: kwargs


def test_the_vllm_engine_gets_token_ids_and_greedy_sampling(
    tiny_lm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = _FakeVLLM(tiny_lm)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    prompts = read_prompts(LMAnnotatorConfig(path=str(tiny_lm)))
    length = len(fake.tokenizer(prompts["findings"].replace("{report}", "Small lesion."))["input_ids"])
    config = LMAnnotatorConfig(
        path=str(tiny_lm), engine="vllm", max_input_tokens=length + 20, max_new_tokens=64
    )
    annotator = LMAnnotator(config, prompts)
    results = annotate_reports(annotator, ["Small lesion.", "word " * 400])
    assert [r.status for r in results] == ["ok", "too_long"] and json.loads(results[0].findings) == VALID
    assert fake.sampling == {"temperature": 0.0, "max_tokens": 64}
    assert fake.engine_kwargs["model"] == str(tiny_lm) and fake.engine_kwargs["max_model_len"] == length + 84
    [request] = fake.requests  # the too-long prompt never reaches the engine
    expected = fake.tokenizer(annotator.prompt("findings", "Small lesion."))["input_ids"]
    assert request == {"prompt_token_ids": list(expected)}
    assert resolve_engine("auto", gpu=False) == "transformers" and resolve_engine("vllm", gpu=False) == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "vllm" else None)
    assert resolve_engine("auto", gpu=True) == "vllm"
