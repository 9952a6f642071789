"""`samfed train`: SAM-Fed (or a baseline) in-process, into a run directory."""

from __future__ import annotations

from pathlib import Path

import click
import typer

from samfed.commands.choices import setting_choices
from samfed.errors import SamfedError

_D = "(default: {})"
ENGINES = ("in-process", "flower-sim")


def _default(name: str) -> str:
    from samfed.config import RunConfig

    return _D.format(getattr(RunConfig(), name))


def train(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Dataset folder (Kvasir-SEG, ISIC 2018 or images/ + masks/); omitted: built-in synthetic set.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Run directory (default: runs/<method>-<date>-<time>)."
    ),
    method: str | None = typer.Option(
        None, help="SAM-Fed or a baseline " + _default("method"), click_type=setting_choices("method")
    ),
    students: str | None = typer.Option(
        None,
        help="Student name(s) (`samfed models` lists them), comma-separated; several = heterogeneous, "
        "round-robin over clients " + _default("students"),
    ),
    global_student: str | None = typer.Option(
        None, help="Global model architecture (default: the first student)."
    ),
    teacher: str | None = typer.Option(
        None,
        help="Teacher backbone (litemedsam | sam-vit-b|l|h) or a fine-tuned teacher folder "
        + _default("teacher"),
    ),
    teacher_checkpoint: Path | None = typer.Option(None, help="Base weights file for sam-vit-* teachers."),
    teacher_mode: str | None = typer.Option(
        None,
        help="Teacher fine-tuning on D_p " + _default("teacher_mode"),
        click_type=setting_choices("teacher_mode"),
    ),
    teacher_prompt: str | None = typer.Option(
        None, help="Teacher prompt (default: the teacher's).", click_type=setting_choices("teacher_prompt")
    ),
    teacher_epochs: int | None = typer.Option(
        None, min=1, help="Teacher fine-tuning epochs " + _default("teacher_epochs")
    ),
    cache: Path | None = typer.Option(
        None,
        "--cache",
        "--teacher-cache",
        help="Folder of speed-up caches (encoder embeddings, teacher maps, initial global model), shared "
        "by runs and safe to delete (default: $SAMFED_CACHE or ~/.cache/samfed).",
    ),
    clients: int | None = typer.Option(None, min=1, help="Number of clients " + _default("clients")),
    labeled_fraction: float | None = typer.Option(
        None, help="Fraction of the pool labeled at the server " + _default("labeled_fraction")
    ),
    partition: str | None = typer.Option(
        None, help="Client partition " + _default("partition"), click_type=setting_choices("partition")
    ),
    rounds: int | None = typer.Option(None, min=0, help="Federated rounds " + _default("rounds")),
    local_epochs: int | None = typer.Option(
        None, min=1, help="Client epochs per round " + _default("local_epochs")
    ),
    server_epochs: int | None = typer.Option(
        None, min=0, help="Epochs of the global model's initial training on D_p " + _default("server_epochs")
    ),
    image_size: int | None = typer.Option(None, help="Working size in pixels " + _default("image_size")),
    batch_size: int | None = typer.Option(None, min=1, help="Images per batch " + _default("batch_size")),
    agreement: str | None = typer.Option(
        None, help="Agreement variant " + _default("agreement"), click_type=setting_choices("agreement")
    ),
    aggregation: str | None = typer.Option(
        None, help="Aggregation rule " + _default("aggregation"), click_type=setting_choices("aggregation")
    ),
    seed: int | None = typer.Option(
        None, help="Seed of the split, initialisation and sampling " + _default("seed")
    ),
    precision: str | None = typer.Option(
        None,
        help="Compute precision (bf16: bfloat16 autocast, 2-3x faster on AMX CPUs) " + _default("precision"),
        click_type=setting_choices("precision"),
    ),
    split: Path | None = typer.Option(
        None, help="Split file to use (from `samfed data split`); default: made from the partition options."
    ),
    device: str | None = typer.Option(
        None, help="cpu | cuda | cuda:N | auto (CUDA when available) " + _default("device")
    ),
    threads: int | None = typer.Option(
        None, min=1, help="torch CPU threads (default: torch's choice, 1 when the machine is already busy)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="TOML file of RunConfig settings; flags override it."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out after its last finished round."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
    engine: str = typer.Option(
        "in-process",
        "--engine",
        click_type=click.Choice(ENGINES),
        help="in-process: every client in this process, one after another; flower-sim: the Flower "
        "ServerApp and ClientApp of `samfed serve`/`samfed node` in Flower's simulation runtime, one "
        "virtual SuperNode per client (--clients N; needs pip install 'samfed[sim]') (default: in-process).",
    ),
) -> None:
    """Train SAM-Fed (or a baseline) in-process and write a run directory."""
    import time

    from rich.console import Console

    from samfed.config import RunConfig
    from samfed.train.run_dir import RunDir

    flags = dict(
        data=None if data is None else str(data),
        method=method,
        global_student=global_student,
        teacher=teacher,
        teacher_checkpoint=None if teacher_checkpoint is None else str(teacher_checkpoint),
        teacher_mode=teacher_mode,
        teacher_prompt=teacher_prompt,
        teacher_epochs=teacher_epochs,
        cache=None if cache is None else str(cache),
        clients=clients,
        labeled_fraction=labeled_fraction,
        partition=partition,
        rounds=rounds,
        local_epochs=local_epochs,
        server_epochs=server_epochs,
        image_size=image_size,
        batch_size=batch_size,
        agreement=agreement,
        aggregation=aggregation,
        seed=seed,
        threads=threads,
        precision=precision,
        device=device,
        split=None if split is None else str(split),
        students=None if students is None else [s.strip() for s in students.split(",") if s.strip()],
    )
    if resume:
        if out is None:
            raise SamfedError("--resume needs --out RUN_DIR, the run to continue.")
        saved = RunDir(out).config
        if not saved.is_file():
            raise SamfedError(f"Nothing to resume in {out}: it has no config.toml.")
        may_change = ("rounds", *(k for k in RunConfig.machine_settings() if k in flags))
        changed = sorted(k for k, v in flags.items() if v is not None and k not in may_change)
        if changed:
            allowed = ", ".join(f"--{k.replace('_', '-')}" for k in may_change)
            raise SamfedError(
                f"--resume continues the saved configuration; only {allowed} may change "
                f"(got --{changed[0].replace('_', '-')})."
            )
        cfg = RunConfig.load(saved).override(**{k: flags[k] for k in may_change})
    else:
        cfg = RunConfig.load(config) if config is not None else RunConfig()
        cfg = cfg.override(**flags)
        if out is None:
            out = (
                Path(cfg.out) if cfg.out else Path("runs") / f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
            )
    if cfg.data is not None and not Path(cfg.data).is_dir():
        raise SamfedError(f"Dataset folder {cfg.data} does not exist.")
    _run(engine, cfg, out, resume, Console(quiet=quiet))


def _run(engine: str, cfg, out: Path, resume: bool, console) -> None:
    """Run `cfg` into `out` on `engine`; the report's path is printed last (also when quiet)."""
    if engine == "flower-sim":
        from samfed.federation.simulation import run_simulation
        from samfed.train.run_dir import RunDir

        run_simulation(cfg, out, resume=resume, say=lambda s: console.print(s, markup=False, highlight=False))
        report = RunDir(Path(out).expanduser().resolve()).report_html
    else:
        from samfed.train.runner import train as run_training

        report = run_training(cfg, out, resume=resume, console=console, progress=not console.quiet).report
        if not console.quiet:  # the run said it on the console
            return
    print(f"report: {report}")
