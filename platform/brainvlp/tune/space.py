"""Search spaces of a tune spec: a dotted pretrain-spec path -> a distribution, optionally conditional.

In YAML (a condition names a ``choice`` of the same space)::

    space:
      loss.name: {choice: [clip, triplet]}
      loss.temperature: {loguniform: [0.02, 0.2], when: {loss.name: clip}}
      loss.margin: {uniform: [0.1, 0.5], when: {loss.name: triplet}}
      model.qformer: {value: {num_queries: 16}, when: {loss.name: brat}}   # set, not sampled
      model.qformer.num_queries: {int: [8, 32], when: {loss.name: brat}}
      train.lr: {qloguniform: [1.0e-4, 1.0e-2, 1.0e-4]}

A trial's values are overrides of the base pretrain spec (``apply_params``): a trial that picks another
component by name (``loss.name: triplet`` over a base CLIP loss) starts that section afresh from the new
component's defaults, because the base's keys belong to the other component; the section's other trial
values are then set on it. Before any trial starts, ``check_domains`` checks that every value a dimension
can take lies in its field's domain (a range over ``train.lr`` must stay > 0), and ``check_space``
validates every combination of choices, with the numeric dimensions at their bounds.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from brainvlp.spec import SpecError, field_domain, parse

if TYPE_CHECKING:
    import optuna

KINDS = ("choice", "uniform", "loguniform", "int", "qloguniform", "value")
MAX_CHECKED = 512  # combinations validated at submit time; more is a space nobody searches exhaustively


@dataclass(frozen=True)
class Dimension:
    path: str  # dotted pretrain-spec path
    kind: str  # one of KINDS
    args: Any  # choice: options; uniform, loguniform, int: (low, high); qloguniform: (low, high, q); value
    when: Mapping[str, tuple[Any, ...]]  # path of an earlier choice -> the values it must take

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the conditions hold for the values sampled so far."""
        return all(path in values and values[path] in allowed for path, allowed in self.when.items())

    @property
    def bounds(self) -> tuple[Any, ...]:
        """The values ``check_space`` tries: every option of a choice, the ends of a range."""
        if self.kind == "choice":
            return tuple(self.args)
        if self.kind == "value":
            return (self.args,)
        low, high = self.args[:2]
        return (
            (low, high)
            if self.kind != "qloguniform"
            else (_round(low, self.args[2]), _round(high, self.args[2]))
        )


def _round(value: float, q: float) -> float:
    return round(round(value / q) * q, 12)  # 12 places: no 0.30000000000000004 in the trial's spec


def parse_space(raw: Any, path: str = "space") -> dict[str, Dimension]:
    """Typed dimensions from the spec's ``space`` mapping, ordered so that every condition's choice comes
    before the dimensions it gates; errors name the entry."""
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(path, "expected a non-empty mapping of dotted spec paths to distributions")
    parsed: dict[str, tuple[str, Any]] = {}
    for key, entry in raw.items():
        where = f"{path}.{key}"
        if not isinstance(entry, Mapping):
            raise SpecError(where, f"expected a mapping like {{uniform: [0.1, 0.5]}}, found {entry!r}")
        kinds = [k for k in entry if k != "when"]
        if len(kinds) != 1 or kinds[0] not in KINDS:
            raise SpecError(where, f"expected exactly one of {', '.join(KINDS)} (plus an optional when)")
        parsed[key] = (kinds[0], _parse_args(kinds[0], entry[kinds[0]], f"{where}.{kinds[0]}"))
    choices = {key: args for key, (kind, args) in parsed.items() if kind == "choice"}
    pending = {
        key: Dimension(
            key, kind, args, _parse_when(raw[key].get("when", {}), key, choices, f"{path}.{key}.when")
        )
        for key, (kind, args) in parsed.items()
    }
    space: dict[str, Dimension] = {}
    while pending:  # a condition's choice first
        ready = [key for key, dim in pending.items() if all(p in space for p in dim.when)]
        if not ready:
            raise SpecError(path, f"conditions form a cycle among {sorted(pending)}")
        space.update((key, pending.pop(key)) for key in ready)
    return space


