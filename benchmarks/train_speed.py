"""Training speed of the students on this CPU: optimiser steps per second.

Two kinds of step, both the product's own functions on synthetic arrays (speed does not depend on
the pixels):
- `samfed`: one step of the default SAM-Fed local update (`client_update`): a labeled and an
  unlabeled batch through the student (2 x batch images forward + backward), the frozen global
  model on the unlabeled batch, agreement pseudo-labels, KD;
- `supervised`: one step of `supervised_steps` (batch images forward + backward), as in the
  server's initial training.

Example (run from the repository root; a few steps per cell after one warm-up step)::

    python benchmarks/train_speed.py --sizes 128,256 --precisions fp32,bf16 --threads 1 --steps 3

Each cell is timed twice: wall clock and the process's CPU time. On a shared machine the wall time
moves with the load; with one thread the CPU time does not (much), so the tables rank and compare
on steps per CPU-second (on an idle core the two agree). Prints one table per kind with both rates,
the ratio to unet-s at the same size and precision, the bf16/fp32 speed-up and the 256/128
slow-down; writes --out (JSON) with the load average around each cell and the CPU flags. Nothing
is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from samfed.config import RunConfig  # noqa: E402
from samfed.method.arrays import SegArrays  # noqa: E402
from samfed.method.local_update import client_update, supervised_steps  # noqa: E402
from samfed.models import create_student  # noqa: E402

DEFAULT_STUDENTS = "unet-s,mobile-unet,resunet-lite,mnv2-unet,effl0-unet"


def synthetic_arrays(n: int, size: int, seed: int) -> tuple[SegArrays, np.ndarray]:
    """n random uint8 images (size x size) with disc masks, and (n, size, size) teacher maps."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(0.3, 0.7, (n, 2)) * size
    masks = (yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2 < (size / 5) ** 2
    maps = np.clip(masks + rng.normal(0, 0.2, masks.shape), 0, 1).astype(np.float32)
    return SegArrays(images, masks, [f"s{i}" for i in range(n)]), maps


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(*args)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0


def samfed_seconds(
    name: str, cfg: RunConfig, steps: int, labeled: SegArrays, seed: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of a `client_update` of `steps` steps (round 3: every loss term active)."""
    torch.manual_seed(seed)
    glob = create_student(name)
    local = copy.deepcopy(glob)
    data, maps = synthetic_arrays(steps * cfg.batch_size, cfg.image_size, seed + 1)
    return timed(lambda: client_update(glob, local, data, maps, labeled, cfg, round=3, seed=seed))


def supervised_seconds(
    name: str, cfg: RunConfig, steps: int, labeled: SegArrays, seed: int
) -> tuple[float, float]:
    """(wall, CPU) seconds of `steps` supervised steps."""
    torch.manual_seed(seed)
    model = create_student(name)
    return timed(supervised_steps, model, labeled, cfg, steps, seed)


KINDS = {"samfed": samfed_seconds, "supervised": supervised_seconds}


def measure(kind: str, name: str, size: int, precision: str, args) -> dict:
    """One cell: a warm-up update of `args.warmup` steps, then `args.steps` timed steps."""
    cfg = RunConfig(image_size=size, precision=precision, batch_size=args.batch, students=[name])
    labeled, _ = synthetic_arrays(2 * args.batch, size, 0)
    fn = KINDS[kind]
    fn(name, cfg, args.warmup, labeled, 1)
    load0 = os.getloadavg()[0]
    wall, cpu = fn(name, cfg, args.steps, labeled, 2)
    return {
        "kind": kind,
        "student": name,
        "size": size,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "steps": args.steps,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "steps_per_s": round(args.steps / wall, 4),
        "steps_per_cpu_s": round(args.steps / cpu, 4),
        "load_before": round(load0, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def cpu_flags() -> dict:
    """CPU model and the flags that decide bf16 speed."""
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        if line.startswith("model name"):
            info["model"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            info["flags"] = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")
            break
    return info


def ratio_table(rows: list[dict], kind: str, batch: int) -> list[str]:
    """Markdown table of one kind: wall steps/s, steps per CPU-second and, on the latter, the ratio to
    unet-s, bf16/fp32 and 256/128 (when measured)."""
    key = ("student", "size", "precision", "threads")
    cell = {tuple(r[k] for k in key): r["steps_per_cpu_s"] for r in rows}
    wall = {tuple(r[k] for k in key): r["steps_per_s"] for r in rows}
    out = [
        f"### {kind}: optimiser steps, batch {batch}, {rows[0]['steps']} timed steps per cell",
        "",
        "| student | size | precision | threads | steps/s (wall) | steps/CPU-s | vs unet-s | bf16/fp32 "
        "| vs 128 px |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for (name, size, prec, t), v in cell.items():
        ref = cell.get(("unet-s", size, prec, t))
        fp32 = cell.get((name, size, "fp32", t))
        small = cell.get((name, 128, prec, t))
        out.append(
            f"| {name} | {size} | {prec} | {t} | {wall[(name, size, prec, t)]:.3f} | {v:.3f} | "
            f"{fmt(v / ref if ref else None)} | "
            f"{fmt(v / fp32 if prec != 'fp32' and fp32 else None)} | "
            f"{fmt(v / small if size != 128 and small else None)} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--students", default=DEFAULT_STUDENTS, help="Comma-separated student names.")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", default="1", help="Comma-separated torch thread counts.")
    ap.add_argument("--kinds", default="samfed,supervised", help="samfed and/or supervised.")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="Timed steps per cell.")
    ap.add_argument("--warmup", type=int, default=1, help="Untimed steps per cell first.")
    ap.add_argument("--out", type=Path, default=Path("bench_out/train_speed.json"))
    args = ap.parse_args()
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for kind in args.kinds.split(","):
            for size in (int(s) for s in args.sizes.split(",")):
                for name in args.students.split(","):  # precisions back to back: steadier bf16/fp32
                    for precision in args.precisions.split(","):
                        r = measure(kind, name, size, precision, args)
                        rows.append(r)
                        print(json.dumps(r), flush=True)
    report = {
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "batch": args.batch,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "rows": rows,
    }
    md = []
    for kind in args.kinds.split(","):
        md += ratio_table([r for r in rows if r["kind"] == kind], kind, args.batch) + [""]
    report["markdown"] = "\n".join(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(md))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
