"""Accuracy benchmark: every method and ablation under one protocol and one seed list.

    python benchmarks/accuracy.py --data ../shared/data/kvasir-seg --partition size --clients 4 \
        --labeled-fraction 0.1 --image-size 256 --schedule full --seeds 0,1,2

Per seed the split (make_split with the seed) and the teacher (LiteMedSAM fine-tuned on D_p once,
saved under OUT/teachers/seed<k>/teacher) are shared by every row; teacher maps and encoder
embeddings are cached in --cache and shared by all rows and seeds. On a CPU the maps come from the
seed teacher's recommended exported variant (the fastest of ONNX Runtime / OpenVINO FP32, bf16,
INT8 whose masks match torch's; exported once into OUT/teachers/seed<k>/exports);
``--teacher-runtime torch`` keeps the torch teacher. Every row is one
`samfed.train.runner.train` run in OUT/runs/seed<k>/<row>/; finished rows are skipped and
interrupted ones resumed, so the benchmark can be stopped and restarted. Writes OUT/accuracy.md,
OUT/accuracy.json and OUT/accuracy.png (validation Dice, mean and std over seeds).

Rows are method names (see samfed.method.methods), optionally with an agreement variant and
RunConfig settings: ``samfed:naive`` runs SAM-Fed with ``--agreement naive``;
``samfed:override@kd_gate=teacher`` also sets ``kd_gate = "teacher"``; list settings take
``/``-separated names: ``samfed@students=mnv2-unet/unet-s/resunet-lite`` is a heterogeneous row.
``{student}`` in a row stands for the first name of --students.

``--preset gpu-full`` sets the full schedule on a GPU (256 px, bf16, ``--device cuda``, seeds
0-2, 8 parallel jobs, the pretrained default student, every row including a heterogeneous pair);
flags given explicitly override the preset. ``--time-budget S`` stops every run S seconds after
the start (finished rounds are kept) and exits 75 while work is left, 0 once the table is
complete: run the same command again to continue. ``--status`` prints where the benchmark stands
and exits. benchmarks/gpu_full.sh wraps the preset in one command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from samfed.method.precision import PRECISIONS  # noqa: E402

DEFAULT_ROWS = ",".join(
    ["supervised", "fixmatch", "sam-only", "samfed", "samfed-no-kd", "samfed-no-agreement", "samfed-no-sam"]
    + ["samfed:naive", "centralised"]
)
HETERO = "students={student}/unet-s/resunet-lite"  # a pretrained, a from-scratch U-Net, an FPN family
GPU_ROWS = ",".join(
    ["samfed", "samfed-no-agreement", "sam-only", "fixmatch", "supervised", "centralised"]
    + ["samfed:reliable", f"samfed@{HETERO}", f"fixmatch@{HETERO}"]
)
# Defaults a preset sets (flags given on the command line win).
PRESETS = {
    "gpu-full": dict(
        schedule="full",
        image_size=256,
        device="cuda",
        precision="bf16",
        students="mnv2-unet",
        rows=GPU_ROWS,
        seeds="0,1,2",
        jobs=8,
        threads=2,
        out=ROOT / "bench_out" / "gpu-full",
    ),
}
EXIT_UNFINISHED = 75  # --time-budget ran out with runs left (EX_TEMPFAIL): run the command again
EXIT_ORPHANED = 70  # a parallel worker whose benchmark process is gone (EX_SOFTWARE)

# The reduced schedule fits a shared 2-core CPU (hours for all rows of one seed at 128 px); the
# full one is for a GPU or a long CPU run.
SCHEDULES = {
    "reduced": dict(
        rounds=4,
        local_epochs=1,
        server_epochs=15,
        warmup_epochs=20,
        distill_epochs=3,
        teacher_epochs=15,
        batch_size=8,
        rampup_rounds=1.0,
        agreement_rampup=2.0,
    ),
    "full": dict(
        rounds=20,
        local_epochs=2,
        server_epochs=60,
        warmup_epochs=60,
        distill_epochs=5,
        teacher_epochs=40,
        batch_size=8,
        rampup_rounds=4.0,
        agreement_rampup=8.0,
    ),
}


def parse_row(row: str) -> tuple[str, dict]:
    """'samfed:override@kd_gate=teacher+lambda_kd=0.5' -> ('samfed', {'agreement': 'override',
    'kd_gate': 'teacher', 'lambda_kd': 0.5}): method, optional agreement, optional RunConfig settings
    (values parsed as the setting's default type; a list setting takes '/'-separated items)."""
    from samfed.config import RunConfig

    head, _, settings = row.partition("@")
    method, _, variant = head.partition(":")
    extra: dict = {"agreement": variant} if variant else {}
    defaults = RunConfig()
    for item in filter(None, settings.split("+")):  # "," separates rows in --rows
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            raise SystemExit(f"error: row {row!r}: unknown setting {key!r}")
        extra[key] = _setting_value(row, key, value, getattr(defaults, key))
    return method, extra


def _setting_value(row: str, key: str, value: str, default):
    """A row's text value as the type of the setting's default (list: '/'-separated strings)."""
    if isinstance(default, list):
        return [v for v in value.split("/") if v]
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    kind = str if default is None else type(default)
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"error: row {row!r}: setting {key} needs {kind.__name__}, got {value!r}") from None


