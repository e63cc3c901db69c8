"""A name → class registry so config strings select plug-ins without if/elif chains."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from datasel.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins register under a name; ``get`` imports the package's modules once so every plug-in is known."""

    def __init__(self, kind: str, package: str) -> None:
        self.kind = kind
        self.package = package
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._items[name] = obj
            return obj

        return deco

    def _load(self) -> None:
        if self._loaded:
            return
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{self.package}.{mod.name}")
        self._loaded = True

    def get(self, name: str, where: str | None = None) -> T:
        self._load()
        if name not in self._items:
            raise ConfigError(
                f"unknown {self.kind} '{name}'",
                field=where,
                fix=f"use one of: {', '.join(sorted(self._items))}",
            )
        return self._items[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)
