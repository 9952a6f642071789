"""`samfed predict`."""

from samfed.commands import not_built


def predict() -> None:
    """Segment images with an exported model (torch-free): masks, overlays, CSV."""
    not_built("predict", "issue 4")
