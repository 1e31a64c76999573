"""Typed job specs: YAML -> dataclasses, ``--set`` overrides, one validator, resolved dump.

Config flow (lowest to highest priority): dataclass defaults < YAML file < ``--set key=value`` overrides
(< Tune trial values, which are overrides too). Everything is validated by ``parse`` before any Ray work
starts; every error names the dotted path, what was found and what is allowed, e.g.
``loss.name: 'clpi' is not one of: clip``.

Components chosen by name (losses, backbones, ...) are dataclasses deriving from a base that carries a
``registry``; ``parse`` reads ``name`` and validates the rest against that component's own config class.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

T = TypeVar("T")


class SpecError(ValueError):
    """A job spec that cannot run: names the dotted path, what was found and what is allowed."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<spec>'}: {message}")
        self.path = path


@dataclass(frozen=True)
class Range:
    """The domain of a numeric spec field, attached with ``Annotated``: ``Annotated[float, Range(gt=0)]``.

    ``parse`` checks it with the rest of the spec, so a value that cannot work (a zero batch size, a
    negative learning rate) fails before Ray starts, naming its path and the domain.
    """

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        parts = [
            f"{op} {bound:g}"
            for op, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if bound is not None
        ]
        return " and ".join(parts) or "any number"

    def check(self, value: Any, path: str) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        if value != value or not self.contains(value):  # NaN fails every bound
            raise SpecError(path, f"must be {self.describe()}, found {value!r}")


# The domains most fields need.
Positive = Range(gt=0)
NonNegative = Range(ge=0)
Fraction = Range(ge=0, le=1)  # a probability, a ratio or a share
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, NonNegative]
PositiveFloat = Annotated[float, Positive]
NonNegativeFloat = Annotated[float, NonNegative]
FractionFloat = Annotated[float, Fraction]


def domain(hint: Any) -> Range | None:
    """The ``Range`` attached to a type hint (through ``X | None`` too), or None."""
    if get_origin(hint) is Annotated:
        return next((meta for meta in hint.__metadata__ if isinstance(meta, Range)), None)
    if get_origin(hint) in (Union, types.UnionType):
        found = [r for option in get_args(hint) if (r := domain(option)) is not None]
        return found[0] if found else None
    return None


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def parse(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types recursively."""
    registry = getattr(cls, "registry", None)
    if registry is not None and isinstance(data, Mapping):
        cls = registry.config_class(data.get("name"), _join(path, "name"))
    if not isinstance(data, Mapping):
        raise SpecError(path, f"expected a mapping for {cls.__name__}, found {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SpecError(_join(path, unknown[0]), f"unknown key; allowed keys: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls, include_extras=True)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], _join(path, name))
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise SpecError(_join(path, name), "required field is missing")
    try:
        spec = cls(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, SpecError):
            raise
        raise SpecError(path, str(err)) from err
    check = getattr(spec, "validate", None)
    if check is not None:
        check(path)
    return spec


def _convert(hint: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type ``hint``; return it converted (tuples, nested dataclasses)."""
    origin = get_origin(hint)
    if origin is Annotated:
        converted = _convert(get_args(hint)[0], value, path)
        for meta in hint.__metadata__:
            if isinstance(meta, Range):
                meta.check(converted, path)
        return converted
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if value is None and type(None) in options:
            return None
        candidates = [o for o in options if o is not type(None)]
        if isinstance(value, Mapping) and len(candidates) > 1:
            candidates = _mapping_candidates(candidates, value)
        if len(candidates) == 1:  # Optional[X]: X's own error, with its full path
            return _convert(candidates[0], value, path)
        errors = []
        for option in candidates:
            try:
                return _convert(option, value, path)
            except SpecError as err:
                errors.append(str(err).split(": ", 1)[1])
        raise SpecError(path, " or ".join(errors))
    if origin is Literal:
        if value not in get_args(hint):
            allowed = ", ".join(map(str, get_args(hint)))
            raise SpecError(path, f"{value!r} is not one of: {allowed}")
        return value
    if origin in (list, tuple):
        return _convert_sequence(hint, value, path)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SpecError(path, f"expected a mapping, found {_describe(value)}")
        key_type, value_type = get_args(hint)
        return {
            _convert(key_type, k, path): _convert(value_type, v, _join(path, k)) for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, path)
    return _convert_scalar(hint, value, path)


def _mapping_candidates(candidates: Sequence[Any], value: Mapping) -> list[Any]:
    """For a mapping under ``X | dict[str, X]`` (one spec, or several by name): X if the mapping uses one
    of X's keys, else the rest, so that an error inside either form is reported alone, with its path."""
    for option in candidates:
        if dataclasses.is_dataclass(option) and set(value) & {f.name for f in dataclasses.fields(option)}:
            return [option]
    return [o for o in candidates if not dataclasses.is_dataclass(o)] or list(candidates)


def _convert_sequence(hint: Any, value: Any, path: str) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise SpecError(path, f"expected a list, found {_describe(value)}")
    args = get_args(hint)
    if get_origin(hint) is list:
        return [_convert(args[0], v, _join(path, i)) for i, v in enumerate(value)]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, _join(path, i)) for i, v in enumerate(value))
    if len(value) != len(args):
        raise SpecError(path, f"expected a list of {len(args)} items, found {len(value)}")
    return tuple(_convert(a, v, _join(path, i)) for i, (a, v) in enumerate(zip(args, value, strict=True)))


_EXPONENT_FLOAT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _convert_scalar(hint: Any, value: Any, path: str) -> Any:
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # YAML 1.1 reads 1e-3 (no dot in the mantissa) as a string; people write learning rates that way.
    if hint is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
        return float(value)
    # bool is an int subclass in Python; a YAML `true` must not pass as a number.
    if hint in (int, float) and isinstance(value, bool):
        raise SpecError(path, f"expected {hint.__name__}, found {_describe(value)}")
    if not isinstance(value, hint):
        raise SpecError(path, f"expected {hint.__name__}, found {_describe(value)}")
    return value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to raw spec data, returning a copy."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy through plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SpecError(item, "override must look like key.path=value")
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(".".join(parts[: depth + 1]), "cannot set a key inside a non-mapping value")
            node = child
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file; errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as err:
        raise SpecError("", f"spec file {path} does not exist") from err
    except yaml.YAMLError as err:
        raise SpecError("", f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise SpecError("", f"{path} must hold a mapping with a 'kind' key, found {_describe(data)}")
    return data


def to_plain(spec: Any) -> Any:
    """Dataclasses -> plain dicts/lists for YAML dumps (tuples become lists)."""
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return {f.name: to_plain(getattr(spec, f.name)) for f in dataclasses.fields(spec) if f.init}
    if isinstance(spec, (list, tuple)):
        return [to_plain(v) for v in spec]
    if isinstance(spec, dict):
        return {k: to_plain(v) for k, v in spec.items()}
    return spec


def dump_resolved(spec: Any, path: str | Path) -> Path:
    """Write the fully resolved spec (every default filled in) as YAML."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_plain(spec), sort_keys=False))
    return path
