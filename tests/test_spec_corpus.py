"""A corpus of specs that cannot work: each fails in ``brainvlp validate`` with one line and status 2.

Every case is a spec file written here (or a directory, or bytes that are not UTF-8) plus ``--set``
overrides, run through the CLI in-process; one case runs ``python -m brainvlp.cli`` as a user would.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import brainvlp.runner  # noqa: F401 - imported before capsys: import-time warnings are not a case's output
from brainvlp.cli import main

REPO = Path(__file__).resolve().parents[1]

PRETRAIN: dict[str, Any] = {
    "kind": "pretrain",
    "data": {"shards": "runs/corpus/ingest"},
    "model": {"embed_dim": 32, "proj_hidden": None},
    "loss": {"name": "clip", "temperature": 0.07},
    "train": {"batch_size": 8, "epochs": 1, "lr": 1.0e-3, "log_every": 1, "eval_every": 2},
}
TUNE: dict[str, Any] = {
    "kind": "tune",
    "base": PRETRAIN,
    "space": {"train.lr": {"loguniform": [1.0e-4, 1.0e-2]}},
}


def with_value(spec: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A copy of ``spec`` with ``dotted`` set (sections created as needed)."""
    data = yaml.safe_load(yaml.safe_dump(spec))
    *parents, last = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def text(spec: dict[str, Any]) -> str:
    return yaml.safe_dump(spec, sort_keys=False)


PRETRAIN_TEXT = text(PRETRAIN)

