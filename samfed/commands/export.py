"""`samfed export`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samfed.commands.renamed import Renamed

RENAMED = Renamed(values={"--backend": {"onnx": "onnxruntime"}})


def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="Run directory (uses global/), student checkpoint folder, or student.safetensors."
        ),
    ],
    int8: Annotated[
        bool, typer.Option("--int8", help="Also write INT8 models (ONNX Runtime QDQ, OpenVINO NNCF).")
    ] = False,
    backend: Annotated[str, typer.Option("--backend", help="onnxruntime, openvino or all.")] = "all",
    calib: Annotated[
        Path | None,
        typer.Option(
            "--calib",
            help="Folder of in-distribution images (or a dataset) for calibration and parity; "
            "default: the run's own data.",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder (default: <run>/export).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for parity and latency runs.")] = 2,
    calib_n: Annotated[int, typer.Option("--calib-n", help="Number of calibration images.")] = 64,
    heldout_n: Annotated[
        int, typer.Option("--heldout-n", help="Number of held-out images for the parity check.")
    ] = 32,
    iters: Annotated[int, typer.Option("--iters", help="Interleaved latency iterations per artefact.")] = 30,
    nncf_subset: Annotated[int, typer.Option("--nncf-subset", help="NNCF calibration subset size.")] = 300,
    signing_key: Annotated[
        Path | None,
        typer.Option(
            "--signing-key",
            help="Ed25519 key (PEM) that signs the manifest; default $SAMFED_SIGNING_KEY or "
            "~/.config/samfed/signing_key.pem, made on first use (clinics check it with --trusted-key).",
        ),
    ] = None,
) -> None:
    """Export a trained student to ONNX / OpenVINO, FP32 and INT8, with a parity manifest.

    SOURCE is a run directory (its global/ student), a student checkpoint folder, or a
    student.safetensors file next to its student.json. Writes the models and manifest.json (hashes,
    preprocessing, parity vs torch, latency, recommended artefact) to --out.
    """
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from export.build import export_student
    from export.manifest_writer import default_key_path, load_or_create_key, sign_export
    from samfed.errors import SamfedError

    if min(threads, calib_n, heldout_n, iters, nncf_subset) < 1:
        raise SamfedError("--threads, --calib-n, --heldout-n, --iters and --nncf-subset must be at least 1.")
    signing_key = signing_key or default_key_path()
    load_or_create_key(signing_key)  # a bad key fails before the export work
    console = Console()
    with console.status("exporting ...") as status:
        man = export_student(
            source,
            out,
            int8=int8,
            backend=backend,
            calib_folder=calib,
            n_calib=calib_n,
            n_heldout=heldout_n,
            threads=threads,
            latency_iters=iters,
            nncf_subset=nncf_subset,
            log=lambda msg: (console.log(msg), status.update(msg)),
        )
    has_gt = any("dice_vs_gt" in a["parity"] for a in man["artefacts"].values())
    table = Table(title=f"{man['arch']} export ({man['threads']} threads, batch 1, this CPU)")
    for col in [
        "artefact",
        "Dice vs torch",
        "max |logit diff|",
        *(["Dice vs GT"] if has_gt else []),
        "p50 ms",
        "p95 ms",
    ]:
        table.add_column(col, justify="left" if col == "artefact" else "right")
    ref = man["torch_reference"]
    table.add_row(
        "torch-fp32",
        "1",
        "0",
        *([f"{ref['dice_vs_gt']:.4f}"] if has_gt else []),
        f"{ref['latency']['1']['p50_ms']:.2f}",
        f"{ref['latency']['1']['p95_ms']:.2f}",
    )
    for key, a in man["artefacts"].items():
        p, lat = a["parity"], a["latency"]["1"]
        name = f"[bold green]{key} *[/]" if key == man["recommended"] else key
        table.add_row(
            name,
            f"{p['dice_mean']:.4f}",
            f"{p['max_abs_logit_diff']:.2g}",
            *([f"{p['dice_vs_gt']:.4f}"] if has_gt else []),
            f"{lat['p50_ms']:.2f}",
            f"{lat['p95_ms']:.2f}",
        )
    console.print(table)
    for w in man["warnings"]:
        console.print(Panel(w, title="WARNING", border_style="bold red", style="bold"))
    console.print(f"recommended: [bold green]{man['recommended']}[/] ({man['recommendation_reason']})")
    signer, pub = sign_export(man["_out_dir"], signing_key), signing_key.with_suffix(".pub")
    console.print(f"written: {man['_out_dir']}/manifest.json, signed by {signer}", highlight=False)
    if pub.is_file():
        console.print(f"clinics check it with: samfed predict --trusted-key {pub} ...", highlight=False)
