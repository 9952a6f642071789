"""CLI commands, one module per verb. Each imports heavy dependencies inside the function body."""

from samfed.errors import SamfedError


def not_built(verb: str, issue: str) -> None:
    """Fail plainly for a verb whose implementation has not landed yet."""
    raise SamfedError(f"`samfed {verb}` is not built yet (tracked in {issue}).")