# id -> (spec file content: str, bytes, None for a directory; --set overrides; a fragment of the line)
CASES: dict[str, tuple[str | bytes | None, tuple[str, ...], str]] = {
    # ---------------------------------------------------------------- the file itself
    "duplicate top-level key": ("kind: pretrain\nkind: tune\n", (), "duplicate key 'kind' (lines 1 and 2)"),
    "duplicate nested key": (
        "kind: pretrain\ntrain:\n  lr: 1.0e-3\n  epochs: 2\n  lr: 0.1\n",
        (),
        "spec.yaml:5:3: duplicate key 'lr' (lines 3 and 5)",
    ),
    "duplicate key in a flow mapping": (
        "kind: pretrain\nloss: {name: clip, name: triplet}\n",
        (),
        "duplicate key 'name' (lines 2 and 2)",
    ),
    "yaml syntax error": ("kind: pretrain\ntrain: {lr: 1\n", (), "spec.yaml:3:1: "),
    "mapping value in a scalar": ("kind: pretrain\ntrain: lr: 1\n", (), "spec.yaml:2:10: mapping values"),
    "tab indentation": ("kind: pretrain\ntrain:\n\tlr: 1\n", (), "spec.yaml:3:1: found character '\\t'"),
    "undefined alias": ("kind: pretrain\ntrain: *defaults\n", (), "found undefined alias 'defaults'"),
    "python tag": ("kind: !!python/object:os.system pretrain\n", (), "could not determine a constructor"),
    "directory as spec": (None, (), "is a directory, not a spec file"),
    "not utf-8": (b"kind: pretrain\nrun_name: caf\xe9\n", (), "is not UTF-8 text (byte 0xe9"),
    "empty file": ("", (), "is empty; a spec is a mapping with a 'kind' key"),
    "only comments": ("# nothing here\n", (), "is empty"),
    "a list, not a mapping": ("- kind: pretrain\n", (), "must hold a mapping with a 'kind' key"),
    "unknown kind": ("kind: pretrian\n", (), "kind: 'pretrian' is not one of: phantom"),
    # ---------------------------------------------------------------- keys, types, names
    "unknown key": (text(with_value(PRETRAIN, "train.epochz", 3)), (), "train.epochz: unknown key"),
    "non-string key": (PRETRAIN_TEXT + "1: one\n", (), "1: unknown key"),
    "wrong type": (PRETRAIN_TEXT.replace("batch_size: 8", "batch_size: eight"), (), "found 'eight' (str)"),
    "bool for a number": (PRETRAIN_TEXT, ("train.epochs=true",), "train.epochs: expected int, found True"),
    "float for an int": (PRETRAIN_TEXT, ("train.epochs=2.5",), "train.epochs: expected int, found 2.5"),
    "unknown component name": (PRETRAIN_TEXT, ("loss.name=clpi",), "loss.name: 'clpi' is not one of"),
    "component name not a string": (PRETRAIN_TEXT, ("loss.name=[clip]",), "loss.name: expected a name (str)"),
    # ---------------------------------------------------------------- numeric domains
    "zero batch size": (PRETRAIN_TEXT, ("train.batch_size=0",), "train.batch_size: must be >= 1, found 0"),
    "negative batch size": (PRETRAIN_TEXT, ("train.batch_size=-8",), "train.batch_size: must be >= 1"),
    "zero lr": (PRETRAIN_TEXT, ("train.lr=0",), "train.lr: must be > 0, found 0"),
    "negative lr": (PRETRAIN_TEXT, ("train.lr=-1e-3",), "train.lr: must be > 0, found -0.001"),
    "NaN lr": (PRETRAIN_TEXT, ("train.lr=.nan",), "train.lr: must be > 0, found nan"),
    "infinite lr": (PRETRAIN_TEXT, ("train.lr=.inf",), "train.lr: must be > 0, found inf"),
    "zero embedding size": (PRETRAIN_TEXT, ("model.embed_dim=0",), "model.embed_dim: must be >= 1, found 0"),
    "zero vision width": (
        PRETRAIN_TEXT,
        ("model.vision={name: resnet, widths: [8, 16, 0, 32]}",),
        "model.vision.widths.2: must be >= 1, found 0",
    ),
    "logging interval 0": (PRETRAIN_TEXT, ("train.log_every=0",), "train.log_every: must be >= 1, found 0"),
    "eval interval 0": (PRETRAIN_TEXT, ("train.eval_every=0",), "train.eval_every: must be >= 1, found 0"),
    "negative temperature": (
        PRETRAIN_TEXT,
        ("loss.temperature=-0.1",),
        "loss.temperature: must be in (0, 10), found -0.1",
    ),
    "dropout above 1": (PRETRAIN_TEXT, ("model.image_dropout=1.5",), "image_dropout: must be in [0, 1)"),
    "negative weight decay": (PRETRAIN_TEXT, ("train.weight_decay=-0.1",), "weight_decay: must be >= 0"),
    "negative seed": (PRETRAIN_TEXT, ("train.seed=-1",), "train.seed: must be in [0, 4294967296)"),
    "fraction above 1": (
        PRETRAIN_TEXT,
        ("loss={name: convirt, image_to_text_weight: 1.5}",),
        "loss.image_to_text_weight: must be in [0, 1], found 1.5",
    ),
    "augment gamma reversed": (
        PRETRAIN_TEXT,
        ("data.augment.gamma=[1.5, 0.5]",),
        "data.augment.gamma: must be [low, high], low <= high",
    ),
    # ---------------------------------------------------------------- tune
    "reduction factor 1": (text(TUNE), ("asha.reduction_factor=1",), "asha.reduction_factor: must be > 1"),
    "tune range allows a negative lr": (
        text(with_value(TUNE, "space", {"train.lr": {"uniform": [-1.0e-3, 1.0e-2]}})),
        (),
        "space.train.lr: range [-0.001, 0.01] leaves the domain of pretrain train.lr (> 0)",
    ),
    "tune choice outside the domain": (
        text(with_value(TUNE, "space", {"loss.temperature": {"choice": [0.05, 0.0]}})),
        (),
        "space.loss.temperature: option 0.0 leaves the domain of pretrain loss.temperature (in (0, 10))",
    ),
    "tune int range with a zero batch": (
        text(with_value(TUNE, "space", {"train.batch_size": {"int": [0, 8]}})),
        (),
        "space.train.batch_size: int range [0, 8] leaves the domain",
    ),
    # ---------------------------------------------------------------- overrides and required inputs
    "malformed --set value": (PRETRAIN_TEXT, ("train.lr=[1,",), "--set train.lr=[1,: expected the node"),
    "--set without a value": (PRETRAIN_TEXT, ("train.lr",), "override must look like key.path=value"),
    "--set duplicate key": (PRETRAIN_TEXT, ("loss={name: clip, name: selip}",), "duplicate key 'name'"),
    "--set required shards to null": (
        PRETRAIN_TEXT,
        ("data.shards=null",),
        "data.shards: required: the output directory of an ingest job",
    ),
    "evaluate without a model": (
        "kind: evaluate\nshards: runs/corpus/ingest\n",
        (),
        "model: required: a pretrain export directory",
    ),
    "downstream export without a path": (
        "kind: downstream\nshards: s\ntask: {finding: side}\nmodels: [{name: m, init: export}]\n",
        (),
        "models.0.path: required for init 'export'",
    ),
}


def write_spec(tmp_path: Path, content: str | bytes | None) -> Path:
    path = tmp_path / "spec.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def test_the_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_spec_fails_validation_with_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, overrides, fragment = CASES[case]
    path = write_spec(tmp_path, content)
    sets = [word for item in overrides for word in ("--set", item)]
    code = main(["validate", str(path), *sets])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainvlp:"), err
    assert fragment in lines[0], lines[0]


def test_python_m_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, "kind: pretrain\ntrain:\n  lr: 1.0e-3\n  lr: -1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "brainvlp.cli", "validate", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        f"brainvlp: invalid spec {path}: {path}:4:3: duplicate key 'lr' (lines 3 and 4)"
    ]
