"""`samfed data ...`: synthesise, check and split datasets."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from samfed.commands.choices import names_of
from samfed.commands.renamed import Renamed
from samfed.config import RunConfig

app = typer.Typer(help="Synthesise, check and split datasets.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)

_DEFAULTS = RunConfig()  # the split defaults of `samfed train` too


@contextmanager
def _progress(description: str):
    """A transient rich progress bar on stderr; yields `update(done, total)`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_err, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@app.command()
def check(
    path: Annotated[
        Path, typer.Argument(help="Dataset folder (Kvasir-SEG, ISIC 2018 Task 1 or images/ + masks/).")
    ],
    max_rows: Annotated[
        int, typer.Option(help="Show at most this many problems in the table (0: all).")
    ] = 50,
) -> None:
    """Validate a dataset folder and print a table of problems.

    Errors: corrupt or truncated files, images without masks, masks without images, masks whose
    size differs from their image, masks that are neither 0/1 nor 0/255-like (colour, noise, many
    grey levels), two files with one id (a.jpg + a.png). Warnings: empty or all-foreground masks,
    split-file ids without an image, subfolders that are not read. Exit code 0 when the folder is
    usable (no errors and at least one usable sample), 1 otherwise (also when the folder does not
    exist, holds no images or has an invalid split file: the error line says which).
    """
    from samfed.data.check import ERROR, check_dataset

    start = time.perf_counter()
    with _progress(f"checking {path}") as update:
        report = check_dataset(path, progress=update)
    seconds = time.perf_counter() - start
    if report.problems:
        table = Table(title=f"Problems in {report.root}", show_lines=False)
        for col in ("severity", "kind", "file", "problem"):
            table.add_column(col, overflow="fold")
        shown = report.problems if max_rows <= 0 else report.problems[:max_rows]
        for p in sorted(shown, key=lambda p: (p.severity != ERROR, p.kind, p.path)):
            style = "red" if p.severity == ERROR else "yellow"
            table.add_row(f"[{style}]{p.severity}[/]", p.kind, Path(p.path).name, p.message)
        _out.print(table)
        if len(report.problems) > len(shown):
            _out.print(f"... and {len(report.problems) - len(shown)} more problems (use --max-rows 0).")
        for (severity, kind), n in sorted(report.counts().items()):
            _out.print(f"  {n} x {kind} ({severity})")
    _out.print(
        f"{report.layout} layout: {report.images} images, {report.masks} masks; "
        f"[bold]{report.summary()}[/] ({seconds:.1f} s)",
        soft_wrap=True,
    )
    if not report.ok:
        reason = "errors found" if report.errors else "no usable samples"
        _out.print(f"[bold red]not usable as it is:[/] {reason}.")
        raise typer.Exit(1)


SYNTH_RENAMED = Renamed(flags={"--size": "--image-size"})


@app.command(cls=SYNTH_RENAMED.command())
def synth(
    out: Annotated[
        Path,
        typer.Argument(help="Output folder (created; must be empty, or an earlier synth with --overwrite)."),
    ],
    domain: Annotated[
        str,
        typer.Option(
            help="skin: ISIC 2018 layout; polyp: Kvasir-SEG layout.",
            click_type=names_of("samfed.data.synth", "DOMAINS"),
        ),
    ] = "polyp",
    n: Annotated[int, typer.Option("--n", help="Number of images (at most 100000).")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same images.")] = 0,
    image_size: Annotated[
        int,
        typer.Option(
            "--image-size",
            help="Image size in px, 32..2048 (polyp images come in 3 resolutions around it).",
        ),
    ] = 256,
    val_fraction: Annotated[float, typer.Option(help="Fraction of ids listed in val.txt.")] = 0.2,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier synth output (deletes only the files it wrote).")
    ] = False,
) -> None:
    """Write a synthetic dermoscopy (skin) or endoscopy (polyp) dataset in a real dataset layout."""
    from samfed.data.synth import write_synthetic

    start = time.perf_counter()
    with _progress(f"synthesising {n} {domain} images") as update:
        write_synthetic(
            domain,
            n,
            out,
            seed=seed,
            size=image_size,
            val_fraction=val_fraction,
            overwrite=overwrite,
            progress=lambda i: update(i + 1, n),
        )
    layout = "ISIC 2018 Task 1" if domain == "skin" else "Kvasir-SEG"
    _out.print(f"wrote {n} {domain} images ({layout} layout) to {out} in {time.perf_counter() - start:.1f} s")


