"""In-process federated simulation of SAM-Fed and its baselines (the `samfed train` engine).

One call of `train(cfg, out)`:

1. data: the dataset folder (or the built-in synthetic set written into the run directory), the
   split (server labeled D_p | clients | val | test), arrays at the working size;
2. server initialisation: teacher fine-tuned on D_p (methods that use it) and saved; teacher maps
   computed once per client image and cached; global student trained on D_p; client warm-up;
3. rounds: every client runs `samfed.method.local_update.client_update`, the server runs
   `samfed.method.aggregation.aggregate`; validation after every round; an atomic resume
   checkpoint after every round;
4. outputs: global and client checkpoints, metrics.jsonl, plots, report, summary, manifest.

All randomness comes from `derive_seed(cfg.seed, ...)` per step, so a resumed run ends with the
same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from samfed.config import RunConfig, changed_settings
from samfed.errors import SamfedError, require_folder_or_new
from samfed.method.aggregation import ClientResult, aggregate
from samfed.method.arrays import SegArrays, concat, derive_seed, predict_proba
from samfed.method.device import resolve_device
from samfed.method.local_update import client_update, first_nonfinite, state_copy
from samfed.method.methods import MethodSpec, method_spec
from samfed.method.server import baseline_round, init_global, warmup_client
from samfed.preprocess import Preprocessing
from samfed.train.compare import mean_client_size, round0_dice, supervised_rounds, teacher_warning
from samfed.train.console_log import RunLog
from samfed.train.evaluation import evaluate_arrays, map_dice
from samfed.train.run_dir import (
    RunDir,
    atomic_write_text,
    cache_folder,
    manifest_format,
    require_writable_cache,
)

CHECKPOINT_FORMAT = 1


@dataclass
class Sets:
    """The arrays of one run: D_p, each client's images (masks for logging only), val, test."""

    labeled: SegArrays
    clients: list[SegArrays]
    val: SegArrays
    test: SegArrays | None
    teacher_maps: list[np.ndarray | None] = field(default_factory=list)
    val_maps: np.ndarray | None = None  # (N, S, S) teacher probabilities of the validation images


@dataclass
class RunResult:
    run_dir: Path
    summary: dict
    report: Path


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


# ---- data --------------------------------------------------------------------------------------


def new_split(cfg: RunConfig, dataset):
    """cfg.split loaded and checked against `dataset`, else the split made from cfg's partition
    settings (deterministic in cfg.seed)."""
    from samfed.data.partition import Split, make_split

    if cfg.split:
        split = Split.load(cfg.split)
        split.validate(dataset)
        return split
    return make_split(
        dataset,
        clients=cfg.clients,
        labeled_fraction=cfg.labeled_fraction,
        scheme=cfg.partition,
        alpha=cfg.dirichlet_alpha,
        seed=cfg.seed,
        val_fraction=cfg.val_fraction,
        test_fraction=cfg.test_fraction,
    )


def prepare_dataset(cfg: RunConfig, run: RunDir, say):
    """The dataset (writing the synthetic one into run/data when cfg.data is None) and the split."""
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset

    if cfg.data is None:
        if not (run.data / "synth.json").is_file():
            from samfed.data.synth import write_synthetic

            say(
                f"writing the built-in synthetic {cfg.synthetic_domain} set "
                f"({cfg.synthetic_n} images) to {run.data}"
            )
            write_synthetic(
                cfg.synthetic_domain, cfg.synthetic_n, run.data, seed=cfg.seed, size=max(cfg.image_size, 160)
            )
        dataset = load_dataset(run.data)
    else:
        dataset = load_dataset(cfg.data)
    if run.split.is_file():
        split = Split.load(run.split)
        split.validate(dataset)
    else:
        split = new_split(cfg, dataset)
        split.save(run.split)
    if not split.val:
        raise SamfedError("The split has no validation images; raise the validation fraction or add val.txt.")
    return dataset, split


def split_arrays(dataset, ids: list[str], size: int, need_masks: bool) -> SegArrays:
    from samfed.data.dataset import load_arrays

    has = all(s.mask is not None for s in dataset.select(ids))
    if need_masks and not has:
        raise SamfedError("Server-labeled and validation images need masks; some in the split have none.")
    images, masks = load_arrays(dataset, ids, size, with_masks=has)
    return SegArrays(images, masks, list(ids))


