"""Typed job specs: YAML -> dataclasses, ``--set`` overrides, one validator, resolved dump.

Config flow (lowest to highest priority): dataclass defaults < YAML file < ``--set key=value`` overrides
(< Tune trial values, which are overrides too). Everything is validated by ``parse`` before any Ray work
starts; every error names the dotted path, what was found and what is allowed, e.g.
``loss.name: 'clpi' is not one of: clip``.

Components chosen by name (losses, backbones, ...) are dataclasses deriving from a base that carries a
``registry``; ``parse`` reads ``name`` and validates the rest against that component's own config class.

Every number has a domain (``Range`` in ``Annotated``, or an alias such as ``PositiveInt``), checked with
the rest, so a value that cannot work fails here rather than inside Ray. A job spec's ``validate(path)``
sees ``path == ""`` when it is the whole job, run on its own: nothing will then provide its inputs (shards,
an export), so it requires them; as a pipeline step the runner links and checks them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
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
        """``> 0``, ``>= 1``, or an interval ``in [0, 1)`` when bounded on both sides."""
        low = (self.gt, "(") if self.gt is not None else (self.ge, "[")
        high = (self.lt, ")") if self.lt is not None else (self.le, "]")
        if low[0] is not None and high[0] is not None:
            return f"in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
        parts = [
            f"{op} {_number(bound)}"
            for op, bound in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
            if bound is not None
        ]
        return " and ".join(parts) or "any number"

    def check(self, value: Any, path: str) -> None:
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            return
        # NaN fails every bound; an infinity is no setting anyone means (use null where null is allowed).
        if not math.isfinite(value) or not self.contains(value):
            raise SpecError(path, f"must be {self.describe()}, found {value!r}")


def _number(bound: float) -> str:
    """A bound as people write it: 4294967296, not 4.29497e+09; 0.001 and 1e-06 as ``g`` gives them."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


# The domains most fields need.
Positive = Range(gt=0)
NonNegative = Range(ge=0)
Fraction = Range(ge=0, le=1)  # a probability, a ratio or a share
PositiveInt = Annotated[int, Range(ge=1)]
NonNegativeInt = Annotated[int, NonNegative]
PositiveFloat = Annotated[float, Positive]
NonNegativeFloat = Annotated[float, NonNegative]
FractionFloat = Annotated[float, Fraction]
DropoutFloat = Annotated[float, Range(ge=0, lt=1)]  # p = 1 zeroes every feature: nothing to learn from
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # NumPy's legacy seeding takes 32-bit seeds


def domain(hint: Any) -> Range | None:
    """The ``Range`` attached to a type hint (through ``X | None`` too), or None."""
    if get_origin(hint) is Annotated:
        return next((meta for meta in hint.__metadata__ if isinstance(meta, Range)), None)
    if get_origin(hint) in (Union, types.UnionType):
        found = [r for option in get_args(hint) if (r := domain(option)) is not None]
        return found[0] if found else None
    return None


def field_domain(cls: type, dotted: str, data: Any = None) -> Range | None:
    """The ``Range`` of the numeric field at ``dotted`` below dataclass ``cls`` (None: no domain, or no
    such field). ``data`` is plain spec data for ``cls``: a component chosen by name (``loss.name``) is
    looked up in its registry with the name ``data`` gives at that place."""
    hint: Any = cls
    for part in dotted.split("."):
        target = _dataclass_of(hint, data)
        if target is None:
            return None
        fields = {f.name for f in dataclasses.fields(target) if f.init}
        if part not in fields:
            return None
        hint = typing.get_type_hints(target, include_extras=True)[part]
        data = data.get(part) if isinstance(data, Mapping) else None
    return domain(hint)


