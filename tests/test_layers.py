"""The package's layering holds (docs/architecture.md): an AST scan of every import in
``platform/brainvlp/``, module-level and inside functions alike, against the table of what each layer may
import; no import loop between modules; single-device math free of Ray, DeepSpeed and torch.distributed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "brainvlp"

FOUNDATION = {"spec", "errors", "registry", "findings", "sections", "tokenization", "runtime", "console"}
# Unit (a subpackage or a top-level module) -> the units it may import besides itself.
ALLOWED: dict[str, set[str]] = {
    **{unit: FOUNDATION for unit in FOUNDATION},
    "data": FOUNDATION,
    "phantom": FOUNDATION,
    "models": FOUNDATION,
    "losses": FOUNDATION,
    "distributed": FOUNDATION,
    "export": FOUNDATION | {"models"},
    "embed": FOUNDATION | {"data", "models", "losses"},
    "evaluate": FOUNDATION | {"data", "models", "losses", "embed", "export"},
    "train": FOUNDATION | {"data", "models", "losses", "embed", "export", "evaluate", "distributed"},
    "downstream": FOUNDATION | {"data", "models", "export", "evaluate"},
    "tune": FOUNDATION | {"data", "train"},
    "reportgen": FOUNDATION | {"data", "models", "export", "evaluate", "downstream", "train"},
    "annotate": FOUNDATION | {"data", "evaluate"},
}
APPLICATION = {"inputs", "pipeline", "runner", "cli"}  # may import any layer; no layer imports them
SINGLE_DEVICE = {"models", "losses", "embed"}
DISTRIBUTED = ("ray", "deepspeed", "torch.distributed")


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): path
        for path in PACKAGE.rglob("*.py")
    }


def _imports(path: Path) -> list[str]:
    """Every module an import statement in the file names (``from a import b`` gives a and a.b)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _unit(module: str) -> str:
    return module.split(".")[1] if "." in module else "brainvlp"


MODULES = _modules()


def test_every_unit_is_in_the_layer_table() -> None:
    units = {_unit(module) for module in MODULES} - {"brainvlp"}
    assert units <= set(ALLOWED) | APPLICATION, sorted(units - set(ALLOWED) - APPLICATION)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_follow_the_layers(module: str) -> None:
    unit = _unit(module)
    if unit in APPLICATION or unit == "brainvlp":
        return
    crossing = {
        name
        for name in _imports(MODULES[module])
        if name in MODULES and _unit(name) != unit and _unit(name) not in ALLOWED[unit]
    }
    assert not crossing, f"{module} ({unit}) imports {sorted(crossing)}: see docs/architecture.md"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _unit(m) in SINGLE_DEVICE))
def test_single_device_math_imports_no_collectives(module: str) -> None:
    bad = [name for name in _imports(MODULES[module]) if name.startswith(DISTRIBUTED)]
    assert not bad, f"{module} imports {bad}: collectives live in brainvlp.distributed"


def test_no_import_loops() -> None:
    graph = {m: {n for n in _imports(p) if n in MODULES and n != m} for m, p in MODULES.items()}
    graph = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}  # parents
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import loop: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
