"""`samfed`: the one command-line entry point. Thin: every verb delegates to `samfed.commands.*`.

Only typer and rich are imported here; each command imports its heavy dependencies (torch, ...)
inside its body, so `samfed predict` works on an edge install without torch.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from samfed.commands import bench, data, evaluate, export, federation, models, predict, teacher, train
from samfed.errors import SamfedError

app = typer.Typer(
    name="samfed",
    help="SAM-guided federated semi-supervised segmentation, from training to the clinic workstation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command(help=train.train.__doc__)(train.train)
app.command(help=evaluate.evaluate.__doc__)(evaluate.evaluate)
app.command(help=export.export.__doc__)(export.export)
app.command(help=predict.predict.__doc__)(predict.predict)
app.command(help=bench.bench.__doc__)(bench.bench)
app.command(name="models", help=models.list_models.__doc__)(models.list_models)
app.command(help=federation.serve.__doc__)(federation.serve)
app.command(help=federation.node.__doc__)(federation.node)
app.add_typer(data.app, name="data")
app.add_typer(teacher.app, name="teacher")

_err = Console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one red line and a non-zero exit, never a traceback."""
    try:
        app(args=argv, prog_name="samfed")
    except SamfedError as exc:
        _err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _err.print("[yellow]interrupted[/]: finished work is saved; rerun with --resume to continue.")
        sys.exit(130)


if __name__ == "__main__":
    main()