def _parse_args(kind: str, args: Any, where: str) -> Any:
    if kind == "value":
        return args
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SpecError(where, f"expected a non-empty list of options, found {args!r}")
        # Optuna records categorical values as plain scalars; a list or mapping belongs in a `value` entry
        # gated by a choice (e.g. model.qformer: {value: {...}, when: {loss.name: brat}}).
        nested = [a for a in args if isinstance(a, (list, dict))]
        if nested:
            raise SpecError(where, f"options must be scalars (str, number, bool, null), found {nested[0]!r}")
        return tuple(args)
    size = 3 if kind == "qloguniform" else 2
    wanted = int if kind == "int" else (int, float)
    if (
        not isinstance(args, list)
        or len(args) != size
        or not all(isinstance(a, wanted) and not isinstance(a, bool) for a in args)
    ):
        shape = "[low, high, q]" if size == 3 else "[low, high]"
        raise SpecError(
            where, f"expected {shape} of {'integers' if kind == 'int' else 'numbers'}, found {args!r}"
        )
    low, high = args[:2]
    if not low < high:
        raise SpecError(where, f"low must be below high, found {args!r}")
    if kind in ("loguniform", "qloguniform") and low <= 0:
        raise SpecError(where, f"a log scale needs low > 0, found {low!r}")
    if kind == "qloguniform" and not 0 < args[2] <= high:
        raise SpecError(where, f"q must be in (0, high], found {args[2]!r}")
    return tuple(float(a) for a in args) if kind != "int" else tuple(args)


def _parse_when(
    raw: Any, key: str, choices: Mapping[str, tuple[Any, ...]], where: str
) -> dict[str, tuple[Any, ...]]:
    if not isinstance(raw, Mapping):
        raise SpecError(where, f"expected a mapping like {{loss.name: triplet}}, found {raw!r}")
    when = {}
    for path, allowed in raw.items():
        if path not in choices or path == key:
            raise SpecError(
                f"{where}.{path}", f"must name another choice of the space; choices: {list(choices)}"
            )
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        unknown = [a for a in allowed if a not in choices[path]]
        if unknown:
            raise SpecError(f"{where}.{path}", f"{unknown} not among its options {list(choices[path])}")
        when[path] = allowed
    return when


def suggest(trial: optuna.Trial, space: Mapping[str, Dimension]) -> dict[str, Any]:
    """Optuna define-by-run: sample the active dimensions in order. Returns what Optuna cannot record as
    sampled (set values, quantised log values), which OptunaSearch merges over the sampled ones."""
    values: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for dim in space.values():
        if not dim.active(values):
            continue
        if dim.kind == "value":
            constants[dim.path] = values[dim.path] = copy.deepcopy(dim.args)
        elif dim.kind == "choice":
            values[dim.path] = trial.suggest_categorical(dim.path, list(dim.args))
        elif dim.kind == "int":
            values[dim.path] = trial.suggest_int(dim.path, *dim.args)
        else:
            low, high = dim.args[:2]
            values[dim.path] = trial.suggest_float(dim.path, low, high, log=dim.kind != "uniform")
            if dim.kind == "qloguniform":  # Optuna has no log + step; Tune's qloguniform rounds the same way
                constants[dim.path] = values[dim.path] = _round(values[dim.path], dim.args[2])
    return constants


