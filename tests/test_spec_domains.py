"""Every number a job spec takes has a domain (``Range``), so a value that cannot work fails in validation."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Union, get_args, get_origin

import pytest

from brainvlp.losses.config import LossConfig
from brainvlp.models.config import VisionConfig
from brainvlp.pipeline import JOB_KINDS
from brainvlp.spec import Range, SpecError, field_domain
from brainvlp.train.config import PretrainSpec

# Spec classes under brainvlp/data/ allowed to hold numbers without a domain while their owner annotates
# them: none left (every data spec number has a Range). No class outside brainvlp.data may be listed.
DATA_CLASSES_WITHOUT_DOMAINS: frozenset[str] = frozenset()


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _nested_classes(hint: Any) -> Iterator[type]:
    """Dataclasses a type hint refers to: through Annotated, unions, and list / tuple / dict arguments."""
    if get_origin(hint) is Annotated:
        yield from _nested_classes(get_args(hint)[0])
    elif get_origin(hint) in (Union, types.UnionType, list, tuple, dict):
        for arg in get_args(hint):
            yield from _nested_classes(arg)
    elif isinstance(hint, type) and dataclasses.is_dataclass(hint):
        yield hint


def spec_classes() -> list[type]:
    """Every dataclass reachable from a job kind: field types, and every config of every registry met."""
    seen: dict[type, None] = {}
    pending = list(JOB_KINDS.values())
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen[cls] = None
        registry = getattr(cls, "registry", None)
        if registry is not None:
            pending += [registry.config_class(name) for name in registry.names]
        for hint in typing.get_type_hints(cls, include_extras=True).values():
            pending += _nested_classes(hint)
    return list(seen)


def bare_numbers(hint: Any) -> bool:
    """Whether an int or float inside ``hint`` (alone, in ``X | None``, a tuple, a dict's values) has no
    ``Range``. A Literal of numbers is its own domain."""
    if get_origin(hint) is Annotated:
        if any(isinstance(meta, Range) for meta in hint.__metadata__):
            return False
        return bare_numbers(get_args(hint)[0])
    if get_origin(hint) in (Union, types.UnionType, list, tuple, dict):
        return any(bare_numbers(arg) for arg in get_args(hint) if arg is not Ellipsis)
    return hint in (int, float)


def test_the_walk_reaches_every_job_and_component() -> None:
    names = {cls.__name__ for cls in spec_classes()}
    assert {"PretrainSpec", "TuneSpec", "DownstreamSpec", "EvaluateSpec", "IngestSpec"} <= names
    assert {"ClipLossConfig", "TripletLossConfig", "ViTConfig", "UNetEncoderConfig", "QFormerConfig"} <= names
    assert {"FitConfig", "ProtocolConfig", "SearchConfig", "AshaConfig", "DeepSpeedConfig"} <= names


def test_every_numeric_field_has_a_domain() -> None:
    assert all(name.startswith("brainvlp.data.") for name in DATA_CLASSES_WITHOUT_DOMAINS)
    missing = [
        f"{_qualname(cls)}.{name}"
        for cls in spec_classes()
        if _qualname(cls) not in DATA_CLASSES_WITHOUT_DOMAINS
        for name, hint in typing.get_type_hints(cls, include_extras=True).items()
        if name in {f.name for f in dataclasses.fields(cls) if f.init} and bare_numbers(hint)
    ]
    assert not missing, f"numeric spec fields without a Range: {missing}"


def test_the_walk_finds_a_field_without_a_domain() -> None:
    @dataclasses.dataclass
    class Loose:
        sizes: tuple[int, ...] = ()
        rate: float | None = None

    assert bare_numbers(typing.get_type_hints(Loose, include_extras=True)["sizes"])
    assert bare_numbers(typing.get_type_hints(Loose, include_extras=True)["rate"])


def test_field_domain_follows_paths_registries_and_optionals() -> None:
    clip = {"loss": {"name": "clip"}, "model": {"vision": {"name": "vit"}}}
    assert field_domain(PretrainSpec, "train.lr") == Range(gt=0)
    assert field_domain(PretrainSpec, "loss.temperature", clip) == Range(gt=0, lt=10)
    assert field_domain(PretrainSpec, "loss.margin", {"loss": {"name": "triplet"}}) == Range(ge=0)
    assert field_domain(PretrainSpec, "loss.margin", clip) is None  # clip has no margin
    assert field_domain(PretrainSpec, "loss.temperature") is None  # no name: whose field is unknown
    assert field_domain(PretrainSpec, "model.qformer.num_queries") == Range(ge=1)  # through X | None
    assert field_domain(PretrainSpec, "model.vision.num_heads", clip) == Range(ge=1)
    assert field_domain(PretrainSpec, "train.text_lr") == Range(gt=0)
    assert field_domain(PretrainSpec, "train.schedule") is None
    assert LossConfig.registry.names and VisionConfig.registry.names


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "must be > 0, found 0"),
        (-1e-3, "must be > 0, found -0.001"),
        (float("nan"), "must be > 0, found nan"),
        (float("inf"), "must be > 0, found inf"),
    ],
)
def test_a_domain_refuses_zero_negative_and_non_finite_numbers(value: float, message: str) -> None:
    with pytest.raises(SpecError) as err:
        Range(gt=0).check(value, "train.lr")
    assert str(err.value) == f"train.lr: {message}"


def test_domains_read_as_intervals_when_bounded_on_both_sides() -> None:
    assert Range(gt=0, lt=10).describe() == "in (0, 10)"
    assert Range(ge=0, lt=1).describe() == "in [0, 1)"
    assert Range(ge=0, lt=2**32).describe() == "in [0, 4294967296)"
    assert Range(ge=1).describe() == ">= 1" and Range(gt=1e-3).describe() == "> 0.001"
