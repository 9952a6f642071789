"""`samfed predict` (torch-free: only the edge runtime is imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samfed.commands.renamed import Renamed

# `--model-precision`, shared by every verb that loads an export (predict, view)
ModelPrecision = Annotated[
    str,
    typer.Option(
        "--model-precision", help="Exported model to run: auto (the manifest's recommendation), int8 or fp32."
    ),
]

# `--trusted-key`, shared by every verb that loads an export (predict, view)
TrustedKeys = Annotated[
    list[str] | None,
    typer.Option(
        "--trusted-key",
        help="Accept only an export signed by this key: its fingerprint (SHA256:...) or public key "
        "file (the exporter's signing_key.pub). Repeatable.",
    ),
]


RENAMED = Renamed(flags={"--batch": "--batch-size", "--precision": "--model-precision"})


def predict(
    model: Annotated[
        Path, typer.Argument(help="Export folder with manifest.json (from `samfed export`), or a .onnx file.")
    ],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder for masks/, overlays/ and predictions.csv.")
    ],
    backend: Annotated[str, typer.Option("--backend", help="auto, onnxruntime or openvino.")] = "auto",
    model_precision: ModelPrecision = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per model call.")] = 8,
    threads: Annotated[
        int | None, typer.Option("--threads", help="Inference threads (default: all usable CPUs).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Threads for decoding and writing files.")] = 2,
    overlays: Annotated[bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs.")] = True,
    overlay_size: Annotated[
        int,
        typer.Option("--overlay-size", min=0, help="Longest side of overlay previews in px (0: full size)."),
    ] = 512,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an earlier predict output in --out (only its own files)."),
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Finish an interrupted predict run in --out, skipping finished images."
        ),
    ] = False,
    trusted_key: TrustedKeys = None,
) -> None:
    """Segment images with an exported model (torch-free): masks, overlays, CSV.

    MODEL is a folder written by `samfed export` (its manifest and any signature are verified) or
    a bare .onnx file; IMAGES are image files and/or folders. Unreadable images are reported and
    skipped. --out must be new, empty, or an earlier predict output (then --overwrite or --resume):
    predict never replaces a file it did not write.
    """
    import warnings

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edge.pipeline import collect_images, run_files
    from edge.predict_out import check_output, write_summary
    from edge.predictor import Predictor
    from samfed.data.io import IMAGE_EXTS
    from samfed.errors import SamfedError

    console, err = Console(), Console(stderr=True)
    if batch_size < 1 or workers < 1 or (threads is not None and threads < 1):
        raise SamfedError("--batch-size, --workers and --threads must be at least 1.")
    if overwrite and resume:
        raise SamfedError("--overwrite and --resume exclude each other: choose one.")
    mode = "overwrite" if overwrite else "resume" if resume else "new"
    check_output(out, mode)  # before any model is loaded
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predictor = Predictor.from_model(
            model, backend, model_precision, threads, batch_size, trusted_key or ()
        )
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    man = predictor.manifest
    if man is not None and man.signer:
        console.print(f"export signature valid: signed by {man.signer}", highlight=False)
    elif man is not None:
        err.print(
            "[yellow]note:[/] the export is not signed: its files are intact, but who produced it is not "
            "verified (pass --trusted-key to require a signature).",
            highlight=False,
        )
    paths = collect_images(images)
    if not paths:
        raise SamfedError(f"No images ({', '.join(IMAGE_EXTS)}) found in {', '.join(map(str, images))}.")
    console.print(
        f"{len(paths)} images, model [bold]{predictor.artefact}[/] on {predictor.session.backend} "
        f"({predictor.session.threads} threads, batch {batch_size}, {predictor.prep.size}px)"
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
            mode=mode,
        )
        progress.advance(task, report.resumed)
    summary = report.to_dict() | {
        "model": str(model),
        "artefact": predictor.artefact,
        "backend": predictor.session.backend,
        "signer": man.signer if man is not None else None,
        "threads": predictor.session.threads,
        "batch": batch_size,
    }
    write_summary(out, summary)
    kept = f", {report.resumed} kept from the interrupted run" if report.resumed else ""
    console.print(
        f"{report.processed} segmented{kept}, {len(report.skipped)} skipped -> {out}  "
        f"({report.images_per_s:.1f} images/s end to end; "
        f"model {report.model_s:.2f} s of {report.wall_s:.2f} s, "
        f"pipeline overhead {report.overhead_ratio:.2f}x model time)"
    )
    if report.processed + report.resumed == 0:
        raise SamfedError(f"None of the {len(paths)} images could be processed.")
