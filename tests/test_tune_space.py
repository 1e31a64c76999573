"""Tune specs without Ray: search spaces, conditional sampling, overrides, submit-time validation."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml

from brainvlp.pipeline import load_spec
from brainvlp.spec import SpecError, parse
from brainvlp.train.config import PretrainSpec, TrainConfig
from brainvlp.tune.job import concurrent_trials
from brainvlp.tune.space import apply_params, check_space, distributions, parse_space, suggest

SPACE = {
    "loss.name": {"choice": ["clip", "triplet"]},
    "loss.temperature": {"loguniform": [0.02, 0.2], "when": {"loss.name": "clip"}},
    "loss.margin": {"uniform": [0.1, 0.5], "when": {"loss.name": "triplet"}},
    "train.lr": {"qloguniform": [1.0e-4, 1.0e-2, 1.0e-4]},
    "model.embed_dim": {"int": [8, 32]},
}


def tune_spec(tmp_path: Path, space: dict, **base) -> Path:
    spec = {
        "kind": "tune",
        "output_root": str(tmp_path / "runs"),
        "base": {
            "data": {"shards": "shards"},
            "loss": {"name": "clip", "temperature": 0.07},
            "train": {"eval_every": 4},
            **base,
        },
        "space": space,
    }
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_conditional_dimensions_are_sampled_only_under_their_condition() -> None:
    space = parse_space(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        trial = study.ask()
        constants = suggest(trial, space)
        values = {**trial.params, **constants}
        name = values["loss.name"]
        seen.add(name)
        assert ("loss.temperature" in values) == (name == "clip")
        assert ("loss.margin" in values) == (name == "triplet")
        assert 1e-4 <= values["train.lr"] <= 1e-2
        assert values["train.lr"] == pytest.approx(round(values["train.lr"] / 1e-4) * 1e-4)
        assert isinstance(values["model.embed_dim"], int) and 8 <= values["model.embed_dim"] <= 32
        study.tell(trial, 0.0)
    assert seen == {"clip", "triplet"}
    assert set(distributions(space)) == set(SPACE)
    assert distributions(space)["loss.temperature"].log


def test_a_changed_component_name_starts_its_section_afresh() -> None:
    base = {"loss": {"name": "clip", "temperature": 0.07}, "model": {"qformer": None, "embed_dim": 64}}
    data = apply_params(
        base,
        {"loss.margin": 0.3, "loss.name": "triplet", "model.qformer.num_queries": 8, "model.embed_dim": 32},
    )
    assert data["loss"] == {"name": "triplet", "margin": 0.3}  # the name is set first, then its values
    assert data["model"] == {"qformer": {"num_queries": 8}, "embed_dim": 32}
    assert base["loss"] == {"name": "clip", "temperature": 0.07}  # the base is not modified
    same = apply_params(base, {"loss.name": "clip", "loss.temperature": 0.1})
    assert same["loss"] == {"name": "clip", "temperature": 0.1}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"uniform": [0.5, 0.1]}, "low must be below high"),
        ({"loguniform": [0.0, 1.0]}, "log scale needs low > 0"),
        ({"int": [1.5, 4]}, "of integers"),
        ({"choice": []}, "non-empty list"),
        ({"choice": [[1, 1], [2, 2]]}, "options must be scalars"),
        ({"uniform": [0.1, 0.5], "choice": [1]}, "exactly one of"),
        ({"normal": [0, 1]}, "exactly one of"),
        ({"uniform": [0.1, 0.5], "when": {"loss.margin": 0.2}}, "must name another choice of the space"),
        ({"uniform": [0.1, 0.5], "when": {"loss.name": "selip"}}, "not among its options"),
    ],
)
def test_bad_dimensions_name_the_entry(entry: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message) as err:
        parse_space({"loss.name": {"choice": ["clip", "triplet"]}, "loss.x": entry})
    assert str(err.value).startswith("space.loss.x")


def test_an_invalid_combination_is_an_error_at_submit_time(tmp_path: Path) -> None:
    """brat needs a Q-Former: a space offering brat without one fails validation, naming the values."""
    space = {"loss.name": {"choice": ["clip", "brat"]}}
    with pytest.raises(SpecError, match=r"loss.name='brat'.*set model.qformer"):
        load_spec(tune_spec(tmp_path, space))
    space["model.qformer"] = {"value": {"num_queries": 4}, "when": {"loss.name": "brat"}}
    assert load_spec(tune_spec(tmp_path, space)).dims["model.qformer"].kind == "value"
    # A range end outside the field's domain fails too, before any trial, naming the dimension.
    bad_range = {"loss.name": {"choice": ["triplet"]}, "train.num_workers": {"int": [0, 2]}}
    message = "space.train.num_workers: int range [0, 2] leaves the domain of pretrain train.num_workers"
    with pytest.raises(SpecError, match=re.escape(f"{message} (>= 1)")):
        load_spec(tune_spec(tmp_path, bad_range))
    # Values the domains allow but the spec's own rules refuse fail with the trial values.
    bad_split = {"loss.name": {"choice": ["clip"]}, "train.num_workers": {"int": [1, 3]}}
    with pytest.raises(SpecError, match=r"train\.num_workers=3.*does not split evenly"):
        load_spec(tune_spec(tmp_path, bad_split))


def test_the_spec_needs_a_dev_metric_and_resolves_its_base(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"base.train.eval_every: .*dev-set metric"):
        load_spec(tune_spec(tmp_path, SPACE, train={"eval_every": None}))
    base_file = tmp_path / "base.yaml"
    base = {"kind": "pretrain", "data": {"shards": "shards"}, "train": {"eval_every": 5}}
    base_file.write_text(yaml.safe_dump(base))
    spec = load_spec(_with_base_file(tmp_path, base_file))
    assert spec.base["train"]["eval_every"] == 5 and spec.base["kind"] == "pretrain"
    assert check_space(PretrainSpec, spec.base, spec.dims) == 4  # 2 loss families x 2 range ends


def _with_base_file(tmp_path: Path, base_file: Path) -> Path:
    path = tmp_path / "from_file.yaml"
    path.write_text(yaml.safe_dump({"kind": "tune", "base": str(base_file), "space": SPACE}))
    return path


def test_concurrent_trials_leave_a_cpu_for_reads_and_count_gpus() -> None:
    cpu = TrainConfig(num_workers=1, cpus_per_worker=1)
    assert concurrent_trials(cpu, {"CPU": 2.0}) == 1
    assert concurrent_trials(TrainConfig(num_workers=2, cpus_per_worker=0.5), {"CPU": 8.0}) == 4
    gpu = TrainConfig(num_workers=4, cpus_per_worker=8, use_gpu=True)
    assert concurrent_trials(gpu, {"CPU": 128.0, "GPU": 8.0}) == 2
    assert concurrent_trials(gpu, {"CPU": 16.0, "GPU": 8.0}) == 1  # never 0


def test_a_persistent_optuna_storage_holds_the_study(tmp_path: Path) -> None:
    """search.storage: the study lives in the named database (here SQLite) as well as in Tune's state."""
    from brainvlp.tune.job import _tune_config

    spec = load_spec(tune_spec(tmp_path, SPACE))
    spec.search.storage = f"sqlite:///{tmp_path / 'studies.db'}"
    config = _tune_config(spec, parse(PretrainSpec, spec.base), steps=12, concurrent=1)
    assert config.max_concurrent_trials == 1 and config.scheduler._max_t == 13  # past the last step
    assert optuna.get_all_study_names(spec.search.storage) == ["search"]
