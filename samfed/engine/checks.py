"""Checks before and during a run: settings, run folder, resume, thread count, finite weights."""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from samfed.config import RunConfig, changed_settings
from samfed.errors import SamfedError, require_folder_or_new
from samfed.method.device import resolve_device
from samfed.method.local_update import first_nonfinite
from samfed.method.methods import method_spec
from samfed.train.run_dir import RunDir, manifest_format


def validate_config(cfg: RunConfig) -> None:
    """Raise SamfedError for settings a user can get wrong: every field's type and range
    (RunConfig.validate), the method and the device on this machine."""
    cfg.validate()
    method_spec(cfg.method)
    resolve_device(cfg.device)


def check_run_folder(run: RunDir, resume: bool) -> None:
    """A new run needs a new or empty folder; --resume needs a folder holding a run."""
    root = run.root
    require_folder_or_new(root)
    if resume:
        if not run.config.is_file():
            raise SamfedError(f"Nothing to resume in {root}: it holds no run (no config.toml).")
        return
    if run.config.is_file():
        raise SamfedError(
            f"{root} already holds a run; pass --resume to continue it or choose another --out."
        )
    kind = manifest_format(root)
    if kind is not None:
        raise SamfedError(
            f"{root} holds a {kind} artefact (manifest.json), not a training run; choose another --out."
        )
    if root.is_dir() and any(root.iterdir()):
        raise SamfedError(f"{root} is not empty and holds no run; choose a new or empty --out.")


def check_resume(cfg: RunConfig, run: RunDir, done: int) -> None:
    """Refuse to resume with fewer rounds than `done` or with settings that differ from the ones
    the run started with (state/config.toml), except the round count and machine settings."""
    if cfg.rounds < done:
        raise SamfedError(
            f"{run.root} has finished {done} rounds; it cannot be resumed with --rounds {cfg.rounds} "
            f"(pass {done} or more)."
        )
    if not run.start_config.is_file():
        return
    changed = changed_settings(
        RunConfig.load(run.start_config), cfg, ignore=("rounds", *RunConfig.machine_settings())
    )
    if changed:
        raise SamfedError(
            f"The settings of {run.root} changed since the run started ({', '.join(changed)}); "
            "--resume continues the original settings: restore them, or start a new run."
        )


def require_finite(
    model: nn.Module | dict, run: RunDir, where: str, loss: float | None = None, round_: int | None = None
) -> None:
    """Stop the run with one line when `loss` or a weight of `model` (module or state dict) is NaN
    or infinite: the settings made training diverge."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    bad = f"the loss is {loss}" if loss is not None and not math.isfinite(loss) else None
    name = None if bad else first_nonfinite(state)
    if bad is None and name is None:
        return
    saved = f"rounds up to {round_ - 1} stay saved in {run.root}" if round_ else "nothing was saved"
    raise SamfedError(
        f"Training diverged in {where}: {bad or f'weight {name} is not finite'}; {saved}. "
        "Lower lr or the loss weights and start a new run."
    )


def auto_threads(requested: int | None) -> int:
    """`requested`, else torch's default, or 1 when the machine is already busy (load average >= cores
    - 0.5): oversubscribed intra-op threads make small CPU models up to 10x slower than one thread."""
    if requested:
        return requested
    cores = os.cpu_count() or 1
    loadavg = getattr(os, "getloadavg", None)  # absent on Windows
    try:
        busy = loadavg is not None and loadavg()[0] >= cores - 0.5
    except OSError:
        busy = False
    return 1 if busy else max(1, min(torch.get_num_threads(), cores))


def run_threads(cfg: RunConfig, state: dict | None) -> int:
    """The run's intra-op thread count: cfg.threads, else on resume the count the run started with
    (results depend on it: a resumed run ends with the weights of an uninterrupted one only with
    the same count), else `auto_threads`."""
    if cfg.threads is None and state is not None and "threads" in state:
        return int(state["threads"])
    return auto_threads(cfg.threads)
