"""Helpers for the tests that train: the tiny run configuration and weight comparison."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from samfed.config import RunConfig

TINY = dict(
    synthetic_n=28,
    image_size=64,
    rounds=2,
    server_epochs=2,
    warmup_epochs=1,
    distill_epochs=1,
    batch_size=4,
    method="fixmatch",
    threads=1,  # weights depend on the thread count; the default follows the machine's load
)


def tiny(**kw) -> RunConfig:
    """64 px, 28 synthetic images, 3 clients, short schedule, one thread; `kw` overrides."""
    return RunConfig(**{**TINY, **kw})


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint folder (student.safetensors)."""
    return load_file(str(Path(path) / "student.safetensors"))


def same(a: dict, b: dict) -> bool:
    """Identical keys and bit-identical tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_cli(capsys, *args: object) -> tuple[int, str, str]:
    """`samfed ARGS` in this process: (exit code, stdout, stderr)."""
    from cli import main

    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(text: str) -> str:
    """The single `error:` line of a CLI failure (and no traceback)."""
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    return errors[0]
