"""In-process federated simulation of SAM-Fed and its baselines (the `samfed train` runner).

`train(cfg, out)` checks the settings and the run folder, loads the data (the dataset folder, or
the built-in synthetic set written into the run directory) and runs `samfed.engine.Engine` with
`InProcessClients`: every client's `client_round` in this process, one after another. The Flower
ServerApp runs the same engine with messages to the nodes instead, so both give the same weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from samfed.config import RunConfig
from samfed.engine.checks import check_resume, check_run_folder, run_threads, validate_config
from samfed.engine.client import client_round
from samfed.engine.data import load_sets, prepare_dataset
from samfed.engine.engine import ClientStep, ClientUpdate, Engine, RoundUpdates
from samfed.engine.outputs import comparison_line
from samfed.engine.reporter import Reporter
from samfed.engine.seeds import baseline_seed, client_seed
from samfed.engine.teacher import cache_root, compute_maps, prompt_masks
from samfed.errors import SamfedError
from samfed.method.arrays import concat
from samfed.method.device import resolve_device
from samfed.method.precision import BF16_EMULATED, native_bf16
from samfed.method.server import baseline_round
from samfed.train.compare import mean_client_size
from samfed.train.console_log import RunLog
from samfed.train.run_dir import RunDir, atomic_write_text, require_writable_cache


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    report: Path


class InProcessClients(ClientStep):
    """Every client's update in this process (`client_round`), or a baseline method's round."""

    def on_teacher(self, engine: Engine, teacher) -> None:
        sets, cfg = engine.sets, engine.cfg
        engine.say(
            f"teacher maps for {sum(len(c) for c in sets.clients) + len(sets.val)} images "
            f"(prompt {teacher.prompt}; cached in {cache_root(cfg)})"
        )
        sets.teacher_maps = [
            compute_maps(engine.maps_teacher, engine.dataset, c.ids, cfg,
                         prompt_masks(teacher.prompt, engine.glob, c, engine.prep))
            for c in sets.clients
        ]  # fmt: skip

    def updates(self, engine: Engine, r: int) -> RoundUpdates:
        cfg, sets = engine.cfg, engine.sets
        if not engine.federated:
            return RoundUpdates(trained_global=self.baseline(engine, r))
        maps = sets.teacher_maps or [None] * len(sets.clients)
        out = []
        for k, local in enumerate(engine.clients):
            engine.bar.describe(f"round {r}/{cfg.rounds} client {k} ({cfg.client_arch(k)})")
            state, n, met = client_round(
                engine.glob,
                local,
                sets.clients[k],
                maps[k],
                sets.labeled,
                cfg,
                r,
                client_seed(cfg.seed, r, k),
            )
            out.append(ClientUpdate(k, state, n, met))
            engine.bar.advance()
        return RoundUpdates(out)

    def baseline(self, engine: Engine, r: int) -> dict:
        """One round of `supervised` (D_p) or `centralised` (D_p and every client's labeled images)."""
        sets, kind = engine.sets, engine.spec.kind
        engine.bar.describe(f"round {r}/{engine.cfg.rounds} ({kind})")
        pooled = None
        if kind == "centralised":
            if any(c.masks is None for c in sets.clients):
                raise SamfedError("The centralised baseline needs masks for every client image.")
            pooled = concat([sets.labeled, *sets.clients])
        mean_client = mean_client_size([len(c) for c in sets.clients])
        seed = baseline_seed(engine.cfg.seed, r)
        met = baseline_round(engine.glob, kind, sets.labeled, pooled, mean_client, engine.cfg, seed)
        engine.bar.advance()
        return met


def train(
    cfg: RunConfig,
    out: str | Path,
    resume: bool = False,
    console: Console | None = None,
    progress: bool = True,
    teacher=None,
) -> RunResult:
    """Run (or resume) one training run into directory `out`; returns its summary and report path.

    teacher: optional ready teacher object (``predict_proba``, ``hash``, ``prompt``, ``input``)
    used instead of loading and fine-tuning cfg.teacher. Everything said on the console is also
    appended to `out`/train.log.
    """
    log = RunLog(console or Console(quiet=not progress))
    t_start = time.perf_counter()
    validate_config(cfg)
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    if cfg.precision == "bf16" and not native_bf16(device):
        log.say(f"[yellow]warning[/]: this CPU has {BF16_EMULATED}; use --precision fp32")
    run = RunDir(out)
    check_run_folder(run, resume)
    require_writable_cache(cache_root(cfg))
    state = None
    if resume and run.checkpoint.is_file():
        state = run.load_state()
        check_resume(cfg, run, int(state["round"]))
    elif resume:
        check_resume(cfg, run, 0)
        log.say(f"no round of {run.root} had finished: starting it again")
        run.metrics.unlink(missing_ok=True)
    torch.set_num_threads(run_threads(cfg, state))
    run.root.mkdir(parents=True, exist_ok=True)
    log.open(run.log_file)
    try:
        return _train(cfg, run, state, log, progress, teacher, t_start)
    except SamfedError as exc:
        log.log_only(f"error: {exc}")
        raise
    except KeyboardInterrupt:
        log.log_only("interrupted; finished work is saved: rerun with --resume to continue.")
        raise
    finally:
        log.close()


def _train(cfg: RunConfig, run: RunDir, state: dict | None, log: RunLog, progress, teacher, t_start):
    """`train` after the checks: the data, then the engine."""
    if not run.start_config.is_file():
        atomic_write_text(run.start_config, cfg.to_toml())
    atomic_write_text(run.config, cfg.to_toml())
    clock = time.perf_counter()
    dataset, split = prepare_dataset(cfg, run, log.say)
    sets = load_sets(dataset, split, cfg)
    log.say(
        f"[bold]{cfg.method}[/]: {len(sets.labeled)} labeled server images, clients "
        f"{[len(c) for c in sets.clients]}, {len(sets.val)} validation images, {cfg.image_size} px"
    )
    reporter = Reporter(log.say, log.console if progress else None)
    engine = Engine(
        cfg, run, dataset, split, sets, InProcessClients(), reporter, len(sets.clients), state, teacher
    )
    engine.stages["data"] = time.perf_counter() - clock
    summary = engine.run_all(t_start)
    log.say(f"[green]done[/] in {summary['seconds']:.0f} s: {comparison_line(summary)}")
    log.say(f"report: [bold]{escape(str(run.report_html))}[/]")
    return RunResult(run.root, summary, run.report_html)
