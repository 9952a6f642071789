"""`samfed models`."""

from __future__ import annotations

from typing import Annotated

import typer


def list_models(
    size: Annotated[
        int, typer.Option("--size", help="Square input size for the GFLOPs column (multiple of 16).")
    ] = 256,
) -> None:
    """List the student architectures with parameter counts and GFLOPs."""
    from rich.console import Console
    from rich.table import Table

    from samfed.errors import SamfedError

    if size <= 0 or size % 16:
        raise SamfedError(f"--size must be a positive multiple of 16, got {size}.")

    import torch

    from samfed.models import STUDENTS, count_parameters, create_student, gflops, list_students

    torch.set_num_threads(min(2, torch.get_num_threads()))
    table = Table(title=f"samfed students (GFLOPs at 1x3x{size}x{size}, 1 multiply-add = 2 FLOPs)")
    table.add_column("name", style="bold cyan")
    table.add_column("family")
    table.add_column("params (M)", justify="right")
    table.add_column(f"GFLOPs @{size}", justify="right")
    table.add_column("norm")
    for name in list_students():
        spec = STUDENTS[name]
        model = create_student(name)
        table.add_row(
            name,
            spec.description,
            f"{count_parameters(model) / 1e6:.2f}",
            f"{gflops(model, size):.2f}",
            " | ".join(spec.norms),
        )
    Console().print(table)
