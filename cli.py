"""`samfed`: the one command-line entry point. Thin: every verb delegates to `samfed.commands.*`.

Only typer and rich are imported here; each command imports its heavy dependencies (torch, ...)
inside its body, so `samfed predict` works on an edge install without torch.
"""

from __future__ import annotations

import errno
import sys
import warnings

import click
import typer
from rich.console import Console
from rich.markup import escape

from samfed import __version__
from samfed.commands import (
    bench,
    certs,
    data,
    evaluate,
    export,
    federation,
    models,
    predict,
    teacher,
    train,
    view,
)
from samfed.errors import SamfedError

app = typer.Typer(
    name="samfed",
    help="SAM-guided federated semi-supervised segmentation, from training to the clinic workstation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        print(f"samfed {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print samfed's version and exit."
    ),
) -> None:
    """Options of `samfed` itself (before the verb)."""


app.command(help=train.train.__doc__)(train.train)
app.command(help=evaluate.evaluate.__doc__)(evaluate.evaluate)
# cls: a verb with renamed options also accepts their old names (samfed.commands.renamed)
app.command(help=export.export.__doc__, cls=export.RENAMED.command())(export.export)
app.command(help=predict.predict.__doc__, cls=predict.RENAMED.command())(predict.predict)
app.command(help=bench.bench.__doc__, cls=bench.RENAMED.command())(bench.bench)
app.command(name="models", help=models.list_models.__doc__, cls=models.RENAMED.command())(models.list_models)
app.command(help=federation.serve.__doc__, cls=federation.SERVE_RENAMED.command())(federation.serve)
app.command(help=federation.node.__doc__, cls=federation.NODE_RENAMED.command())(federation.node)
app.command(help=view.view.__doc__, cls=view.RENAMED.command())(view.view)
app.add_typer(data.app, name="data")
app.add_typer(teacher.app, name="teacher")
app.add_typer(certs.app, name="certs")

_err = Console(stderr=True)
OWN_PACKAGES = ("samfed", "edge", "export", "cli")  # a missing one of these is a bug, not an install
RESUMABLE_VERBS = ("train", "serve")
INTERRUPTED = 130  # what a shell reports for a process stopped by Ctrl-C (SIGINT)


def _verb(argv: list[str]) -> str:
    return next((a for a in argv if not a.startswith("-")), "")


def _fail(message: str, code: int = SamfedError.exit_code) -> None:
    _err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


def _interrupted(verb: str) -> None:
    hint = "; finished work is saved: rerun with --resume to continue" if verb in RESUMABLE_VERBS else ""
    _err.print(f"[yellow]interrupted[/]{hint}.", highlight=False)
    sys.exit(INTERRUPTED)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """samfed's own warnings (e.g. `DatasetWarning`) as one yellow line; others as Python prints them."""
    if category.__module__.split(".")[0] in OWN_PACKAGES:
        _err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _missing_module(exc: ModuleNotFoundError, verb: str) -> None:
    """A dependency the verb needs is not installed: one line saying what to install."""
    top = (exc.name or "").split(".")[0]
    if not top or top in OWN_PACKAGES:
        raise exc
    _fail(
        f"`samfed {verb}` needs {top}, which is not installed here; install the training extras with "
        "`pip install samfed[train]`."
    )


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors become one red line and a non-zero exit, never a traceback:
    exit 1 for samfed's own errors (SamfedError, a missing dependency, no write permission), 2 for
    Click's usage errors (unknown option, bad value type).

    Ctrl-C prints one line (with the --resume hint for the verbs that save their progress) and exits
    130; a dependency missing from an edge install, or an output folder without write permission,
    is one line too."""
    args = sys.argv[1:] if argv is None else list(argv)
    verb = _verb(args)
    warnings.showwarning = _show_warning
    try:
        code = app(args=args, prog_name="samfed", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: Typer's own formatting
        from typer import rich_utils

        rich_utils.rich_format_error(exc)
        sys.exit(exc.exit_code)
    except click.Abort:  # end of input at a prompt
        _interrupted(verb)
    except KeyboardInterrupt:  # outside the command (Typer turns one inside it into exit 130)
        _interrupted(verb)
    except SamfedError as exc:
        _fail(str(exc), exc.exit_code)
    except ModuleNotFoundError as exc:
        _missing_module(exc, verb)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        where = exc.filename or "a file"
        _fail(f"permission denied on {where}: choose a folder you may write to (or fix its permissions).")
    if code == INTERRUPTED:
        _interrupted(verb)
    if isinstance(code, int) and code != 0:
        sys.exit(code)


if __name__ == "__main__":
    main()
