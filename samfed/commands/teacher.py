"""`samfed teacher ...`: fine-tune, inspect and export the SAM teacher."""

import typer

from samfed.commands import not_built

app = typer.Typer(help="Fine-tune, inspect and export the SAM teacher.", no_args_is_help=True)


@app.command()
def finetune() -> None:
    """Fine-tune the SAM teacher (LoRA + mask decoder) on the server's labeled set."""
    not_built("teacher finetune", "issue 3")
