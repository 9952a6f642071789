"""What `samfed train` shows on the console, also written as plain text to the run's train.log."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from rich.console import Console


class RunLog:
    """`say` prints to the console and appends the same text, without colours or ANSI codes, to a
    log file once `open` has named it (lines said before are written then). A quiet console still
    logs; progress bars are not logged."""

    def __init__(self, console: Console):
        self.console = console
        self._pending: list[tuple[tuple[Any, ...], dict]] = []
        self._file: IO[str] | None = None
        self._plain: Console | None = None

    def say(self, *objects: Any, **kw: Any) -> None:
        """Print (unwrapped: a terminal wraps long lines itself, a copied path stays whole) and log."""
        kw.setdefault("soft_wrap", True)
        self.console.print(*objects, **kw)
        self.log_only(*objects, **kw)

    def log_only(self, *objects: Any, **kw: Any) -> None:
        """Write to the log file only (the CLI prints this line itself, e.g. an error)."""
        if self._plain is None:
            self._pending.append((objects, kw))
        else:
            self._plain.print(*objects, **{**kw, "soft_wrap": True})
            self._file.flush()  # type: ignore[union-attr]

    def open(self, path: Path) -> None:
        """Append from now on to `path` (its folder must exist)."""
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._plain = Console(
            file=self._file, color_system=None, force_terminal=False, highlight=False, emoji=False, width=100
        )
        for objects, kw in self._pending:
            self.log_only(*objects, **kw)
        self._pending.clear()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = self._plain = None


def append_line(path: Path, line: str) -> None:
    """Append one line to an existing log file (no-op when the file does not exist)."""
    if path.is_file():
        with open(path, "a", encoding="utf-8") as f:
            f.write(line.rstrip("\n") + "\n")
