"""User-facing errors: the CLI prints their message as one line and exits 1 (`SamfedError.exit_code`)."""

from pathlib import Path


class SamfedError(Exception):
    """An error the user can fix (bad path, corrupt file, wrong model file, ...).

    The message must be one self-contained sentence that says what is wrong and what is expected.
    """

    exit_code: int = 1  # Click's usage errors (unknown option, bad value type) exit 2


def require_folder_or_new(path: str | Path, flag: str = "--out") -> None:
    """SamfedError when output folder `path` exists as something other than a folder (a file)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SamfedError(f"{flag} {p} is a file; pass a folder (new or existing) instead.")
