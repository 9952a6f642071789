"""How a run talks to its user: one small object instead of say/console/progress parameters."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console


class Reporter:
    """`say(line)` for messages (rich markup; the caller decides where they go: console, log file),
    `progress(total)` for a bar over the run's long work, drawn only when `console` is given."""

    def __init__(self, say: Callable[..., Any] = print, console: Console | None = None):
        self.say = say
        self.console = console

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[Bar]:
        """A bar of `total` steps (a silent one without a console)."""
        if self.console is None:
            yield Bar()
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        with bar:
            yield Bar(bar, bar.add_task("", total=total))


class Bar:
    """One progress bar: `describe` the step being worked on, `advance` when it is done."""

    def __init__(self, progress=None, task=None):
        self._progress, self._task = progress, task

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