def distributions(space: Mapping[str, Dimension]) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna's distribution of every sampled dimension (for the report's study)."""
    from optuna import distributions as od

    found: dict[str, od.BaseDistribution] = {}
    for dim in space.values():
        if dim.kind == "choice":
            found[dim.path] = od.CategoricalDistribution(list(dim.args))
        elif dim.kind == "int":
            found[dim.path] = od.IntDistribution(*dim.args)
        elif dim.kind != "value":
            found[dim.path] = od.FloatDistribution(*dim.args[:2], log=dim.kind != "uniform")
    return found


def apply_params(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base pretrain spec (plain data) with a trial's values set; a changed component name resets
    its section (see the module docstring). Parents are set before children."""
    data = copy.deepcopy(dict(base))
    for path in sorted(params, key=_depth):
        parts = path.split(".")
        node = data
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(".".join(parts[: depth + 1]), "cannot set a key inside a non-mapping value")
            node = child
        if parts[-1] == "name" and node.get("name") != params[path]:
            node.clear()
        node[parts[-1]] = copy.deepcopy(params[path])
    return data


def _depth(path: str) -> tuple[int, str]:
    parts = path.split(".")
    return (len(parts) - (parts[-1] == "name"), path)  # a section's name before its other keys


def check_domains(
    spec_class: type, base: Mapping[str, Any], space: Mapping[str, Dimension], path: str = "space"
) -> None:
    """Every number a dimension can give lies in the domain of the field it sets (``Range`` of the spec
    dataclass), for each combination of choices (a choice of ``loss.name`` decides whose field it is);
    else a SpecError naming the dimension, its values and the domain, before any trial starts."""
    for params in itertools.islice(_assign(list(space.values()), {}), MAX_CHECKED):
        data = apply_params(base, params)
        for dim in space.values():
            if dim.path not in params:  # inactive under these choices
                continue
            domain = field_domain(spec_class, dim.path, data)
            outside = [v for v in _numbers(dim) if domain is not None and not domain.contains(v)]
            if outside:
                where, allowed = f"pretrain {dim.path}", domain.describe()
                message = f"{_shown(dim, outside[0])} leaves the domain of {where} ({allowed})"
                raise SpecError(f"{path}.{dim.path}", message)


def _numbers(dim: Dimension) -> list[float]:
    """The numbers a dimension can give at its extremes: options, range ends (rounded ones too), a value."""
    if dim.kind == "choice":
        values = list(dim.args)
    elif dim.kind == "value":
        values = [dim.args]
    else:
        values = [*dim.args[:2], *dim.bounds]
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _shown(dim: Dimension, outside: float) -> str:
    if dim.kind == "choice":
        return f"option {outside!r}"
    if dim.kind == "value":
        return f"value {outside!r}"
    low, high = dim.args[:2]
    shown = f"{'int range' if dim.kind == 'int' else 'range'} [{low:g}, {high:g}]"
    return shown if outside in (low, high) else f"{shown} (rounded to multiples of {dim.args[2]:g})"


def check_space(
    spec_class: type, base: Mapping[str, Any], space: Mapping[str, Dimension], path: str = "space"
) -> int:
    """Validate the base with every combination of choices, each numeric dimension at its low and then at
    its high end; an invalid one is a SpecError naming the trial values. Returns the combinations checked.
    Trial specs are parsed as ``base`` (not as whole jobs), as in a pipeline their inputs are linked later."""
    checked = 0
    for params in itertools.islice(_assign(list(space.values()), {}), MAX_CHECKED):
        checked += 1
        try:
            parse(spec_class, apply_params(base, params), "base")
        except SpecError as err:
            shown = ", ".join(f"{k}={v!r}" for k, v in params.items())
            raise SpecError(f"{path}: trial values {shown} give an invalid pretrain spec", str(err)) from err
    return checked


def _assign(dims: Sequence[Dimension], values: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every assignment of the active choices; per assignment, the ranges all at one end, then the other."""
    choices = [d for d in dims if d.kind == "choice" and d.active(values) and d.path not in values]
    if choices:
        first = choices[0]
        for option in first.args:
            yield from _assign(dims, {**values, first.path: option})
        return
    ranged = [d for d in dims if d.kind not in ("choice", "value") and d.active(values)]
    constants = {d.path: d.args for d in dims if d.kind == "value" and d.active(values)}
    for end in range(2 if ranged else 1):
        yield {**values, **constants, **{d.path: d.bounds[end] for d in ranged}}
