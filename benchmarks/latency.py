"""Latency (and INT8 fidelity) benchmark of exported students; wraps the `samfed bench` functions.

Examples (run from the repository root)::

    # one export folder (same as `samfed bench`)
    python benchmarks/latency.py --model runs/r1/export --threads 2

    # acceptance: every registered student at 256x256 (random-init weights; the pretrained-encoder
    # students keep their ImageNet encoders, decoders random), exported to
    # ONNX/OpenVINO x FP32/INT8, calibrated on --data train ids (or synthetic images), benched
    python benchmarks/latency.py --all-students --data ../shared/data/kvasir-seg --out bench_out/students

    # accuracy: a trained run, calibrated on its train ids, Dice vs ground truth on all val ids
    python benchmarks/latency.py --checkpoint runs/r1 --data ../shared/data/kvasir-seg --out bench_out/r1

    # end to end: `samfed predict` pipeline on N full-size images with an export's recommended artefact
    python benchmarks/latency.py --model bench_out/r1/unet-s/export --e2e ../shared/data/kvasir-seg/images

Writes latency.json + latency.md under --out and prints ratios: best INT8 at batch 1 vs torch
eager FP32 (target >= 2x) and vs ONNX Runtime FP32 (target >= 1.3x). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# torch's OpenMP workers otherwise busy-wait between calls and, interleaved with the other
# backends on a shared 2-core CPU, steal their cores; recorded in the results (cpu.omp_wait_policy).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from export.bench import markdown, rich_table, run_bench  # noqa: E402

console = Console()


def export_one(ckpt: Path, out: Path, args, n_heldout: int) -> dict:
    from export.build import export_student

    return export_student(
        ckpt,
        out,
        int8=True,
        backend="all",
        calib_folder=args.data,
        n_calib=args.calib_n,
        n_heldout=n_heldout,
        threads=args.threads[0],
        latency_iters=10,
        nncf_subset=args.calib_n,
        log=lambda m: console.log(m),
    )


def random_checkpoint(name: str, size: int, out: Path) -> Path:
    """Untrained student (seed 0; an ImageNet encoder where the student has one) saved as a
    checkpoint: fine for latency, not for accuracy."""
    import torch

    from export.checkpoint import save_student_checkpoint
    from samfed.models import build_options, create_student
    from samfed.preprocess import Preprocessing

    torch.manual_seed(0)
    model = create_student(name).eval()
    return save_student_checkpoint(
        model, name, "batch", Preprocessing(size=size), out, source_run="random-init", **build_options(model)
    )


def fidelity_rows(man: dict) -> list[dict]:
    rows = [{"artefact": "torch-fp32", **{k: man["torch_reference"].get(k) for k in ("dice_vs_gt",)}}]
    for key, a in man["artefacts"].items():
        p = a["parity"]
        rows.append(
            {
                "artefact": key,
                "dice_vs_torch": p["dice_mean"],
                "dice_vs_fp32": p.get("dice_vs_fp32"),
                "max_abs_logit_diff": p["max_abs_logit_diff"],
                "dice_vs_gt": p.get("dice_vs_gt"),
            }
        )
    return rows


def fidelity_markdown(name: str, man: dict) -> str:
    lines = [
        f"## Fidelity: {name} (held-out: {man['heldout']['source']}, n={man['heldout']['n']})",
        "",
        "| artefact | Dice vs torch | INT8 vs FP32 masks | max abs logit diff | Dice vs GT |",
        "|---|---:|---:|---:|---:|",
    ]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in fidelity_rows(man):
        lines.append(
            f"| {r['artefact']} | {f(r.get('dice_vs_torch'), '.4f')} | {f(r.get('dice_vs_fp32'), '.4f')} | "
            f"{f(r.get('max_abs_logit_diff'), '.3g')} | {f(r.get('dice_vs_gt'), '.4f')} |"
        )
    lines.append(f"\nRecommended: {man['recommended']} ({man['recommendation_reason']}).")
    lines += [f"- WARNING: {w}" for w in man["warnings"]]
    return "\n".join(lines) + "\n"


def e2e(
    model: Path, folder: Path, n: int, threads: int, batch: int, workers: int, overlay_size: int | None = 512
) -> dict:
    """`samfed predict`'s pipeline on the first n images of folder, against the model alone.

    overlay_size: longest side of the overlay previews (0: full size; None: no overlays).

    The model-alone time (same batches, inputs already decoded and resized) is measured before and
    after the pipeline run and averaged, so load drift on a shared machine affects both sides alike.
    """
    import numpy as np

    from edge.pipeline import collect_images, run_files
    from edge.predictor import Predictor
    from samfed.data.io import read_image

    paths = collect_images([folder])[:n]
    pred = Predictor.from_model(model, threads=threads, batch=batch)
    resized = np.stack([pred.prepare(read_image(p)) for p in paths])

    def model_alone() -> float:
        t0 = time.perf_counter()
        for i in range(0, len(resized), batch):
            pred.probs_resized(resized[i : i + batch])
        return time.perf_counter() - t0

    model_alone()  # warm-up
    before = model_alone()
    with tempfile.TemporaryDirectory() as tmp:
        on = overlay_size is not None
        rep = run_files(pred, paths, Path(tmp), workers=workers, overlays=on, overlay_size=overlay_size or 0)
    alone = (before + model_alone()) / 2
    out = rep.to_dict() | {
        "artefact": pred.artefact,
        "threads": threads,
        "batch": batch,
        "workers": workers,
        "overlays": "off"
        if overlay_size is None
        else (f"{overlay_size} px" if overlay_size else "full size"),
    }
    out["model_alone_s"] = round(alone, 4)
    out["overhead_vs_model_alone"] = round((rep.wall_s - alone) / alone, 3)
    out["model_ms_per_image"] = round(1e3 * alone / len(paths), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="An export folder (manifest.json) or a .onnx file.")
    src.add_argument("--all-students", action="store_true", help="Export + bench every registered student.")
    src.add_argument(
        "--checkpoint", type=Path, nargs="+", help="Run dir(s) / checkpoint(s) to export and bench."
    )
    ap.add_argument(
        "--data", type=Path, help="Dataset for calibration (train ids) and held-out parity (val ids)."
    )
    ap.add_argument("--size", type=int, default=256, help="Input size for --all-students (random init).")
    ap.add_argument("--batch", default="1,8", help="Comma-separated batch sizes.")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--threads", default="2", help="Comma-separated thread counts; each is benched separately."
    )
    ap.add_argument("--calib-n", type=int, default=64, help="Calibration images for both INT8 quantisers.")
    ap.add_argument(
        "--heldout-n", type=int, default=1000, help="Held-out images for parity (default: all val)."
    )
    ap.add_argument(
        "--e2e", type=Path, help="Folder of images: also run the predict pipeline on --e2e-n of them."
    )
    ap.add_argument("--e2e-n", type=int, default=100)
    ap.add_argument("--e2e-batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="Decode/write threads for --e2e.")
    ap.add_argument("--out", type=Path, default=Path("bench_out"))
    args = ap.parse_args()
    args.threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)

    models: dict[str, Path] = {}
    fidelity: dict[str, dict] = {}
    if args.model:
        models[args.model.name] = args.model
    else:
        if args.data is None:
            from samfed.data.synth import write_synthetic

            args.data = write_synthetic(
                "polyp",
                2 * args.calib_n,
                args.out / "synthetic-calib",
                seed=0,
                size=args.size,
                overwrite=True,
            )
        if args.all_students:
            from samfed.models import list_students

            ckpts = {n: random_checkpoint(n, args.size, args.out / n / "checkpoint") for n in list_students()}
        else:
            ckpts = {(c.name if c.name != "global" else c.parent.name): c for c in args.checkpoint}
        for name, ckpt in ckpts.items():
            console.rule(f"export {name}")
            t0 = time.perf_counter()
            man = export_one(ckpt, args.out / name / "export", args, args.heldout_n)
            console.log(f"exported {name} in {time.perf_counter() - t0:.0f} s")
            models[name] = args.out / name / "export"
            fidelity[name] = man
    report: dict = {"runs": {}, "fidelity": {}, "e2e": None}
    md = []
    for threads in args.threads:
        for name, model in models.items():
            console.rule(f"bench {name}, {threads} threads")
            res = run_bench(model, batches, args.iters, args.warmup, threads)
            report["runs"][f"{name}@{threads}t"] = res
            console.print(rich_table(res))
            md.append(markdown(res))
    for name, man in fidelity.items():
        report["fidelity"][name] = {
            k: man[k]
            for k in (
                "artefacts",
                "torch_reference",
                "recommended",
                "recommendation_reason",
                "warnings",
                "heldout",
            )
        }
        md.append(fidelity_markdown(name, man))
    if args.e2e:
        name, model = next(iter(models.items()))
        report["e2e"] = []
        for overlay_size in (512, 0, None):  # the default previews, full-size overlays, none
            r = e2e(model, args.e2e, args.e2e_n, args.threads[0], args.e2e_batch, args.workers, overlay_size)
            report["e2e"].append(r)
            md.append(
                f"## End-to-end predict ({name}, {r['artefact']}, {r['processed']} images from {args.e2e}, "
                f"overlays {r['overlays']})\n\n"
                f"{r['images_per_s']:.1f} images/s including decode, resize and PNG writing "
                f"({r['wall_s']:.2f} s wall). Model alone on the same batches: {r['model_alone_s']:.2f} s "
                f"({r['model_ms_per_image']} ms/image) -> pipeline overhead "
                f"{r['overhead_vs_model_alone']:.2f}x model time (in-pipeline model time "
                f"{r['model_s']:.2f} s, overhead {r['overhead_ratio']:.2f}x).\n"
            )

    summary = Table(title="acceptance ratios: best INT8 at batch 1 (p50)")
    for col in ("run", "best INT8", "p50 ms", "vs torch FP32 (>=2x)", "vs ORT FP32 (>=1.3x)"):
        summary.add_column(col)
    for run, res in report["runs"].items():
        s = res["speedups"]
        if s:
            summary.add_row(
                run,
                s["best_int8"],
                f"{s['best_int8_p50_ms']:.2f}",
                f"{s.get('speedup_vs_torch-fp32', float('nan')):.2f}x",
                f"{s.get('speedup_vs_onnx-fp32', float('nan')):.2f}x",
            )
    console.print(summary)
    if report["e2e"]:
        console.print(report["e2e"])
    (args.out / "latency.json").write_text(json.dumps(report, indent=2, default=str))
    (args.out / "latency.md").write_text("\n".join(md))
    console.print(f"written: {args.out / 'latency.json'} and {args.out / 'latency.md'}")
    if (args.out / "synthetic-calib").exists():
        shutil.rmtree(args.out / "synthetic-calib")


if __name__ == "__main__":
    main()
