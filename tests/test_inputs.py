"""Input checks (brainvlp.inputs): what validate finds without reading data, each a one-line UserError that
names the spec path and the file; inputs an earlier pipeline step makes are not checked."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from brainvlp import inputs
from brainvlp.data.shards import FORMAT
from brainvlp.downstream.config import DownstreamSpec
from brainvlp.errors import MissingInputError, UserError
from brainvlp.inputs import check_inputs
from brainvlp.pipeline import load_spec
from brainvlp.reportgen.config import ReportGenSpec
from brainvlp.spec import parse

REPO = Path(__file__).resolve().parents[1]
SHAPE = [1, 16, 16, 16]  # C x D x H x W of the fake shards and exports


def spec_of(tmp_path: Path, data: dict[str, Any], *overrides: str) -> Any:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({"output_root": str(tmp_path / "runs"), **data}))
    return load_spec(path, overrides)


def error_of(spec: Any, kind: type[Exception] = UserError) -> str:
    with pytest.raises(kind) as info:
        check_inputs(spec)
    message = str(info.value)
    assert "\n" not in message
    return message


def fake_shards(directory: Path, **changes: Any) -> Path:
    """A shards directory as validation sees it: only index.json (no shard is read)."""
    directory.mkdir(parents=True, exist_ok=True)
    index = {
        "format": FORMAT,
        "sequences": ["t1c"],
        "volume_shape": SHAPE,
        "tokenizer": "builtin:tiny",
        "splits": {"train": 40, "dev": 5, "test": 10},
        **changes,
    }
    (directory / "index.json").write_text(json.dumps(index))
    return directory


def fake_export(directory: Path, **changes: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": {"vision": {"name": "resnet"}},
        "in_channels": SHAPE[0],
        "volume_shape": SHAPE[1:],
        "tokenizer": "builtin:tiny",
        "sequences": ["t1c"],
        **changes,
    }
    (directory / "model.json").write_text(json.dumps(meta))
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def ingest(manifest: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "ingest", "manifest": manifest, "tokenizer": "builtin:tiny", **extra}


def pretrain(shards: Path | str, **train: Any) -> dict[str, Any]:
    return {
        "kind": "pretrain",
        "data": {"shards": str(shards)},
        "model": {"text": {"path": "builtin:tiny"}},
        "train": {"batch_size": 4, **train},
    }


# --- ingest ---


def test_a_missing_manifest_names_its_spec_path_and_file(tmp_path: Path) -> None:
    message = error_of(spec_of(tmp_path, ingest(str(tmp_path / "nope.csv"))), MissingInputError)
    assert message == f"manifest: {tmp_path / 'nope.csv'} does not exist"


def test_a_manifest_must_be_a_file_of_a_known_format(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    assert "is a directory, not a file" in error_of(spec_of(tmp_path, ingest(str(tmp_path / "dir.csv"))))
    (tmp_path / "m.xlsx").write_text("x")
    assert "unsupported format '.xlsx'" in error_of(spec_of(tmp_path, ingest(str(tmp_path / "m.xlsx"))))


def test_an_existing_manifest_passes_local_or_as_a_file_uri(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("patient_id,study_id\n")
    assert check_inputs(spec_of(tmp_path, ingest(str(tmp_path / "m.csv")))) == []
    assert check_inputs(spec_of(tmp_path, ingest(f"file://{tmp_path / 'm.csv'}"))) == []
    missing = f"file://{tmp_path / 'gone.csv'}"
    assert "does not exist" in error_of(spec_of(tmp_path, ingest(missing)), MissingInputError)


def test_an_unknown_uri_scheme_fails(tmp_path: Path) -> None:
    assert "unsupported filesystem scheme" in error_of(spec_of(tmp_path, ingest("nofs://bucket/m.csv")))


def test_a_filesystem_that_cannot_be_reached_is_a_warning(tmp_path: Path, monkeypatch) -> None:
    def no_credentials(uri: str) -> Any:
        raise OSError("no credentials found")

    monkeypatch.setattr(inputs, "filesystem_of", no_credentials)
    warnings = check_inputs(spec_of(tmp_path, ingest("s3://bucket/m.csv")))
    assert warnings == [
        "manifest: cannot check s3://bucket/m.csv from here (no credentials found); the job will read it"
    ]


def test_a_bucket_that_does_not_answer_is_a_warning_within_the_timeout(tmp_path: Path, monkeypatch) -> None:
    class Hanging:
        def get_file_info(self, path: str) -> Any:
            time.sleep(5)

    monkeypatch.setattr(inputs, "filesystem_of", lambda uri: (Hanging(), "bucket/m.csv"))
    monkeypatch.setattr(inputs, "URI_TIMEOUT_S", 0.2)
    start = time.perf_counter()
    (warning,) = check_inputs(spec_of(tmp_path, ingest("gs://bucket/m.csv")))
    assert time.perf_counter() - start < 3
    assert "no answer within 0.2 s" in warning


def test_a_pseudonym_key_file_is_checked_unless_the_environment_holds_the_key(tmp_path, monkeypatch) -> None:
    (tmp_path / "m.csv").write_text("x")
    data = ingest(str(tmp_path / "m.csv"), pseudonym_key_file=str(tmp_path / "key"))
    monkeypatch.delenv("BRAINVLP_PSEUDONYM_KEY", raising=False)
    assert error_of(spec_of(tmp_path, data)).startswith("pseudonym_key_file: ")
    monkeypatch.setenv("BRAINVLP_PSEUDONYM_KEY", "k" * 32)
    assert check_inputs(spec_of(tmp_path, data)) == []


@pytest.mark.parametrize(
    ("tokenizer", "expected"),
    [
        ("builtin:nope", "unknown tokenizer 'builtin:nope'"),
        ("./models/biomedbert", "neither a local directory nor a model in the Hugging Face cache"),
        ("someorg/somemodel", "neither a local directory nor a model in the Hugging Face cache"),
    ],
)
def test_a_tokenizer_is_builtin_local_or_cached(tmp_path: Path, monkeypatch, tokenizer, expected) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "m.csv").write_text("x")
    message = error_of(spec_of(tmp_path, ingest(str(tmp_path / "m.csv"), tokenizer=tokenizer)))
    assert message.startswith("tokenizer: ") and expected in message


def test_a_cached_hub_model_or_a_local_directory_passes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub" / "models--someorg--somemodel").mkdir(parents=True)
    (tmp_path / "local-tokenizer").mkdir()
    (tmp_path / "m.csv").write_text("x")
    for tokenizer in ("someorg/somemodel", str(tmp_path / "local-tokenizer")):
        assert check_inputs(spec_of(tmp_path, ingest(str(tmp_path / "m.csv"), tokenizer=tokenizer))) == []


# --- shards ---


def test_shards_must_be_an_ingest_output(tmp_path: Path) -> None:
    assert error_of(spec_of(tmp_path, pretrain(tmp_path / "nope"))).startswith("data.shards: ")
    (tmp_path / "empty").mkdir()
    message = error_of(spec_of(tmp_path, pretrain(tmp_path / "empty")), MissingInputError)
    assert message.startswith("data.shards: ") and "holds no index.json" in message
    stale = fake_shards(tmp_path / "stale", format="brainvlp-shards/1")
    assert "re-run the ingest job" in error_of(spec_of(tmp_path, pretrain(stale)))


def test_pretrain_is_checked_against_its_shards(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "shards")
    assert check_inputs(spec_of(tmp_path, pretrain(shards))) == []
    too_big = error_of(spec_of(tmp_path, pretrain(shards, batch_size=64)))
    assert too_big == "train.batch_size: 64 exceeds the 40 training studies"
    other = fake_shards(tmp_path / "other", tokenizer="builtin:minilm")
    assert error_of(spec_of(tmp_path, pretrain(other))).startswith("model.text.path: 'builtin:tiny' differs")


def test_tune_checks_its_base_pretraining(tmp_path: Path) -> None:
    base = pretrain(tmp_path / "nope", eval_every=2)
    del base["kind"]
    data = {"kind": "tune", "base": base, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}
    assert error_of(spec_of(tmp_path, data)).startswith("base.data.shards: ")


# --- exports ---


def evaluate(shards: Path, **extra: Any) -> dict[str, Any]:
    return {"kind": "evaluate", "shards": str(shards), **extra}


def test_evaluate_needs_exports_that_fit_the_shards(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "shards")
    good = fake_export(tmp_path / "good")
    assert check_inputs(spec_of(tmp_path, evaluate(shards, model=str(good)))) == []
    assert error_of(spec_of(tmp_path, evaluate(shards, model=str(tmp_path / "nope")))).startswith("model: ")
    (tmp_path / "bare").mkdir()
    assert "holds no model.json" in error_of(
        spec_of(tmp_path, evaluate(shards, model=str(tmp_path / "bare")))
    )
    weightless = fake_export(tmp_path / "weightless")
    (weightless / "model.safetensors").unlink()
    assert "no model.safetensors" in error_of(spec_of(tmp_path, evaluate(shards, model=str(weightless))))
    minilm = fake_export(tmp_path / "minilm", tokenizer="builtin:minilm")
    message = error_of(spec_of(tmp_path, evaluate(shards, models={"a": str(good), "b": str(minilm)})))
    assert message.startswith("models.b: ") and "token ids of 'builtin:minilm'" in message


def test_evaluate_needs_its_split_and_a_finished_downstream_run(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "shards", splits={"train": 40})
    export = str(fake_export(tmp_path / "export"))
    assert "no studies of split 'test'" in error_of(spec_of(tmp_path, evaluate(shards, model=export)))
    shards = fake_shards(tmp_path / "shards")
    (tmp_path / "ds").mkdir()
    message = error_of(spec_of(tmp_path, evaluate(shards, model=export, downstream=str(tmp_path / "ds"))))
    assert message.startswith("downstream: ") and "holds no metrics.json" in message


def downstream(shards: Path, entry: dict[str, Any]) -> dict[str, Any]:
    task = {"name": "enhancing", "type": "binary", "finding": "enhancing_lesion"}
    return {"kind": "downstream", "shards": str(shards), "task": task, "models": [{"name": "m", **entry}]}


def test_downstream_exports_must_match_the_shards_shape(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "shards")
    good = fake_export(tmp_path / "good")
    assert check_inputs(spec_of(tmp_path, downstream(shards, {"path": str(good)}))) == []
    wide = fake_export(tmp_path / "wide", in_channels=2)
    message = error_of(spec_of(tmp_path, downstream(shards, {"path": str(wide)})))
    assert message.startswith("models.0.path: ") and "C x D x H x W = [2, 16, 16, 16]" in message


def test_a_state_dict_is_a_checkpoint_file(tmp_path: Path) -> None:
    shards = fake_shards(tmp_path / "shards")
    vision = {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [4, 8, 8, 16]}
    (tmp_path / "weights.txt").write_text("x")
    entry = {"init": "state_dict", "path": str(tmp_path / "weights.txt"), "vision": vision}
    assert "expected a .safetensors" in error_of(spec_of(tmp_path, downstream(shards, entry)))


# --- pipelines and outputs ---


def test_the_quickstart_checks_only_what_it_does_not_make(tmp_path: Path) -> None:
    spec = load_spec(REPO / "configs" / "quickstart.yaml", [f"output_root={tmp_path}"])
    assert check_inputs(spec) == []  # its manifest, shards and export do not exist yet


def test_a_later_step_alone_needs_the_earlier_run(tmp_path: Path) -> None:
    spec = load_spec(REPO / "configs" / "quickstart.yaml", [f"output_root={tmp_path}", "steps=[evaluate]"])
    message = error_of(spec, MissingInputError)
    assert message == f"evaluate.shards: {tmp_path / 'quickstart' / 'ingest'} does not exist"


def test_a_pipeline_pretraining_must_use_its_ingest_tokenizer(tmp_path: Path) -> None:
    spec = load_spec(
        REPO / "configs" / "quickstart.yaml", [f"output_root={tmp_path}", "ingest.tokenizer=builtin:tiny"]
    )
    assert error_of(spec).startswith("pretrain.model.text.path: 'builtin:minilm' differs from the tokenizer")


def test_the_run_directory_must_be_creatable(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "file").write_text("x")
    spec = spec_of(tmp_path, {"kind": "phantom"}, f"output_root={tmp_path / 'file' / 'runs'}")
    assert "is a file" in error_of(spec)

    def refuse(**kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(inputs.tempfile, "mkstemp", refuse)
    message = error_of(spec_of(tmp_path, {"kind": "phantom"}))
    assert message.startswith("output_root: cannot write in ") and "(Permission denied)" in message


def test_the_probe_leaves_nothing_behind(tmp_path: Path) -> None:
    check_inputs(spec_of(tmp_path, {"kind": "phantom"}))
    assert list(tmp_path.iterdir()) == [tmp_path / "job.yaml"]


def test_a_report_generation_judge_is_a_model_directory_with_a_usable_prompt(tmp_path: Path) -> None:
    judge = tmp_path / "judge"
    judge.mkdir()
    (judge / "config.json").write_text("{}")
    (tmp_path / "prompt.txt").write_text("Compare {reference} with {candidat}.")
    base = {
        "kind": "report_generation",
        "run_name": "rg",
        "output_root": str(tmp_path / "runs"),
        "shards": str(fake_shards(tmp_path / "shards")),
        "models": [{"name": "scratch", "init": "scratch", "vision": {"name": "resnet"}}],
    }
    spec = parse(ReportGenSpec, {**base, "scoring": {"judge": {"path": str(judge)}}})
    check_inputs(spec)
    spec = parse(ReportGenSpec, {**base, "scoring": {"judge": {"path": str(tmp_path / "nowhere")}}})
    assert error_of(spec, MissingInputError).startswith("scoring.judge.path: ")
    prompt = {"path": str(judge), "prompt_file": str(tmp_path / "prompt.txt")}
    spec = parse(ReportGenSpec, {**base, "scoring": {"judge": prompt}})
    assert error_of(spec).startswith(
        "scoring.judge.prompt_file: the template must contain only the placeholders"
    )


def test_a_segmentation_patch_must_fit_the_volumes(tmp_path: Path) -> None:
    base = {
        "kind": "downstream",
        "run_name": "seg",
        "output_root": str(tmp_path / "runs"),
        "shards": str(fake_shards(tmp_path / "shards")),
        "task": {"type": "segmentation"},
        "models": [{"name": "nnunet", "init": "scratch", "network": "dynunet"}],
    }
    check_inputs(parse(DownstreamSpec, {**base, "fit": {"patch_size": SHAPE[1:]}}))
    too_big = parse(DownstreamSpec, {**base, "fit": {"patch_size": [SHAPE[1] + 1, *SHAPE[2:]]}})
    assert error_of(too_big).startswith("fit.patch_size: ")