def _describe_resolutions(ids: list[str], sizes: dict[str, tuple[int, int]]) -> str:
    """'332x487..616x530; 622x530 x40, 616x530 x6': the area range and the two commonest sizes."""
    from collections import Counter

    if not ids:
        return ""
    by_area = sorted((sizes[i] for i in ids), key=lambda wh: (wh[0] * wh[1], wh[1], wh[0]))
    lo, hi = by_area[0], by_area[-1]
    top = ", ".join(f"{w}x{h} x{k}" for (w, h), k in Counter(by_area).most_common(2))
    return f"{lo[0]}x{lo[1]}..{hi[0]}x{hi[1]}; {top}"


@app.command()
def split(
    path: Annotated[Path, typer.Argument(help="Dataset folder.")],
    clients: Annotated[int, typer.Option(help="Number of clients.")] = _DEFAULTS.clients,
    labeled_fraction: Annotated[
        float, typer.Option(help="Fraction of the pool the server holds labeled.")
    ] = _DEFAULTS.labeled_fraction,
    partition: Annotated[
        str,
        typer.Option(
            help="iid; dirichlet over lesion-size bins; size: bands of image resolution.",
            click_type=names_of("samfed.data.partition", "SCHEMES"),
        ),
    ] = _DEFAULTS.partition,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (smaller: more skewed).")
    ] = _DEFAULTS.dirichlet_alpha,
    seed: Annotated[int, typer.Option(help="Random seed.")] = _DEFAULTS.seed,
    val_fraction: Annotated[
        float, typer.Option(help="Val fraction when the folder has no val.txt.")
    ] = _DEFAULTS.val_fraction,
    test_fraction: Annotated[
        float, typer.Option(help="Test fraction of the pool when there is no test.txt.")
    ] = _DEFAULTS.test_fraction,
    out: Annotated[Path, typer.Option(help="Where to write the split JSON.")] = Path("split.json"),
) -> None:
    """Split a dataset into server-labeled, client, val and test parts and write a JSON split file.

    With train.txt / val.txt in the folder, train is the pool and val is validation; without
    test.txt, --test-fraction of the pool is held out as test.
    """
    import numpy as np

    from samfed.data.partition import image_sizes, lesion_fractions, make_split, quantile_bins
    from samfed.data.readers import load_dataset

    ds = load_dataset(path)
    with _progress("splitting") as update:
        s = make_split(
            ds,
            clients=clients,
            labeled_fraction=labeled_fraction,
            scheme=partition,
            alpha=alpha,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )
        ids = s.all_ids()
        sizes = image_sizes(ds, ids)
        fractions = lesion_fractions(ds, ids, progress=update) if ds.has_masks else None
    s.save(out)
    table = Table(title=f"{partition} split of {ds.root} (seed {seed})")
    table.add_column("part")
    table.add_column("images", justify="right")
    if fractions is not None:
        bins = quantile_bins(fractions, 4)
        table.add_column("lesion-area quartiles\n(counts Q1/Q2/Q3/Q4)", justify="right")
        table.add_column("median\nlesion", justify="right")
    table.add_column("resolutions: smallest..largest; commonest")
    for name, part in s.parts.items():
        row = [name, str(len(part))]
        if fractions is not None:
            hist = np.bincount([bins[i] for i in part], minlength=4)
            med = float(np.median([fractions[i] for i in part])) if part else float("nan")
            row += ["/".join(str(h) for h in hist), f"{med:.1%}"]
        row.append(_describe_resolutions(part, sizes))
        table.add_row(*row)
    _out.print(table)
    _out.print(f"wrote {out}")