def expand_rows(rows: str, students: str) -> list[str]:
    """--rows split at ',' with `{student}` replaced by the first name of --students."""
    first = next((s for s in students.split(",") if s), "")
    return [r.replace("{student}", first) for r in rows.split(",") if r]


def row_config(args, row: str, seed: int):
    from samfed.config import RunConfig

    method, extra = parse_row(row)
    students = [s for s in args.students.split(",") if s] if args.students else RunConfig().students
    kw = dict(SCHEDULES[args.schedule])
    kw.update(
        data=str(args.data),
        method=method,
        students=students,
        clients=args.clients,
        labeled_fraction=args.labeled_fraction,
        partition=args.partition,
        seed=seed,
        teacher_cache=str(args.cache),
        threads=args.threads,
        teacher_mode=args.teacher_mode,
        precision=args.precision,
        device=args.device,
        split=args.split.format(seed=seed) if args.split else None,
    )
    if args.image_size:
        kw["image_size"] = args.image_size
    if args.rounds is not None:
        kw["rounds"] = args.rounds
    kw.update(extra)
    return RunConfig(**kw)


def ensure_teacher(args, seed: int, say) -> str:
    """Fine-tune the teacher on this seed's D_p once; returns the saved teacher folder."""
    from samfed.data.readers import load_dataset
    from samfed.engine.data import new_split
    from samfed.engine.teacher import prepare_teacher
    from samfed.train.run_dir import RunDir

    run = RunDir(args.out / "teachers" / f"seed{seed}")
    if (run.teacher / "teacher.json").is_file():
        return str(run.teacher)
    cfg = row_config(args, "samfed", seed)
    dataset = load_dataset(cfg.data)
    split = new_split(cfg, dataset)
    run.root.mkdir(parents=True, exist_ok=True)
    split.save(run.split)
    _, info = prepare_teacher(cfg, run, dataset, split, say)
    run.write_json(run.root / "teacher_info.json", info)
    return str(run.teacher)


def maps_teacher(args, seed: int, teacher_dir: str, say):
    """The teacher whose maps the rows of `seed` use: the recommended exported variant of the
    seed's teacher (exported once into OUT/teachers/seed<k>/exports, INT8 calibrated on D_p), or
    None for the torch teacher (--teacher-runtime torch, auto on a GPU, or no variant matching torch)."""
    from samfed.method.device import resolve_device

    if args.teacher_runtime == "torch" or (
        args.teacher_runtime == "auto" and resolve_device(args.device).type != "cpu"
    ):
        return None
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset
    from samfed.teacher import load_teacher
    from samfed.teacher.export import labeled_images, runtime_teacher
    from samfed.train.run_dir import RunDir

    root = args.out / "teachers" / f"seed{seed}"
    teacher = load_teacher(teacher_dir)

    def images():
        labeled = Split.load(RunDir(root).split).server_labeled
        return labeled_images(load_dataset(args.data), labeled, teacher.input, seed=seed)

    rt = runtime_teacher(teacher, root / "exports", images, threads=args.threads, log=say)
    return None if rt is teacher else rt


