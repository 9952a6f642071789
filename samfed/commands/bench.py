"""`samfed bench` (torch optional: the torch eager row appears only when torch imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samfed.commands.renamed import Renamed

RENAMED = Renamed(flags={"--batch": "--batch-size"})


def bench(
    model: Annotated[Path, typer.Argument(help="Export folder with manifest.json, or a .onnx / .xml file.")],
    batch_size: Annotated[str, typer.Option("--batch-size", help="Comma-separated batch sizes.")] = "1,8",
    iters: Annotated[
        int, typer.Option("--iters", help="Interleaved iterations per backend and batch size.")
    ] = 50,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed calls per backend before timing.")] = 5,
    threads: Annotated[
        int, typer.Option("--threads", help="Threads per backend (torch, ONNX Runtime, OpenVINO).")
    ] = 2,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for bench.json and bench.md (default: MODEL folder).")
    ] = None,
    torch: Annotated[
        bool, typer.Option("--torch/--no-torch", help="Include torch eager FP32 when available.")
    ] = True,
) -> None:
    """Latency of a model across torch, ONNX Runtime and OpenVINO, FP32 and INT8.

    MODEL is a folder written by `samfed export` (every artefact is timed, plus torch eager when torch
    and the source checkpoint are available) or a single .onnx / .xml file. Backends are timed
    round-robin in one process; writes bench.json and bench.md.
    """
    from rich.console import Console
    from rich.progress import Progress

    from export.bench import rich_table, run_bench, write_reports
    from samfed.errors import SamfedError, require_folder_or_new

    if out is not None:
        require_folder_or_new(out)
    try:
        batches = [int(b) for b in batch_size.split(",") if b.strip()]
    except ValueError:
        raise SamfedError(
            f"--batch-size must be comma-separated integers like 1,8, got {batch_size!r}."
        ) from None
    console = Console()
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmarking", total=iters * len(batches))
        result = run_bench(
            model, batches, iters, warmup, threads, torch, on_iter=lambda: progress.advance(task)
        )
    console.print(rich_table(result))
    cpu = result["cpu"]
    console.print(f"CPU: {cpu['model']}; flags: {' '.join(cpu['flags']) or '-'}; threads {threads}")
    for note in result["notes"]:
        console.print(f"note: {note}")
    s = result["speedups"]
    if s:
        ratios = ", ".join(
            f"{v:.2f}x vs {k.removeprefix('speedup_vs_')}"
            for k, v in s.items()
            if k.startswith("speedup_vs_")
        )
        console.print(f"best INT8 at batch 1: [bold]{s['best_int8']}[/] ({ratios})")
    out_dir = out or (model if model.is_dir() else model.parent)
    j, m = write_reports(result, out_dir)
    console.print(f"written: {j} and {m}")
