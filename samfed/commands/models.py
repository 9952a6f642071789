"""`samfed models`."""

from samfed.commands import not_built


def list_models() -> None:
    """List the student architectures with parameter counts and GFLOPs."""
    not_built("models", "issue 2")
