"""Renamed command-line options: the old names (and old values) keep working for one release.

A verb lists its renames once, in a `Renamed`; `Renamed.command()` is the Click command class
(`app.command(cls=...)`) that rewrites the old spellings to the new ones before Click parses the
arguments, printing one deprecation line per old spelling to stderr. The old names are declared
nowhere else, so `--help` shows only the new ones. Giving an old name and its new name together is
a usage error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import click
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand

WHEN = "removed in the next release"


def deprecation(old: str, new: str) -> None:
    """Print the one deprecation line for `old` (a flag, a flag and value, or a file key)."""
    Console(stderr=True).print(
        f"[yellow]warning:[/] {escape(old)} is deprecated; use {escape(new)} ({WHEN}).",
        highlight=False,
        soft_wrap=True,
    )


@dataclass(frozen=True)
class Renamed:
    """The renamed options of one verb.

    flags: {old flag: new flag}, e.g. {"--batch": "--batch-size"}.
    values: {new flag: {old value: new value}}, e.g. {"--backend": {"onnx": "onnxruntime"}}.
    """

    flags: Mapping[str, str] = field(default_factory=dict)
    values: Mapping[str, Mapping[str, str]] = field(default_factory=dict)

    def rewrite(self, args: list[str]) -> list[str]:
        """`args` with old flags and values in their new spelling (nothing after `--`); one
        deprecation line per rewrite; click.UsageError when an old flag comes with its new one."""
        out: list[str] = []
        given: dict[str, str] = {}  # new flag -> the spelling it was given with
        pending_value: str | None = None  # the flag whose value the next argument is
        for i, arg in enumerate(args):
            if arg == "--":
                return out + args[i:]
            if pending_value is not None:
                out.append(self._value(pending_value, arg))
                pending_value = None
                continue
            name, eq, value = arg.partition("=")
            new = self.flags.get(name)
            if new is not None:
                deprecation(name, new)
            flag = new or name
            if flag.startswith("--"):
                self._once(given, flag, name)
            if flag in self.values:
                if eq:
                    arg = f"{flag}={self._value(flag, value)}"
                else:
                    pending_value = flag
                    arg = flag
            elif new is not None:
                arg = flag + eq + value
            out.append(arg)
        return out

    def _value(self, flag: str, value: str) -> str:
        new = self.values[flag].get(value)
        if new is None:
            return value
        deprecation(f"{flag} {value}", f"{flag} {new}")
        return new

    def _once(self, given: dict[str, str], flag: str, spelling: str) -> None:
        renamed_from = [old for old, new in self.flags.items() if new == flag]
        if not renamed_from:
            return
        before = given.setdefault(flag, spelling)
        if before != spelling:
            old = spelling if spelling != flag else before
            raise click.UsageError(f"{old} is the old name of {flag}: give only one of them.")

    def command(self) -> type[TyperCommand]:
        """The Click command class of a verb with these renames."""
        return type("RenamingCommand", (RenamingCommand,), {"renamed": self})


class RenamingCommand(TyperCommand):
    """A Typer command that accepts the old spellings of its `renamed` options."""

    renamed: Renamed = Renamed()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            args = self.renamed.rewrite(list(args))
        except click.UsageError as exc:
            exc.ctx = ctx
            raise
        return super().parse_args(ctx, args)
