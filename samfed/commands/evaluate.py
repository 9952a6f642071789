"""`samfed evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    run: Path = typer.Argument(
        ..., help="Run directory written by `samfed train` (global/ and clients/<k>/)."
    ),
    data: Path = typer.Option(..., "--data", help="Labeled dataset folder to score on."),
    ids: Path | None = typer.Option(
        None,
        "--ids",
        help="Text file of ids (one per line) or a split JSON (default: the run's split test/val ids).",
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default: RUN/eval/<dataset name>)."),
    worst: int = typer.Option(6, min=0, help="Overlays of this many worst cases of the global model."),
    threads: int | None = typer.Option(None, min=1, help="torch CPU threads."),
) -> None:
    """Score a run's global and client models on a dataset (Dice, HD95, overlays)."""
    from rich.console import Console
    from rich.table import Table

    from samfed.errors import SamfedError, require_folder_or_new
    from samfed.train.evaluate_run import evaluate_run

    if not data.is_dir():
        raise SamfedError(f"Dataset folder {data} does not exist.")
    if out is not None:
        require_folder_or_new(out)
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = evaluate_run(run, data, ids, out, worst)
    table = Table(title=f"{result.summary['n_images']} images ({result.summary['ids']}), original resolution")
    for col in ("model", "arch", "Dice", "HD95 (px)"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for name, s in result.summary["models"].items():
        table.add_row(
            name, s["arch"], f"{s['dice']['mean']:.4f} ± {s['dice']['std']:.4f}", f"{s['hd95']['mean']:.2f}"
        )
    Console().print(table)
    print(f"results: {result.out_dir}")
