"""`samfed evaluate`."""

from samfed.commands import not_built


def evaluate() -> None:
    """Score a run's global and client models on a dataset (Dice, HD95, overlays)."""
    not_built("evaluate", "issue 6")
