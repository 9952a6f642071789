"""File hashing, atomic writes and reading what they wrote: one definition shared by samfed,
export and the edge runtime.

Torch-free (standard library only), so the edge runtime imports it without the training stack.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 1 << 20  # bytes read at a time while hashing


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """Hex sha256 of the file at `path`, read in `chunk`-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file (mode 0600) in the same folder, then rename
    it over `path`: readers, and a crash, never see half a file. Creates the parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` of `text` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_or_empty(path: str | Path) -> Any:
    """The JSON value in `path` (a file another process rewrites with `atomic_write_text`), or {}
    when it is absent or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