def _dataclass_of(hint: Any, data: Any) -> type | None:
    """The dataclass a hint stands for (through Annotated and ``X | None``), its registry resolved."""
    if get_origin(hint) is Annotated:
        return _dataclass_of(get_args(hint)[0], data)
    if get_origin(hint) in (Union, types.UnionType):
        found = [c for option in get_args(hint) if (c := _dataclass_of(option, data)) is not None]
        return found[0] if len(found) == 1 else None
    if not (isinstance(hint, type) and dataclasses.is_dataclass(hint)):
        return None
    registry = getattr(hint, "registry", None)
    if registry is None:
        return hint
    name = data.get("name") if isinstance(data, Mapping) else None
    return registry.config_class(name) if isinstance(name, str) and name in registry.names else None


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def parse(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from plain YAML data, checking keys and types recursively."""
    registry = getattr(cls, "registry", None)
    if registry is not None and isinstance(data, Mapping):
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise SpecError(_join(path, "name"), f"expected a name (str), found {_describe(name)}")
        cls = registry.config_class(name, _join(path, "name"))
    if not isinstance(data, Mapping):
        raise SpecError(path, f"expected a mapping for {cls.__name__}, found {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)  # YAML keys need not be strings: 1, null, true
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


@dataclass
class JobSpec:
    """The header every job spec shares. ``kind`` selects the job (each spec class narrows it to its own
    literal); a run writes to ``<output_root>/<run_name>/``, ``run_name`` defaulting to the spec file's
    name."""

    kind: str = ""
    run_name: str | None = None
    output_root: str = "runs"


class _SpecLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader (YAML 1.1 scalars included) that refuses a key given twice in one mapping:
    PyYAML keeps the last silently, so a spec would run with a value its author did not see."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden on purpose
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = lines.get(key)
            except TypeError:  # an unhashable key: the constructor reports it below
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    problem=f"duplicate key {key!r} (lines {first} and {line})",
                    problem_mark=key_node.start_mark,
                )
            lines[key] = line
        return super().construct_mapping(node, deep)


def _load_yaml(text: str, where: str, *, one_line_text: bool = False) -> Any:
    """Parse YAML text; any error is one SpecError line ``WHERE:LINE:COL: problem`` (``WHERE: problem at
    column COL`` for a one-line text such as a ``--set`` value)."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: safe
    except yaml.MarkedYAMLError as err:
        mark, problem = err.problem_mark, _one_line(err.problem or "invalid YAML")
        if (
            err.context
            and err.context_mark is not None
            and err.context_mark.line != getattr(mark, "line", -1)
        ):
            problem += f" ({_one_line(err.context)} at line {err.context_mark.line + 1})"
        elif err.context:
            problem += f" ({_one_line(err.context)})"
        if mark is None:
            raise SpecError(where, problem) from err
        if one_line_text:
            raise SpecError(where, f"{problem} at column {mark.column + 1}") from err
        raise SpecError(f"{where}:{mark.line + 1}:{mark.column + 1}", problem) from err
    except yaml.reader.ReaderError as err:
        character = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        raise SpecError(where, f"unacceptable character {character} at offset {err.position}") from err
    except yaml.YAMLError as err:
        raise SpecError(where, _one_line(str(err))) from err
    except RecursionError as err:
        raise SpecError(where, "nested too deeply to read") from err


def _one_line(text: str) -> str:
    return " ".join(text.split())


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to raw spec data, returning a copy."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(item, "override must look like key.path=value")
        node = data
        parts = key.strip().split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(".".join(parts[: depth + 1]), "cannot set a key inside a non-mapping value")
            node = child
        node[parts[-1]] = _load_yaml(raw, f"--set {item}", one_line_text=True)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file; every error is one line naming the file (and the line and column, for YAML)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise SpecError(str(path), "spec file does not exist") from err
    except IsADirectoryError as err:
        raise SpecError(str(path), "is a directory, not a spec file") from err
    except PermissionError as err:
        raise SpecError(str(path), "cannot be read: permission denied") from err
    except UnicodeDecodeError as err:
        raise SpecError(
            str(path), f"is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from err
    except OSError as err:
        raise SpecError(str(path), f"cannot be read: {err.strerror or err}") from err
    data = _load_yaml(text, str(path))
    if data is None:
        raise SpecError(str(path), "is empty; a spec is a mapping with a 'kind' key")
    if not isinstance(data, dict):
        raise SpecError(str(path), f"must hold a mapping with a 'kind' key, found {_describe(data)}")
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
