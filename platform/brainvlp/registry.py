"""Name -> component registries. A component is registered once: its config dataclass, under its name,
naming the class that implements it.

The implementation is named as ``"module:attribute"`` and imported only when built (Hydra's ``_target_``
does the same): config modules import neither torch nor MONAI, so a spec is parsed and validated in well
under a second, and ``brainvlp validate`` never waits for the libraries a run needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from brainvlp.spec import SpecError

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Entry:
    config: type
    implementation: str  # "module:attribute", called as ``attribute(config, **kwargs)``

    def load(self) -> Callable[..., Any]:
        module, _, attribute = self.implementation.partition(":")
        return getattr(importlib.import_module(module), attribute)


class Registry:
    """Components of one kind (``loss``, ``vision``); an unknown name lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, implementation: str) -> Callable[[T], T]:
        """Class decorator of a config dataclass: ``name`` in specs, built by ``implementation``."""

        def add(config: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(config, implementation)
            return config

        return add

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: Any, path: str) -> Entry:
        if name is None:
            raise SpecError(path, f"required; choose a {self.kind}: {', '.join(self.names)}")
        if name not in self._entries:
            raise SpecError(path, f"{name!r} is not one of: {', '.join(self.names)}")
        return self._entries[name]

    def config_class(self, name: Any, path: str = "name") -> type:
        return self._entry(name, path).config

    def implementation(self, name: str) -> Callable[..., Any]:
        """The class that builds ``name`` (imports its module)."""
        return self._entry(name, "name").load()

    def build(self, config: Any, **kwargs: Any) -> Any:
        """Build the component that ``config.name`` names, passing ``config`` and ``kwargs``."""
        return self.implementation(config.name)(config, **kwargs)