def check_rows(args, rows: list[str], seed: int) -> None:
    """Before any work: every row's settings are valid, every student of a row (and its global
    model) accepts the image size (a multiple of the student's stride: 32 for the pretrained
    encoders, 16 otherwise) and the device exists. Raises SystemExit with one line otherwise."""
    from samfed.errors import SamfedError
    from samfed.method.device import resolve_device
    from samfed.models import STUDENTS

    for row in rows:
        cfg = row_config(args, row, seed)
        try:
            cfg.validate(f"row {row!r}")
        except SamfedError as exc:
            raise SystemExit(f"error: {exc}") from None
        for arch in dict.fromkeys([*cfg.students, cfg.global_arch]):
            stride = STUDENTS[arch].stride
            if cfg.image_size % stride:
                lo = cfg.image_size // stride * stride
                fits = " or ".join(str(v) for v in (lo, lo + stride) if v >= 32)
                raise SystemExit(
                    f"error: row {row!r}: image size {cfg.image_size} is not a multiple of {stride}, "
                    f"which student {arch} needs; use --image-size {fits}."
                )
    try:
        resolve_device(args.device)
    except SamfedError as exc:
        raise SystemExit(f"error: {exc}") from None


def row_dir(args, row: str, seed: int):
    """The RunDir of one (row, seed) run."""
    from samfed.train.run_dir import RunDir

    return RunDir(args.out / "runs" / f"seed{seed}" / re.sub(r"[^A-Za-z0-9_.-]+", "-", row))


def finished_summary(args, row: str, seed: int) -> dict | None:
    """The summary of a finished (row, seed) run, None while it is unfinished."""
    out = row_dir(args, row, seed)
    if out.summary.is_file() and (out.root / "report.html").is_file():
        return json.loads(out.summary.read_text())
    return None


def run_state(args, row: str, seed: int) -> str:
    """'done (val Dice 0.8123)' | 'round 7 of 20 done' | 'started, no round done' | 'not started'."""
    summary = finished_summary(args, row, seed)
    if summary is not None:
        return f"done (val Dice {summary['val_dice']:.4f})"
    out = row_dir(args, row, seed)
    if not out.root.exists():
        return "not started"
    try:
        done = max((r["round"] for r in out.read_metrics() if r.get("event") == "round"), default=0)
    except Exception:  # noqa: BLE001 - a corrupt log: the run itself will say so when resumed
        done = 0
    if not out.checkpoint.is_file() or not done:
        return "started, no round done"
    return f"round {done} of {row_config(args, row, seed).rounds} done"


def print_status(args, rows: list[str], seeds: list[int], say) -> int:
    """One line per (row, seed) and a count; returns how many runs are unfinished."""
    states = [(row, seed, run_state(args, row, seed)) for row in rows for seed in seeds]
    left = sum(not st.startswith("done") for _, _, st in states)
    say(f"status of {args.out}: {len(states) - left} of {len(states)} runs done")
    for row, seed, st in states:
        say(f"  seed {seed} {row}: {st}")
    return left


def run_row(args, row: str, seed: int, teacher_dir: str | None, say) -> dict:
    from samfed.method.methods import method_spec
    from samfed.train.runner import train

    out = row_dir(args, row, seed)
    summary = finished_summary(args, row, seed)
    if summary is not None:
        return summary
    cfg = row_config(args, row, seed)
    if teacher_dir and method_spec(cfg.method).needs_teacher:
        cfg.teacher = teacher_dir
    resume = out.checkpoint.is_file()
    if out.root.exists() and not resume:
        import shutil

        shutil.rmtree(out.root)  # started but never finished a round: start again
    say(f"--- seed {seed} row {row} -> {out.root}{' (resuming)' if resume else ''}")
    uses_teacher = teacher_dir and method_spec(cfg.method).needs_teacher
    teacher = maps_teacher(args, seed, teacher_dir, say) if uses_teacher else None
    return train(cfg, out.root, resume=resume, progress=args.verbose, teacher=teacher).summary


