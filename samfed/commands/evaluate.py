"""`samfed evaluate`: a training run's checkpoints, a deployed export, or a folder of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from samfed.commands.predict import TrustedKeys


def evaluate(
    model: Annotated[
        Path | None,
        typer.Argument(
            help="Run directory (`samfed train`: scores its torch checkpoints), or export folder / "
            ".onnx / .xml (`samfed export`: scores the deployed artefact, torch-free). "
            "Omit with --predictions.",
            show_default=False,
        ),
    ] = None,
    data: Annotated[Path, typer.Option("--data", help="Labeled dataset folder to score on.")] = ...,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions",
            help="Score this folder of mask images (a `samfed predict` --out, or <id>.png files) "
            "instead of a model.",
        ),
    ] = None,
    ids: Annotated[
        Path | None,
        typer.Option(
            "--ids",
            help="Text file of ids (one per line; looked up in --data too). Default: a run's split "
            "test/val ids, every image for an export, every prediction for --predictions.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Output folder (default: RUN/eval/<dataset>, else <MODEL or PREDICTIONS>-eval/<dataset>).",
        ),
    ] = None,
    backend: Annotated[
        str | None, typer.Option("--backend", help="Export only: auto, onnxruntime or openvino.")
    ] = None,
    model_precision: Annotated[
        str | None,
        typer.Option(
            "--model-precision", help="Export only: auto (the manifest's recommendation), int8 or fp32."
        ),
    ] = None,
    precision_alias: Annotated[str | None, typer.Option("--precision", hidden=True)] = None,
    hd95: Annotated[
        str,
        typer.Option("--hd95", help="HD95 convention: pooled (medpy hd95) or max (MONAI, max of directed)."),
    ] = "pooled",
    worst: Annotated[int, typer.Option(min=0, help="Overlays of this many worst cases by Dice.")] = 6,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (torch, or the runtime).")] = None,
    batch: Annotated[
        int, typer.Option("--batch-size", min=1, help="Export only: images per model call.")
    ] = 8,
    trusted_key: TrustedKeys = None,
) -> None:
    """Score segmentations against ground truth: Dice, IoU, HD95 per image at original resolution.

    `samfed evaluate RUN --data D` scores a run's global and client checkpoints (torch).
    `samfed evaluate EXPORT --data D` scores an exported ONNX/OpenVINO artefact through the edge
    runtime, as deployed (torch-free). `samfed evaluate --predictions P --data D` scores masks
    already predicted. Writes per_image.csv, summary.json (conventions included) and overlays of
    the worst cases.
    """
    from samfed.errors import SamfedError, require_folder_or_new
    from samfed.metrics import HD95_CONVENTIONS

    if hd95 not in HD95_CONVENTIONS:
        raise SamfedError(f"Unknown --hd95 {hd95!r}; expected {' or '.join(HD95_CONVENTIONS)}.")
    if precision_alias is not None and model_precision not in (None, precision_alias):
        raise SamfedError("--precision is an alias of --model-precision: give only one of them.")
    model_precision = model_precision or precision_alias
    if out is not None:
        require_folder_or_new(out)
    if predictions is not None:
        if model is not None:
            raise SamfedError("Pass either a model (run or export) or --predictions, not both.")
        _refuse_model_options(backend, model_precision, "--predictions")
        return _evaluate_predictions(predictions, data, ids, _out(out, predictions, data), worst, hd95)
    if model is None:
        raise SamfedError("Pass a run directory or an export folder to score, or --predictions FOLDER.")
    kind = model_kind(model)
    if kind == "run":
        _refuse_model_options(backend, model_precision, "a run directory")
        return _evaluate_run(model, data, ids, out, worst, threads, hd95)
    out = _out(out, model, data)
    _evaluate_export(
        model, data, ids, out, backend or "auto", model_precision or "auto", threads, batch, worst, hd95,
        tuple(trusted_key or ()),
    )  # fmt: skip


def model_kind(model: Path) -> str:
    """What a model argument is: "run" or "export"; SamfedError for anything else."""
    from edge.manifest import FORMAT, MANIFEST_NAME, MODEL_SUFFIX
    from export.checkpoint import META
    from samfed.errors import SamfedError
    from samfed.train.run_dir import RUN_FORMAT, manifest_format

    if not model.exists():
        raise SamfedError(f"Model {model} does not exist; pass a run directory or an export folder.")
    if model.is_file():
        if model.name == MANIFEST_NAME or model.suffix.lower() in MODEL_SUFFIX.values():
            return "export"
        raise SamfedError(f"{model} is not a model file (.onnx or .xml); pass an export folder.")
    kind = manifest_format(model)
    if kind == FORMAT:
        return "export"
    if kind == RUN_FORMAT or (model / "global" / META).is_file():
        return "run"
    raise SamfedError(
        f"{model} is neither an export folder (manifest.json from `samfed export`) nor a run "
        f"directory (global/{META} from `samfed train`)."
    )


def _refuse_model_options(backend: str | None, precision: str | None, what: str) -> None:
    from samfed.errors import SamfedError

    if backend is not None or precision is not None:
        raise SamfedError(f"--backend and --model-precision apply to an export folder, not to {what}.")


def _out(out: Path | None, source: Path, data: Path) -> Path:
    """--out, else <source>-eval/<dataset name> next to `source`; refused when it is a file."""
    from samfed.errors import require_folder_or_new

    out = out or source.parent / f"{source.name}-eval" / data.resolve().name
    require_folder_or_new(out)
    return out


def _evaluate_run(
    run: Path, data: Path, ids: Path | None, out: Path | None, worst: int, threads: int | None, hd95: str
) -> None:
    from rich.console import Console
    from rich.table import Table

    from samfed.errors import SamfedError
    from samfed.train.evaluate_run import evaluate_run

    if not data.is_dir():
        raise SamfedError(f"Dataset folder {data} does not exist.")
    if threads:
        import torch

        torch.set_num_threads(threads)
    result = evaluate_run(run, data, ids, out, worst, hd95_convention=hd95)
    table = Table(title=f"{result.summary['n_images']} images ({result.summary['ids']}), original resolution")
    for col in ("model", "arch", "Dice", f"HD95 {hd95} (px)"):
        table.add_column(col, justify="left" if col in ("model", "arch") else "right")
    for name, s in result.summary["models"].items():
        table.add_row(
            name, s["arch"], f"{s['dice']['mean']:.4f} ± {s['dice']['std']:.4f}", f"{s['hd95']['mean']:.2f}"
        )
    Console().print(table)
    print(f"results: {result.out_dir}")


def _evaluate_export(
    model: Path,
    data: Path,
    ids: Path | None,
    out: Path,
    backend: str,
    precision: str,
    threads: int | None,
    batch: int,
    worst: int,
    hd95: str,
    trusted_keys: tuple[str, ...],
) -> None:
    import warnings

    from rich.console import Console

    from edge.evaluate import score_export

    err = Console(stderr=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with err.status("predicting and scoring ..."):
            ev = score_export(
                model, data, ids, backend=backend, precision=precision, threads=threads, batch=batch,
                worst=worst, hd95_convention=hd95, trusted_keys=trusted_keys,
            )  # fmt: skip
    for w in caught:
        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    _report(ev, out)


def _evaluate_predictions(
    predictions: Path, data: Path, ids: Path | None, out: Path, worst: int, hd95: str
) -> None:
    from edge.evaluate import score_predictions

    ev = score_predictions(predictions, data, ids, worst=worst, hd95_convention=hd95)
    _report(ev, out)


def _report(ev, out: Path) -> None:
    """Write the evaluation's files and print its table."""
    from rich.console import Console
    from rich.table import Table

    from edge.evaluate_out import write_evaluation

    s = write_evaluation(ev, out)
    what = f"{s['artefact']} on {s['backend']}" if "artefact" in s else s["predictions"]
    table = Table(title=f"{what}: {s['n_images']} images ({s['ids']}), original resolution")
    for col in ("metric", "mean", "std", "median", "min", "max"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for key, label in (("dice", "Dice"), ("iou", "IoU"), ("hd95", f"HD95 {ev.hd95_convention} (px)")):
        m = s["metrics"][key]
        digits = 2 if key == "hd95" else 4
        table.add_row(label, *(f"{m[k]:.{digits}f}" for k in ("mean", "std", "median", "min", "max")))
    console = Console()
    console.print(table)
    recorded = s.get("manifest_dice_vs_gt")
    if recorded is not None:
        held = s.get("manifest_heldout") or {}
        console.print(
            f"the manifest records Dice vs ground truth {recorded:.4f} for {s['artefact']} "
            f"({held.get('n', '?')} held-out images of {held.get('source', '?')})",
            highlight=False,
        )
    if s["worst"]:
        cases = ", ".join(f"{w['id']} ({w['dice']:.3f})" for w in s["worst"])
        console.print(f"worst by Dice: {cases}", highlight=False, soft_wrap=True)
    console.print(f"results: {out}", highlight=False)
