"""Name -> component registries. A component is registered once, with the config dataclass it takes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from brainvlp.spec import SpecError

C = TypeVar("C")


@dataclass(frozen=True)
class Entry(Generic[C]):
    config: type
    builder: C


class Registry(Generic[C]):
    """Components of one kind (``loss``, ``vision``); an unknown name lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[C]] = {}

    def register(self, name: str, config: type) -> Callable[[C], C]:
        def add(builder: C) -> C:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(config, builder)
            return builder

        return add

    @property
    def names(self) -> list[str]:
        return sorted(self._entries)

    def _entry(self, name: Any, path: str) -> Entry[C]:
        if name is None:
            raise SpecError(path, f"required; choose a {self.kind}: {', '.join(self.names)}")
        if name not in self._entries:
            raise SpecError(path, f"{name!r} is not one of: {', '.join(self.names)}")
        return self._entries[name]

    def config_class(self, name: Any, path: str = "name") -> type:
        return self._entry(name, path).config

    def build(self, config: Any, **kwargs: Any) -> Any:
        """Build the component that ``config.name`` names, passing ``config`` and ``kwargs``."""
        return self._entry(config.name, "name").builder(config, **kwargs)
