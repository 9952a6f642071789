"""`samfed serve` and `samfed node`: SAM-Fed across sites on Flower."""

from samfed.commands import not_built


def serve() -> None:
    """Start the federation server (Flower SuperLink) and run SAM-Fed rounds."""
    not_built("serve", "issue 5")


def node() -> None:
    """Start one clinic node (Flower SuperNode) on its private image folder."""
    not_built("node", "issue 5")
