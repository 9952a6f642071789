"""`samfed train`."""

from samfed.commands import not_built


def train() -> None:
    """Train SAM-Fed (or a baseline) in-process and write a run directory."""
    not_built("train", "issue 6")