def _job_init(threads: int | None, parent_pid: int) -> None:
    """Set the worker's torch threads and make it exit when the benchmark process is gone (a `kill`
    of the parent reaches only the parent; orphaned workers would go on training)."""
    import threading

    import torch

    if threads:
        torch.set_num_threads(threads)

    def exit_with_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(2.0)
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=exit_with_parent, name="exit-with-parent", daemon=True).start()


def ensure_init(args, seed: int) -> None:
    """Train the seed's initial global model into the shared cache once, so that rows running in
    parallel share it (GPU training is not bit-deterministic: separate inits would differ)."""
    from samfed.data.readers import load_dataset
    from samfed.engine.data import load_sets, new_split
    from samfed.engine.models import cached_init_global, new_model

    cfg = row_config(args, "supervised", seed)
    dataset = load_dataset(cfg.data)
    sets = load_sets(dataset, new_split(cfg, dataset), cfg)
    cached_init_global(new_model(cfg.global_arch, cfg, "global"), sets.labeled, cfg)


def ensure_maps(args, seed: int, teacher_dir: str, say) -> None:
    """Compute the seed's teacher maps (every client and validation image) into the shared cache
    once, so that rows running in parallel read them instead of each computing the same maps. The
    ``global-box`` prompt is left to the rows (its boxes come from the initial global model)."""
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset
    from samfed.engine.teacher import compute_maps
    from samfed.teacher import load_teacher
    from samfed.train.run_dir import RunDir

    teacher = maps_teacher(args, seed, teacher_dir, say) or load_teacher(teacher_dir)
    if teacher.prompt == "global-box":
        return
    cfg = row_config(args, "samfed", seed)
    split = Split.load(RunDir(args.out / "teachers" / f"seed{seed}").split)
    ids = [i for c in split.clients for i in c] + list(split.val)
    say(f"teacher maps of seed {seed} for {len(ids)} images (shared by its rows)")
    compute_maps(teacher, load_dataset(cfg.data), ids, cfg)


class BudgetSpent(KeyboardInterrupt):
    """--time-budget ran out. A KeyboardInterrupt, so `train` treats it as Ctrl-C: the rounds it
    finished are saved and the next invocation resumes the run."""


@contextmanager
def budget(deadline: float | None) -> Iterator[None]:
    """Raise BudgetSpent in this (main) thread at time.time() == deadline; at once when it has
    passed; never when deadline is None."""
    if deadline is None:
        yield
        return
    left = deadline - time.time()
    if left <= 0:
        raise BudgetSpent

    def _spent(signum, frame):
        raise BudgetSpent

    previous = signal.signal(signal.SIGALRM, _spent)
    signal.setitimer(signal.ITIMER_REAL, left)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _seed_job(args, seed: int, needs_teacher: bool, deadline: float | None) -> tuple[bool, str | None]:
    """Everything the rows of one seed share: the fine-tuned teacher, the initial global model and,
    with parallel jobs, the teacher maps.
    Returns (ready, teacher folder); ready is False when the budget ran out first."""
    try:
        with budget(deadline):
            teacher_dir = ensure_teacher(args, seed, _stamp) if needs_teacher else None
            ensure_init(args, seed)
            if teacher_dir is not None and args.jobs > 1:
                ensure_maps(args, seed, teacher_dir, _stamp)
    except BudgetSpent:
        _stamp(f"time budget spent while preparing seed {seed}")
        return False, None
    return True, teacher_dir


def _row_job(args, row: str, seed: int, teacher_dir: str | None, deadline: float | None) -> dict | None:
    """The run's summary, or None when the budget ran out before it finished."""
    summary = finished_summary(args, row, seed)
    if summary is not None:
        return summary
    try:
        with budget(deadline):
            return run_row(args, row, seed, teacher_dir, _stamp)
    except BudgetSpent:
        _stamp(f"time budget spent: seed {seed} {row} stopped ({run_state(args, row, seed)})")
        return None


