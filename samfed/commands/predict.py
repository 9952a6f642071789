"""`samfed predict` (torch-free: only the edge runtime is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def predict(
    model: Annotated[
        Path, typer.Argument(help="Export folder with manifest.json (from `samfed export`), or a .onnx file.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for masks/, overlays/ and predictions.csv.")
    ],
    backend: Annotated[str, typer.Option("--backend", help="auto, onnxruntime or openvino.")] = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="auto (the manifest's recommendation), int8 or fp32.")
    ] = "auto",
    batch: Annotated[int, typer.Option("--batch", help="Images per model call.")] = 8,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Inference threads (default: all usable CPUs).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads for decoding and writing files.")] = 2,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs.")] = True,
    overlay_size: Annotated[
        int,
        typer.Option("--overlay-size", min=0, help="Longest side of overlay previews in px (0: full size)."),
    ] = 512,
) -> None:
    """Segment images with an exported model (torch-free): masks, overlays, CSV.

    MODEL is a folder written by `samfed export` (its manifest is verified) or a bare .onnx file;
    IMAGES are image files and/or folders. Unreadable images are reported and skipped.
    """
    import json
    import warnings

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edge.pipeline import collect_images, run_files
    from edge.predictor import Predictor
    from samfed.data.io import IMAGE_EXTS
    from samfed.errors import SamfedError

    console, err = Console(), Console(stderr=True)
    if batch < 1 or workers < 1 or (threads is not None and threads < 1):
        raise SamfedError("--batch, --workers and --threads must be at least 1.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.from_model(model, backend, precision, threads, batch)
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    paths = collect_images(images)
    if not paths:
        raise SamfedError(f"No images ({', '.join(IMAGE_EXTS)}) found in {', '.join(map(str, images))}.")
    console.print(
        f"{len(paths)} images, model [bold]{predictor.artefact}[/] on {predictor.session.backend} "
        f"({predictor.session.threads} threads, batch {batch}, {predictor.prep.size}px)"
    )
    progress = Progress(
        TextColumn("segmenting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
    )
    with progress:
        task = progress.add_task("predict", total=len(paths))
        report = run_files(
            predictor,
            paths,
            out,
            workers=workers,
            overlays=overlays,
            overlay_size=overlay_size,
            on_done=lambda _id: progress.advance(task),
            on_error=lambda path, why: (
                progress.console.print(f"[yellow]skipped:[/] {why}", highlight=False, soft_wrap=True),
                progress.advance(task),
            ),
        )
    summary = report.to_dict() | {
        "model": str(model),
        "artefact": predictor.artefact,
        "backend": predictor.session.backend,
        "threads": predictor.session.threads,
        "batch": batch,
    }
    (Path(out) / "predict_summary.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"{report.processed} segmented, {len(report.skipped)} skipped -> {out}  "
        f"({report.images_per_s:.1f} images/s end to end; "
        f"model {report.model_s:.2f} s of {report.wall_s:.2f} s, "
        f"pipeline overhead {report.overhead_ratio:.2f}x model time)"
    )
    if report.processed == 0:
        raise SamfedError(f"None of the {len(paths)} images could be processed.")
