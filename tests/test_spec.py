"""Job-spec validation, overrides, resolved dumps and pipeline linking: errors name the dotted path."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from brainvlp.losses.config import LOSSES
from brainvlp.pipeline import JOB_KINDS, load_spec
from brainvlp.spec import SpecError, dump_resolved, to_plain

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.yaml"


def write(tmp_path: Path, data: dict, name: str = "job.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def error_of(path: Path, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    return str(info.value)


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    assert load_spec(path).kind in JOB_KINDS


def _header_overrides(path: Path) -> tuple[str, ...] | None:
    """The ``--set`` overrides of the CPU-size ``brainvlp run`` command in a config's header comment."""
    header = "".join(
        line.lstrip("#").strip().removesuffix("\\") + " "
        for line in path.read_text().splitlines()
        if line.startswith("#")
    )
    if "brainvlp run" not in header:
        return None
    words = shlex.split(header[header.index("brainvlp run") :])
    return tuple(words[i + 1] for i, word in enumerate(words) if word == "--set")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "pretrain").glob("*.yaml")), ids=lambda p: p.name)
def test_every_pretrain_config_documents_a_valid_cpu_size(path: Path) -> None:
    overrides = _header_overrides(path)
    assert overrides, f"{path.name}: no CPU-size 'brainvlp run ... --set' line in its header"
    spec = load_spec(path, overrides)
    assert spec.train.use_gpu is False and spec.data.shards == "runs/quickstart/ingest"


def test_float_in_exponent_notation_without_a_dot_is_a_float() -> None:
    spec = load_spec(QUICKSTART, ("pretrain.train.lr=1e-3", "pretrain.loss.temperature=5E-2"))
    assert spec.pretrain.train.lr == 1e-3 and spec.pretrain.loss.temperature == 0.05
    assert "expected float, found 'fast'" in error_of(QUICKSTART, ("pretrain.train.lr=fast",))


def test_quickstart_validates_and_links_steps() -> None:
    spec = load_spec(QUICKSTART)
    assert spec.steps == ("phantom", "ingest", "pretrain", "evaluate")
    assert spec.ingest.manifest == "runs/quickstart/phantom/manifest.csv"
    assert spec.pretrain.data.shards == "runs/quickstart/ingest"
    assert spec.evaluate.model == "runs/quickstart/pretrain/export"


@pytest.mark.parametrize(
    ("override", "path", "fragment"),
    [
        ("pretrain.trian.epochs=3", "pretrain.trian", "unknown key; allowed keys: data, deepspeed"),
        ("pretrain.loss.name=clpi", "pretrain.loss.name", f"'clpi' is not one of: {', '.join(LOSSES.names)}"),
        (
            "pretrain.model.vision.name=vgg",
            "pretrain.model.vision.name",
            "is not one of: densenet121, resnet",
        ),
        ("pretrain.train.batch_size=eight", "pretrain.train.batch_size", "expected int, found 'eight'"),
        ("pretrain.train.epochs=true", "pretrain.train.epochs", "expected int, found True (bool)"),
        ("pretrain.deepspeed.zero_stage=4", "pretrain.deepspeed.zero_stage", "4 is not one of: 0, 1, 2, 3"),
        ("ingest.volume.shape=[32, 64]", "ingest.volume.shape", "expected a list of 3 items"),
        ("pretrain.loss.temperature=0", "pretrain.loss.temperature", "must be in (0, 10)"),
        ("pretrain.train.num_workers=5", "pretrain.train.batch_size", "does not split evenly over 5"),
        ("pretrain.data.shuffle_buffer=-1", "pretrain.data.shuffle_buffer", "must be >= 0, found -1"),
        ("kind=pretrian", "kind", "'pretrian' is not one of: phantom, ingest, pretrain"),
        ("pretrain.loss.name=convirt_sections", "pretrain.model.text.sections", "contrasts two report"),
        ("pretrain.loss.name=brat", "pretrain.model.qformer", "needs a Q-Former"),
        ("pretrain.loss={name: triplet, local_weight: 1}", "pretrain.model.local", "set model.local"),
    ],
)
def test_errors_name_the_dotted_path(override: str, path: str, fragment: str) -> None:
    message = error_of(QUICKSTART, (override,))
    assert message.startswith(f"{path}: "), message
    assert fragment in message


def test_typo_in_file_fails_before_ray_starts(tmp_path: Path) -> None:
    data = yaml.safe_load(QUICKSTART.read_text())
    data["pretrain"]["model"]["embed_dimm"] = 64
    message = error_of(write(tmp_path, data))
    assert message.startswith("pretrain.model.embed_dimm: unknown key")
    import ray

    assert not ray.is_initialized()


def test_missing_component_name_lists_choices(tmp_path: Path) -> None:
    spec = {"kind": "pretrain", "data": {"shards": "x"}, "loss": {"temperature": 0.1}}
    assert f"loss.name: required; choose a loss: {', '.join(LOSSES.names)}" in error_of(write(tmp_path, spec))


def test_standalone_step_requires_its_inputs(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"evaluate.model: required"):
        load_spec(write(tmp_path, {"kind": "pipeline", "evaluate": {"split": "test"}}))


def test_overrides_apply_and_parse_yaml_values(tmp_path: Path) -> None:
    spec = load_spec(
        QUICKSTART,
        ["pretrain.train.batch_size=8", "pretrain.loss.temperature=0.05", "ingest.volume.shape=[16, 32, 32]"],
    )
    assert spec.pretrain.train.batch_size == 8
    assert spec.pretrain.loss.temperature == 0.05
    assert spec.ingest.volume.shape == (16, 32, 32)
    with pytest.raises(SpecError, match=r"key\.path=value"):
        load_spec(QUICKSTART, ["pretrain.train.batch_size"])


def test_resolved_spec_round_trips(tmp_path: Path) -> None:
    spec = load_spec(QUICKSTART, ["pretrain.train.epochs=2"])
    resolved = dump_resolved(spec, tmp_path / "spec.resolved.yaml")
    again = load_spec(resolved)
    assert to_plain(again) == to_plain(spec)
    assert again.pretrain.loss.learnable_temperature is True  # defaults are written out


def test_run_name_defaults_to_file_stem(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, {"kind": "phantom"}, "my-phantom.yaml"))
    assert spec.run_name == "my-phantom"


def test_cli_reports_spec_errors_without_traceback(tmp_path: Path) -> None:
    bad = write(tmp_path, {"kind": "phantom", "dataset": {"num_studys": 3}})
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.run", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert "dataset.num_studys: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_import_platform_is_the_standard_library_from_repo_root() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "import platform, sysconfig; print(platform.__file__); platform.system()"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(proc.stdout.strip()).parent == Path(
        subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
