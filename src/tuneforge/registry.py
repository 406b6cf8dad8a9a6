"""One generic name -> class registry. Methods and tasks register themselves by decorator,
so adding one never edits a central list."""
from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._default: str | None = None

    def register(self, name: str, *, default: bool = False) -> Callable[[T], T]:
        """Decorator; `default=True` makes it what a config that names none gets (one per registry)."""
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            if default and self._default not in (None, name):
                raise ValueError(f"{self.kind} {name!r} and {self._default!r} are both registered as the default")
            self._items[name] = obj
            if default:
                self._default = name
            return obj

        return deco

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items))}"
            ) from None

    def default(self) -> str:
        self._load()
        if self._default is None:
            raise ConfigError(f"no {self.kind} is registered as the default")
        return self._default

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._items.items())

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def _load(self) -> None:
        # Import the package that holds the implementations so their decorators run: the one import that goes
        # up the layers, by name, so the packages below can look methods and tasks up without importing them.
        importlib.import_module(_PACKAGES[self.kind])


_PACKAGES = {"method": "tuneforge.methods", "task": "tuneforge.train.tasks"}
METHODS: Registry = Registry("method")
TASKS: Registry = Registry("task")
