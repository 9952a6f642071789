"""`samfed data ...`: synthesise, check and split datasets."""

import typer

from samfed.commands import not_built

app = typer.Typer(help="Synthesise, check and split datasets.", no_args_is_help=True)


@app.command()
def check() -> None:
    """Validate a dataset folder and print a table of problems."""
    not_built("data check", "issue 2")
