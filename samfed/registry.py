"""The one registry mechanism (timm-like) behind students, teacher backbones, aggregation rules,
methods and agreement variants: a name -> entry mapping filled at import by `add` or the
`register` decorator, whose `lookup` turns an unknown name into one SamfedError listing the
choices. Torch-free."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from samfed.errors import SamfedError

T = TypeVar("T")


class Registry(dict[str, T]):
    """Entries of one `kind` ("student", "method", ...) by name, in registration order."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def add(self, name: str, entry: T) -> T:
        """Register `entry` under `name` (ValueError when the name is taken) and return it."""
        if name in self:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: ``@REG.register("name")`` above a function or class."""

        def wrap(entry: T) -> T:
            return self.add(name, entry)

        return wrap

    def lookup(self, name: str) -> T:
        """The entry of `name`; SamfedError naming the registered choices when there is none."""
        if name not in self:
            raise SamfedError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(self)}.")
        return self[name]