def load_sets(dataset, split, cfg: RunConfig) -> Sets:
    s = cfg.image_size
    clients = [split_arrays(dataset, ids, s, False) for ids in split.clients]
    test = split_arrays(dataset, split.test, s, True) if split.test else None
    return Sets(
        split_arrays(dataset, split.server_labeled, s, True),
        clients,
        split_arrays(dataset, split.val, s, True),
        test,
    )


# ---- teacher -----------------------------------------------------------------------------------


def teacher_images(dataset, ids: list[str], teacher) -> list[np.ndarray]:
    """Images as the teacher sees them: decoded at its input size for the stretch convention."""
    if teacher.input.convention == "stretch-unit":
        from samfed.data.dataset import load_arrays

        images, _ = load_arrays(dataset, ids, teacher.input.size, with_masks=False)
        return list(images)
    from samfed.data.io import read_image

    return [read_image(s.image) for s in dataset.select(ids)]


def prepare_teacher(cfg: RunConfig, run: RunDir, dataset, split, say) -> tuple[object, dict]:
    """Load, fine-tune on D_p (cfg.teacher_mode) and save the teacher; reuse run/teacher on resume."""
    from samfed.teacher import finetune_teacher, load_teacher, save_teacher
    from samfed.teacher.data import holdout, load_pairs
    from samfed.teacher.state import is_teacher_dir

    device = resolve_device(cfg.device)
    if is_teacher_dir(run.teacher):
        teacher = load_teacher(run.teacher, cfg.teacher_checkpoint).to(device)
        return teacher, {
            "name": teacher.name,
            "mode": "resumed",
            "prompt": teacher.prompt,
            "hash": teacher.hash,
            **teacher.config.finetune,
        }
    given_dir = is_teacher_dir(cfg.teacher)
    teacher = load_teacher(cfg.teacher, cfg.teacher_checkpoint, None if given_dir else cfg.teacher_prompt)
    teacher.to(device)
    info = {
        "name": teacher.name,
        "mode": "given" if given_dir else cfg.teacher_mode,
        "prompt": teacher.prompt,
    }
    if not given_dir and cfg.teacher_mode != "none":
        train_ids, val_ids = holdout(split.server_labeled, 0.2, cfg.seed)
        say(
            f"fine-tuning the teacher ({cfg.teacher_mode}) on {len(train_ids)} + {len(val_ids)} server images"
        )
        images, masks = load_pairs(dataset, train_ids, teacher.input)
        v_images, v_masks = load_pairs(dataset, val_ids, teacher.input)
        result = finetune_teacher(
            teacher,
            images,
            masks,
            v_images,
            v_masks,
            mode=cfg.teacher_mode,
            prompt=cfg.teacher_prompt,
            epochs=cfg.teacher_epochs,
            seed=cfg.seed,
            embedding_cache=cache_root(cfg) / "embeddings",
            progress=False,
            decoder_warmup_epochs=max(1, cfg.teacher_epochs // 2) if cfg.teacher_mode == "lora" else 0,
        )
        info.update(
            best_val_dice_holdout=result.best_val_dice,
            best_epoch=result.best_epoch,
            finetune_seconds=result.seconds,
        )
    info["hash"] = save_teacher(teacher, run.teacher)
    return teacher, info


def cache_root(cfg: RunConfig) -> Path:
    """The shared cache folder of this run's speed-up caches (cfg.cache, else the older
    cfg.teacher_cache, else $SAMFED_CACHE or ~/.cache/samfed)."""
    return cache_folder(cfg.cache or cfg.teacher_cache)


def compute_maps(
    teacher,
    dataset,
    ids: list[str],
    cfg: RunConfig,
    run: RunDir | None = None,
    prompt_masks: np.ndarray | None = None,
) -> np.ndarray:
    """Teacher probabilities (N, S, S) float32 for `ids`, cached on disk (computed once per image).

    The cache is `cache_root(cfg)`, keyed by the teacher's hash and the image content; `run` is
    not used (kept for callers). prompt_masks: (N, S, S) bool masks of the initial global model,
    for the ``global-box`` prompt.
    """
    from samfed.teacher import TeacherMapCache, teacher_maps

    if not ids:
        return np.zeros((0, cfg.image_size, cfg.image_size), np.float32)
    root = cache_root(cfg)
    if hasattr(teacher, "encoder_hash") and hasattr(teacher, "decode"):
        from samfed.train.teacher_maps import EmbeddingCachedTeacher

        teacher = EmbeddingCachedTeacher(teacher, root / "embeddings")
    masks = None if teacher.prompt != "global-box" else list(prompt_masks)
    images = teacher_images(dataset, ids, teacher)
    return teacher_maps(
        teacher, images, TeacherMapCache(root / "teacher_maps"), cfg.image_size, prompt_masks=masks
    )


# ---- models and state --------------------------------------------------------------------------


def new_model(arch: str, cfg: RunConfig, *keys) -> nn.Module:
    """A freshly initialised student on the run's device (seeded by cfg.seed, arch and keys)."""
    torch.manual_seed(derive_seed(cfg.seed, "init", arch, *keys) % (2**63))
    from samfed.models import create_student

    return create_student(arch, norm=cfg.norm).to(resolve_device(cfg.device))


def round_state(
    round_: int, glob: nn.Module, clients: list[nn.Module], cfg: RunConfig, global_init: dict
) -> dict:
    return {
        "global_init": global_init,
        "format": torch.tensor(CHECKPOINT_FORMAT),
        "round": torch.tensor(round_),
        "seed": torch.tensor(cfg.seed),
        "global": state_copy(glob),
        "clients": [state_copy(m) for m in clients],
        "torch_rng": torch.get_rng_state(),
        "threads": torch.tensor(torch.get_num_threads()),
    }


@functools.cache
def _code_digest() -> str:
    """sha256 of the sources that define a student's training (models, method, preprocessing): a
    cached initial model is used only with the code that made it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *root.glob("method/*.py"), root / "preprocess.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def init_key(glob: nn.Module, labeled: SegArrays, cfg: RunConfig) -> str:
    """Content key of the initial global model: its random initial weights (architecture, norm,
    seed), the D_p images and masks, the training settings, the code and the machine settings
    that change the result (threads, device, precision)."""
    import samfed

    settings = [
        cfg.server_epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.image_size, cfg.weak_aug,
        cfg.precision, resolve_device(cfg.device).type, torch.get_num_threads(), cfg.seed,
        torch.__version__, samfed.__version__, _code_digest(),
    ]  # fmt: skip
    digest = hashlib.sha256(repr(settings).encode())
    for name, tensor in glob.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(np.ascontiguousarray(labeled.images).tobytes())
    digest.update(np.ascontiguousarray(labeled.masks).tobytes())
    return digest.hexdigest()


def cached_init_global(
    glob: nn.Module, labeled: SegArrays, cfg: RunConfig, run: RunDir | None = None
) -> dict:
    """`init_global`, memoised in `cache_root(cfg)/global_init` under `init_key` (a pure speed-up:
    training is deterministic for a given thread count). `run` is not used (kept for callers).
    A cache entry that cannot be read is trained again."""
    from samfed.train.run_dir import atomic_write_bytes

    path = cache_root(cfg) / "global_init" / f"{init_key(glob, labeled, cfg)[:32]}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            glob.load_state_dict(saved["state"])
            return {**saved["info"], "cached": True}
        except Exception:  # noqa: BLE001 - a torn or foreign file: train again and replace it
            pass
    info = init_global(glob, labeled, cfg, cfg.seed)
    buf = io.BytesIO()
    torch.save({"state": state_copy(glob), "info": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return info


# ---- the run -----------------------------------------------------------------------------------


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
    if resolve_device(cfg.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
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
    """`train` after the checks: data, server initialisation, rounds, baseline, outputs."""
    say = log.say
    console = log.console
    spec = method_spec(cfg.method)
    resume = state is not None
    if not run.start_config.is_file():
        atomic_write_text(run.start_config, cfg.to_toml())
    atomic_write_text(run.config, cfg.to_toml())
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = stages.get(name, 0.0) + now - clock
        clock = now

    dataset, split = prepare_dataset(cfg, run, say)
    sets = load_sets(dataset, split, cfg)
    prep = Preprocessing(size=cfg.image_size)
    say(
        f"[bold]{cfg.method}[/]: {len(sets.labeled)} labeled server images, clients "
        f"{[len(c) for c in sets.clients]}, {len(sets.val)} validation images, {cfg.image_size} px"
    )
    stage("data")

    glob = new_model(cfg.global_arch, cfg, "global")
    federated = spec.kind == "federated"
    clients = (
        [new_model(cfg.client_arch(k), cfg, "client", k) for k in range(len(sets.clients))]
        if federated
        else []
    )
    start_round = 0
    init_info: dict = {}
    if resume:
        glob.load_state_dict(state["global_init"])
    else:
        say(f"training the global model on the {len(sets.labeled)} server images (server initialisation)")
        init_info = cached_init_global(glob, sets.labeled, cfg, run)
        require_finite(glob, run, "the initial training of the global model on D_p")
    stage("server init")

    teacher_info: dict = {}
    sets.teacher_maps = [None] * len(sets.clients)
    if spec.needs_teacher:
        if teacher is None:
            teacher, teacher_info = prepare_teacher(cfg, run, dataset, split, say)
        else:
            teacher_info = {
                "name": getattr(teacher, "name", "injected"),
                "mode": "injected",
                "prompt": getattr(teacher, "prompt", None),
            }
        stage("teacher fine-tune")
        say(
            f"teacher maps for {sum(len(c) for c in sets.clients) + len(sets.val)} images "
            f"(prompt {teacher.prompt}; cached in {cache_root(cfg)})"
        )

        def prompt_masks(data: SegArrays):
            return predict_proba(glob, data, prep) > 0.5 if teacher.prompt == "global-box" else None

        sets.teacher_maps = [
            compute_maps(teacher, dataset, c.ids, cfg, run, prompt_masks(c)) for c in sets.clients
        ]
        sets.val_maps = compute_maps(teacher, dataset, sets.val.ids, cfg, run, prompt_masks(sets.val))
        teacher_info["val_dice"] = map_dice(sets.val_maps, sets.val.masks)
        stage("teacher maps")
        teacher_info["maps_seconds"] = stages["teacher maps"]
        say(f"teacher validation Dice {teacher_info['val_dice']:.3f}")

    global_init = state_copy(glob)
    if resume:
        glob.load_state_dict(state["global"])
        restore_clients(run, clients, state)
        torch.set_rng_state(state["torch_rng"])
        start_round = int(state["round"])
        run.truncate_metrics(start_round)
        say(f"resuming after round {start_round}")
    else:
        for k, m in enumerate(clients):
            warmup_client(m, cfg.client_arch(k), glob, sets.labeled, cfg, derive_seed(cfg.seed, "warmup", k))
            require_finite(m, run, f"the warm-up of client {k}")
        stage("client warm-up")
        init_seconds = sum(stages[k] for k in INIT_STAGES if k in stages)
        run.log({"event": "init", "round": 0, **init_info, "teacher": teacher_info, "stages": dict(stages)})
        log_round(run, 0, glob, clients, sets, prep, {}, {}, init_seconds, say)
        run.save_state(round_state(0, glob, clients, cfg, global_init))
    warning = teacher_warning(teacher_info.get("val_dice"), round0_dice(run.read_metrics()))
    if warning:
        say(f"[yellow]{escape(warning)}[/]")

    clock = time.perf_counter()
    _run_rounds(cfg, spec, run, sets, glob, clients, prep, start_round, console, progress, say, global_init)
    stage("rounds")
    baseline = None
    if federated:
        say(f"supervised baseline: {cfg.rounds} rounds on the server images only, from the same start")
        baseline = new_model(cfg.global_arch, cfg, "global")
        baseline.load_state_dict(global_init)
        supervised_rounds(baseline, sets, cfg, prep, lambda r, rec: run.log(rec))
        require_finite(baseline, run, "the supervised baseline")
        stage("supervised baseline")

    summary = finish(
        cfg,
        run,
        split,
        sets,
        glob,
        clients,
        prep,
        teacher_info,
        time.perf_counter() - t_start,
        baseline=baseline,
        stages=stages,
        compact_state=True,
    )
    say(f"[green]done[/] in {summary['seconds']:.0f} s: {comparison_line(summary)}")
    say(f"report: [bold]{escape(str(run.report_html))}[/]")
    return RunResult(run.root, summary, run.report_html)


INIT_STAGES = ("server init", "teacher fine-tune", "teacher maps", "client warm-up")


def comparison_line(summary: dict) -> str:
    """'global validation Dice 0.712 (round 0: 0.650; supervised: 0.661)' from a summary."""
    c = summary.get("comparison") or {}
    line = f"global validation Dice {summary['val_dice']:.3f}"
    extra = []
    if c.get("round0_val_dice") is not None:
        extra.append(f"round 0: {c['round0_val_dice']:.3f}")
    if c.get("supervised_val_dice") is not None:
        extra.append(f"supervised: {c['supervised_val_dice']:.3f}")
    return line + (f" ({'; '.join(extra)})" if extra else "")


def restore_clients(run: RunDir, clients: list[nn.Module], state: dict) -> None:
    """Client weights from the resume state, or, for a finished run whose state leaves them out,
    from clients/<k>/ (written with that state)."""
    if "clients" in state:
        for m, st in zip(clients, state["clients"], strict=True):
            m.load_state_dict(st)
        return
    from safetensors.torch import load_file

    for k, m in enumerate(clients):
        path = run.client_dir(k) / "student.safetensors"
        try:
            m.load_state_dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - missing, torn or foreign file
            raise SamfedError(
                f"Cannot resume {run.root}: client {k}'s weights {path} are unreadable ({exc})."
            ) from None


def compact_finished_state(run: RunDir) -> None:
    """Drop the client models from a finished run's resume state: finish() has just written them
    to clients/<k>/, where a resume reads them (`restore_clients`)."""
    state = run.load_state()
    if state.pop("clients", None) is not None:
        run.save_state(state)


def _run_rounds(
    cfg,
    spec: MethodSpec,
    run,
    sets: Sets,
    glob,
    clients,
    prep,
    start_round,
    console,
    progress,
    say,
    global_init: dict,
):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    per_round = max(1, len(clients))
    bar = (
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        if progress
        else contextlib.nullcontext()
    )
    pooled = None
    if spec.kind == "centralised":
        if any(c.masks is None for c in sets.clients):
            raise SamfedError("The centralised baseline needs masks for every client image.")
        pooled = concat([sets.labeled, *sets.clients])
    mean_client = mean_client_size([len(c) for c in sets.clients])
    with bar:
        task = bar.add_task("rounds", total=(cfg.rounds - start_round) * per_round) if progress else None
        for r in range(start_round + 1, cfg.rounds + 1):
            t0 = time.perf_counter()
            client_metrics: dict[int, dict] = {}
            agg_metrics: dict = {}
            if spec.kind == "federated":
                results = []
                for k, local in enumerate(clients):
                    if progress:
                        bar.update(
                            task, description=f"round {r}/{cfg.rounds} client {k} ({cfg.client_arch(k)})"
                        )
                    state, n, met = client_update(
                        glob,
                        local,
                        sets.clients[k],
                        sets.teacher_maps[k],
                        sets.labeled,
                        cfg,
                        r,
                        derive_seed(cfg.seed, "round", r, "client", k),
                    )
                    require_finite(state, run, f"round {r}, client {k}", met.get("loss"), r)
                    local.load_state_dict(state)
                    results.append(ClientResult(state, n, local, met))
                    client_metrics[k] = {"arch": cfg.client_arch(k), "n": n, **met}
                    if progress:
                        bar.advance(task)
                new_state, agg_metrics = aggregate(
                    cfg.aggregation_rule,
                    glob,
                    results,
                    sets.labeled,
                    cfg,
                    r,
                    derive_seed(cfg.seed, "aggregate", r),
                )
                glob.load_state_dict(new_state)
            else:
                if progress:
                    bar.update(task, description=f"round {r}/{cfg.rounds} ({spec.kind})")
                agg_metrics = baseline_round(
                    glob,
                    spec.kind,
                    sets.labeled,
                    pooled,
                    mean_client,
                    cfg,
                    derive_seed(cfg.seed, "baseline", r),
                )
                if progress:
                    bar.advance(task)
            require_finite(glob, run, f"round {r}, aggregation", None, r)
            log_round(
                run, r, glob, clients, sets, prep, agg_metrics, client_metrics, time.perf_counter() - t0, say
            )
            run.save_state(round_state(r, glob, clients, cfg, global_init))


def log_round(
    run: RunDir, r: int, glob, clients, sets: Sets, prep, agg: dict, client_metrics: dict, seconds: float, say
) -> None:
    """Validate the global model and every client model (with FedAvg a client model is the
    pre-aggregation copy; at round 0 the warm-up model); log one record per client and the round
    record (`seconds`: the round's time; for round 0 the server initialisation's)."""
    rows = evaluate_arrays(glob, sets.val, prep)
    dice = float(np.mean([x["dice"] for x in rows]))
    hd = float(np.mean([x["hd95"] for x in rows]))
    client_dice = []
    for k, m in enumerate(clients):
        cd = float(np.mean([x["dice"] for x in evaluate_arrays(m, sets.val, prep, with_hd95=False)]))
        client_dice.append(cd)
        run.log({"event": "client", "round": r, "client": k, **client_metrics.get(k, {}), "val_dice": cd})
    run.log(
        {
            "event": "round",
            "round": r,
            "val_dice": dice,
            "val_hd95": hd,
            "seconds": seconds,
            "client_val_dice": client_dice,
            **agg,
        }
    )
    extra = ""
    source = "teacher" if any(m is not None for m in sets.teacher_maps) else "source"
    recs = list(client_metrics.values())
    agree = [x["agreement_rate"] for x in recs if x.get("agreement_rate") is not None]
    pl = [x for x in recs if x.get("pl_dice") is not None]
    if agree:
        extra += f", agreement {np.mean(agree):.3f}"
    if pl:
        extra += (
            f", pseudo-label Dice {np.mean([x['pl_dice'] for x in pl]):.3f} "
            f"({source} {np.mean([x['teacher_dice'] for x in pl]):.3f})"
        )
    cl = f" (clients {', '.join(f'{d:.3f}' for d in client_dice)})" if client_dice else ""
    say(f"round {r}: global val Dice {dice:.3f}, HD95 {hd:.1f}{cl}{extra}, {seconds:.1f} s")


# ---- outputs -----------------------------------------------------------------------------------


def _score(model, arch: str, name: str, split_name: str, data: SegArrays, prep) -> dict:
    from samfed.metrics import summarize

    s = summarize(evaluate_arrays(model, data, prep))
    return {
        "model": name,
        "arch": arch,
        "split": split_name,
        "dice_mean": s["dice"]["mean"],
        "dice_std": s["dice"]["std"],
        "hd95_mean": s["hd95"]["mean"],
        "iou_mean": s["iou"]["mean"],
        "n": s["dice"]["n"],
    }


def tail_mean(records: list[dict], key: str, k: int) -> float | None:
    """Mean of `key` over the last k rounds >= 1 of the round records: the global model's score
    moves by a few points from round to round under FedAvg, so comparisons of runs are steadier on
    this than on the last round alone."""
    vals = [r[key] for r in records if r.get("event") == "round" and r["round"] >= 1 and key in r]
    return float(np.mean(vals[-k:])) if vals else None


def finish(
    cfg,
    run: RunDir,
    split,
    sets: Sets,
    glob,
    clients,
    prep,
    teacher_info: dict,
    seconds: float,
    *,
    baseline: nn.Module | None = None,
    stages: dict[str, float] | None = None,
    compact_state: bool = False,
) -> dict:
    """Checkpoints, final scores, plots, report, summary.json and manifest.json.

    baseline: the `supervised` baseline's final model (its per-round records are in the metrics);
    stages: seconds per stage of this process; compact_state: drop the client models from the
    resume state once they are written to clients/<k>/ (a resume reads them there)."""
    from export.checkpoint import save_student_checkpoint
    from samfed.train.provenance import provenance
    from samfed.train.report import write_report

    data_path = str(run.data.resolve()) if cfg.data is None else str(Path(cfg.data).resolve())
    meta = {
        "source_run": str(run.root.resolve()),
        "data_path": data_path,
        "split": "split.json",
        "method": cfg.method,
        "rounds": cfg.rounds,
        "seed": cfg.seed,
    }
    save_student_checkpoint(glob, cfg.global_arch, cfg.norm, prep, run.global_dir, role="global", **meta)
    for k, m in enumerate(clients):
        save_student_checkpoint(
            m, cfg.client_arch(k), cfg.norm, prep, run.client_dir(k), role=f"client {k}", **meta
        )
    if compact_state:
        compact_finished_state(run)

    models = [_score(glob, cfg.global_arch, "global", "val", sets.val, prep)]
    if sets.test is not None:
        models.append(_score(glob, cfg.global_arch, "global", "test", sets.test, prep))
    models += [
        _score(m, cfg.client_arch(k), f"client {k}", "val", sets.val, prep) for k, m in enumerate(clients)
    ]
    if baseline is not None:
        models.append(_score(baseline, cfg.global_arch, "supervised", "val", sets.val, prep))
        if sets.test is not None:
            models.append(_score(baseline, cfg.global_arch, "supervised", "test", sets.test, prep))
    records = run.read_metrics()
    r0 = round0_dice(records)
    summary = {
        "config": cfg.to_dict(),
        "data": cfg.data or "built-in synthetic",
        "split_sizes": {
            "server_labeled": len(split.server_labeled),
            "clients": [len(c) for c in split.clients],
            "val": len(split.val),
            "test": len(split.test),
        },
        "aggregation": cfg.aggregation_rule if method_spec(cfg.method).kind == "federated" else "-",
        "teacher": teacher_info,
        "models": models,
        "val_dice": models[0]["dice_mean"],
        "val_hd95": models[0]["hd95_mean"],
        "val_dice_last5": tail_mean(records, "val_dice", 5),
        "comparison": comparison(cfg, models, r0),
        "warnings": [w for w in [teacher_warning(teacher_info.get("val_dice"), r0)] if w],
        "stages": stage_seconds(records, stages or {}),
        "seconds": seconds,
        **provenance(),
    }
    run.log(
        {
            "event": "final",
            "round": cfg.rounds,
            "val_dice": summary["val_dice"],
            "val_hd95": summary["val_hd95"],
            "seconds": seconds,
        }
    )
    records = run.read_metrics()
    plots = make_plots(cfg, run, sets, glob, clients, prep, records, summary)
    run.write_json(run.summary, summary)
    write_report(run.root, summary, records, plots)
    run.write_manifest()
    return summary


def comparison(cfg: RunConfig, models: list[dict], round0: float | None) -> dict:
    """The lead numbers of the report: the method's global model at round 0 and at the end, and
    the `supervised` baseline's end (None for methods without one)."""

    def pick(name: str, split_name: str, key: str):
        row = next((m for m in models if m["model"] == name and m["split"] == split_name), None)
        return None if row is None else row[key]

    return {
        "method": cfg.method,
        "round0_val_dice": round0,
        "val_dice": pick("global", "val", "dice_mean"),
        "val_hd95": pick("global", "val", "hd95_mean"),
        "test_dice": pick("global", "test", "dice_mean"),
        "supervised_val_dice": pick("supervised", "val", "dice_mean"),
        "supervised_val_hd95": pick("supervised", "val", "hd95_mean"),
        "supervised_test_dice": pick("supervised", "test", "dice_mean"),
    }


def stage_seconds(records: list[dict], here: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of the whole run: the initialisation stages as the run's init record has
    them (its first process), every round's time from the round records, then this process's
    later stages (supervised baseline)."""
    init = next((r.get("stages") for r in records if r.get("event") == "init"), None) or {}
    found = {k: float(v) for k, v in init.items() if isinstance(v, int | float)}
    rounds = [r["seconds"] for r in records if r.get("event") == "round" and r.get("round", 0) >= 1]
    found["rounds"] = float(sum(rounds))
    found.update({k: v for k, v in here.items() if k not in found and k not in INIT_STAGES})
    order = ("data", *INIT_STAGES, "rounds")
    return {k: found[k] for k in sorted(found, key=lambda k: order.index(k) if k in order else len(order))}


def make_plots(cfg: RunConfig, run: RunDir, sets: Sets, glob, clients, prep, records, summary) -> list[Path]:
    """The report's PNGs: validation Dice per round (method, clients, supervised, teacher), loss,
    agreement, and the qualitative panel of a few validation images."""
    from samfed.train.evaluation import panel_rows
    from samfed.train.plots import plot_agreement, plot_loss, plot_qualitative, plot_val_dice

    teacher_dice = (summary.get("teacher") or {}).get("val_dice")
    spec = method_spec(cfg.method)
    panel = panel_rows(cfg, sets, glob, clients, prep)
    made = [
        plot_val_dice(records, run.plots / "val_dice.png", cfg.method, teacher_dice),
        plot_loss(records, run.plots / "loss.png"),
        plot_agreement(records, run.plots / "agreement.png", "teacher" if spec.needs_teacher else "source"),
        plot_qualitative(panel, run.plots / "qualitative.png"),
    ]
    return [p for p in made if p is not None]
