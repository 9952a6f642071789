"""Option vocabularies read from samfed's registries, never retyped in the CLI.

`RegistryChoice` is a click.Choice whose names come from a registry when first needed (parsing the
option or showing --help), so building the CLI imports no registry and no torch. Where a
registry cannot be imported (an install without torch), the option accepts any text and the
library's own check (e.g. RunConfig's) reports a bad value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click

from samfed.config import RunConfig, registry


class RegistryChoice(click.Choice):
    """click.Choice over `names()` (None: no registry here, any text passes)."""

    def __init__(self, names: Callable[[], Iterable[str] | None]) -> None:
        self._names = names
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self._names() or ())

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return super().convert(value, param, ctx) if self.choices else value

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return super().get_metavar(param, ctx) if self.choices else "TEXT"


def names_of(module: str, name: str, *extra: str) -> RegistryChoice:
    """The names of registry `module.name` (a dict's keys or a sequence), plus `extra`."""
    return RegistryChoice(registry(module, name, *extra))


def setting_choices(name: str) -> RegistryChoice:
    """The names RunConfig accepts for its setting `name` (its Rule's registry)."""
    rule = RunConfig.__dataclass_fields__[name].metadata["rule"]
    return RegistryChoice(rule.names)