def _stamp(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_sequential(args, rows: list[str], seeds: list[int], needs_teacher: bool, deadline, done) -> None:
    """Every (row, seed) run in this process, seed by seed."""
    for seed in seeds:
        todo = [r for r in rows if finished_summary(args, r, seed) is None]
        ready, teacher_dir = _seed_job(args, seed, needs_teacher, deadline) if todo else (True, None)
        for row in rows:
            if row in todo and not ready:
                continue
            done(row, seed, _row_job(args, row, seed, teacher_dir, deadline))


def run_parallel(args, rows: list[str], seeds: list[int], needs_teacher: bool, deadline, done) -> None:
    """`args.jobs` worker processes (spawned: safe with CUDA): what the rows of a seed share (teacher,
    initial global model) first, then every (row, seed) run, row-major so the first rows of the list
    finish first for every seed. Each worker stops its own run at the deadline."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    todo = [s for s in seeds if any(finished_summary(args, r, s) is None for r in rows)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.jobs, mp_context=ctx, initializer=_job_init, initargs=(args.threads, os.getpid())
    ) as pool:
        n = len(todo)
        setups = pool.map(_seed_job, [args] * n, todo, [needs_teacher] * n, [deadline] * n)
        prepared = {seed: (True, None) for seed in seeds} | dict(zip(todo, setups, strict=True))
        futures = {
            pool.submit(_row_job, args, row, seed, prepared[seed][1], deadline): (row, seed)
            for row in rows
            for seed in seeds
            if prepared[seed][0] or finished_summary(args, row, seed) is not None
        }
        for fut in as_completed(futures):
            row, seed = futures[fut]
            done(row, seed, fut.result())


def _ms(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def aggregate_rows(results: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for row, sums in results.items():
        d = _ms([s["val_dice"] for s in sums])
        d5 = _ms([s.get("val_dice_last5") for s in sums])
        h = _ms([s["val_hd95"] for s in sums])
        t = _ms([s["seconds"] for s in sums])
        clients = [[m["dice_mean"] for m in s["models"] if m["model"].startswith("client")] for s in sums]
        client_means = (
            [statistics.fmean(c[k] for c in clients) for k in range(len(clients[0]))] if clients[0] else []
        )
        teacher = _ms([(s.get("teacher") or {}).get("val_dice") for s in sums])[0]
        rows.append(
            {
                "label": row,
                "seeds": [s["config"]["seed"] for s in sums],
                "dice_mean": d[0],
                "dice_std": d[1],
                "dice_last5_mean": d5[0],
                "dice_last5_std": d5[1],
                "hd95_mean": h[0],
                "hd95_std": h[1],
                "seconds_mean": t[0],
                "client_dice": client_means,
                "teacher_val_dice": teacher,
                "per_seed_dice": [s["val_dice"] for s in sums],
            }
        )
    return rows


def write_outputs(args, rows: list[dict], hardware: str, command: str) -> None:
    from samfed.train.plots import plot_bars

    def f(v, nd=4):
        return "-" if v is None else f"{v:.{nd}f}"

    def pm(r, key, nd=4):
        return "-" if r[f"{key}_mean"] is None else f"{f(r[f'{key}_mean'], nd)} ± {f(r[f'{key}_std'], nd)}"

    lines = [
        f"# Accuracy benchmark ({args.schedule} schedule)",
        "",
        f"Command: `{command}`",
        "",
        f"Protocol: {args.data}, partition {args.partition}, {args.clients} clients, labeled fraction "
        f"{args.labeled_fraction}, image size {rows and args.image_size or 'the RunConfig default'}, "
        f"students {args.students or 'the RunConfig default'} (a row's students= setting wins), "
        f"schedule {args.schedule} {SCHEDULES[args.schedule]}"
        + (f", rounds {args.rounds}" if args.rounds is not None else "")
        + (f", device {args.device}, precision {args.precision}" if hasattr(args, "device") else "")
        + (f", split files {args.split}" if args.split else "")
        + ".",
        "Scores: global model, validation split, at the working resolution; mean ± std over seeds. "
        "Dice: the final model; last-5 Dice: mean over the last 5 rounds (steadier: FedAvg moves the "
        "global model by a few points from round to round).",
        f"Hardware: {hardware}.",
        "",
        "| row | Dice | last-5 Dice | HD95 (px) | client Dice | teacher Dice | seeds | wall time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cd = ", ".join(f"{c:.3f}" for c in r["client_dice"]) or "-"
        lines.append(
            f"| {r['label']} | {pm(r, 'dice')} | {pm(r, 'dice_last5')} | {pm(r, 'hd95', 1)} | "
            f"{cd} | {f(r['teacher_val_dice'])} | {len(r['seeds'])} | "
            f"{f(r['seconds_mean'], 0)} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.md").write_text("\n".join(lines) + "\n")
    (args.out / "accuracy.json").write_text(
        json.dumps(
            {
                "command": command,
                "schedule": args.schedule,
                "settings": SCHEDULES[args.schedule],
                "hardware": hardware,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    if rows:
        plot_bars(rows, args.out / "accuracy.png", title=f"Validation Dice ({args.schedule} schedule)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="defaults for a whole benchmark")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--partition", default="size")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--labeled-fraction", type=float, default=0.1)
    p.add_argument("--image-size", type=int, default=None, help="default: the RunConfig default")
    p.add_argument("--schedule", choices=sorted(SCHEDULES), default="reduced")
    p.add_argument("--rounds", type=int, default=None, help="override the schedule's rounds")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument(
        "--rows",
        default=DEFAULT_ROWS,
        help="comma-separated methods, optionally method:agreement@setting=value+...; {student}: the "
        "first of --students",
    )
    p.add_argument(
        "--students",
        default=None,
        help="one name, or several (comma-separated) for the heterogeneous setting; default: the "
        "RunConfig default",
    )
    p.add_argument("--teacher-mode", default="decoder", choices=["decoder", "lora", "none"])
    p.add_argument(
        "--teacher-runtime",
        default="auto",
        choices=["auto", "exported", "torch"],
        help="teacher maps from the recommended exported variant (exported; auto: on CPU only) or torch",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench_out" / "accuracy")
    p.add_argument(
        "--cache", type=Path, default=ROOT / "runs" / "bench-cache", help="teacher maps + embeddings"
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="training precision")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument(
        "--split", default=None, help="split file per seed instead of making one, e.g. splits/seed{seed}.json"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel worker processes (e.g. on a GPU)")
    p.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds: stop every run this long after the start (finished rounds are kept; exit 75 "
        "while runs are left, rerun to continue)",
    )
    p.add_argument("--status", action="store_true", help="print where the benchmark stands and exit")
    p.add_argument("--verbose", action="store_true", help="progress output of every run")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags over the --preset's defaults over the plain defaults."""
    p = parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    known, _ = pre.parse_known_args(argv)
    if known.preset:
        p.set_defaults(**PRESETS[known.preset])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    started = time.time()
    args = parse_args(argv)
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    deadline = started + args.time_budget if args.time_budget else None

    import torch

    from samfed.method.methods import method_spec
    from samfed.train.report import hardware

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = expand_rows(args.rows, args.students or "")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    say = _stamp
    check_rows(args, rows, seeds[0])
    if args.status:
        print_status(args, rows, seeds, say)
        return

    def done(row: str, seed: int, summary: dict | None) -> None:
        if summary is None:
            return
        results[row][seed] = summary
        say(
            f"seed {seed} {row}: val Dice {summary['val_dice']:.4f}, HD95 {summary['val_hd95']:.1f}, "
            f"{summary['seconds']:.0f} s"
        )
        finished = {r: [by_seed[k] for k in seeds if k in by_seed] for r, by_seed in results.items()}
        write_outputs(args, aggregate_rows({r: v for r, v in finished.items() if v}), hardware(), command)

    results: dict[str, dict[int, dict]] = {r: {} for r in rows}
    needs_teacher = any(method_spec(parse_row(r)[0]).needs_teacher for r in rows)
    if print_status(args, rows, seeds, say) == 0:
        say("every run is done: writing the table")
    run = run_sequential if args.jobs <= 1 else run_parallel
    run(args, rows, seeds, needs_teacher, deadline, done)
    if any(results.values()):
        say(f"table: {args.out / 'accuracy.md'}")
    left = print_status(args, rows, seeds, say)
    if left:
        say(
            f"{left} run(s) unfinished after {time.time() - started:.0f} s: "
            "run the same command again to continue"
        )
        raise SystemExit(EXIT_UNFINISHED)


if __name__ == "__main__":
    main()
