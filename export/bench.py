"""`samfed bench` / `benchmarks/latency.py`: latency of every artefact of an export, plus torch eager.

Torch is optional: the torch eager FP32 row is added only when torch imports and the export's
source checkpoint is still there with the same sha256. Results: a dict that `write_reports` turns
into JSON + Markdown and `rich_table` into a table. Import is torch-free.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from edge.manifest import MANIFEST_NAME, load_manifest
from edge.session import open_session
from export.latency import Runner, cpu_info, measure_interleaved, random_inputs
from samfed.errors import SamfedError
from samfed.fileio import sha256_file

ORDER = ("torch-fp32", "onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8")


def torch_runner(
    source_checkpoint: str | Path, expected_sha256: str | None, threads: int
) -> tuple[Runner | None, str]:
    """(runner, note): torch eager FP32 of the source checkpoint, or (None, why it is skipped)."""
    try:
        import torch
    except ImportError:
        return None, "torch is not installed: torch eager row skipped"
    from export.checkpoint import WEIGHTS, load_student_checkpoint

    ckpt = Path(source_checkpoint)
    if not (ckpt / WEIGHTS).is_file():
        return None, f"source checkpoint {ckpt} not found: torch eager row skipped"
    if expected_sha256 and sha256_file(ckpt / WEIGHTS) != expected_sha256:
        return None, f"source checkpoint {ckpt} changed since export: torch eager row skipped"
    torch.set_num_threads(threads)
    model, _ = load_student_checkpoint(ckpt)

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    return run, f"torch {torch.__version__} eager FP32, {threads} threads"


def model_runners(
    model: str | Path, threads: int, with_torch: bool = True
) -> tuple[dict[str, Runner], int, list[str], dict]:
    """Runners for an export folder (all artefacts, + torch) or one .onnx/.xml file.

    Returns (runners in ORDER, input size, notes, manifest dict or {}).
    """
    model = Path(model)
    notes: list[str] = []
    runners: dict[str, Runner] = {}
    if model.is_dir() or model.name == MANIFEST_NAME:
        man = load_manifest(model)
        if with_torch and man.data.get("source_checkpoint"):
            fn, note = torch_runner(
                man.data["source_checkpoint"], man.data.get("source_checkpoint_sha256"), threads
            )
            notes.append(note)
            if fn is not None:
                runners["torch-fp32"] = fn
        for key, art in man.artefacts.items():
            runners[key] = open_session(art.path, art.backend, threads).run
        size, data = man.preprocessing.size, man.data
    else:
        sess = open_session(model, threads=threads)
        runners[f"{sess.backend}:{model.name}"] = sess.run
        size, data = sess.input_size() or 256, {}
    ordered = {k: runners[k] for k in ORDER if k in runners} | {
        k: v for k, v in runners.items() if k not in ORDER
    }
    return ordered, size, notes, data


def speedups(results: dict[str, dict], batch: int = 1) -> dict:
    """Best INT8 at `batch` vs torch eager FP32 and vs ONNX Runtime FP32 (p50 ratios, >1 = faster)."""
    b = str(batch)
    int8 = {k: r[b]["p50_ms"] for k, r in results.items() if "int8" in k and b in r}
    if not int8:
        return {}
    best = min(int8, key=int8.get)
    out = {"batch": batch, "best_int8": best, "best_int8_p50_ms": int8[best]}
    for ref in ("torch-fp32", "onnx-fp32", "openvino-fp32"):
        if ref in results and b in results[ref]:
            out[f"speedup_vs_{ref}"] = round(results[ref][b]["p50_ms"] / int8[best], 2)
    return out


def run_bench(
    model: str | Path,
    batches: list[int],
    iters: int = 50,
    warmup: int = 5,
    threads: int = 2,
    with_torch: bool = True,
    on_iter=None,
) -> dict:
    """Measure every runner of `model` interleaved; returns a JSON-ready result dict."""
    if not batches or min(batches) < 1 or iters < 1 or threads < 1:
        raise SamfedError("Batch sizes, --iters and --threads must be positive.")
    runners, size, notes, man = model_runners(model, threads, with_torch)
    lat = measure_interleaved(
        runners, random_inputs(batches, size), iters=iters, warmup=warmup, on_iter=on_iter
    )
    results = {k: {str(b): v for b, v in r.items()} for k, r in lat.items()}
    return {
        "model": str(model),
        "arch": man.get("arch"),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "input": [3, size, size],
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "interleaved": True,
        "cpu": cpu_info(),
        "notes": notes,
        "results": results,
        "speedups": speedups(results, 1),
    }


def markdown(result: dict) -> str:
    """A Markdown table of one bench result."""
    cpu = result["cpu"]
    lines = [
        f"# Latency: {result.get('arch') or result['model']} ({result['input'][1]}x{result['input'][2]})",
        "",
        f"CPU: {cpu['model']} ({cpu['usable_cpus']} usable CPUs; flags: {' '.join(cpu['flags'])}); "
        f"threads {result['threads']}; {result['iters']} interleaved iterations.",
        "",
        "| backend | batch | p50 ms | p95 ms | images/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in result["results"].items():
        for b, v in r.items():
            lines.append(
                f"| {name} | {b} | {v['p50_ms']:.2f} | {v['p95_ms']:.2f} | {v['images_per_s']:.1f} |"
            )
    s = result.get("speedups") or {}
    if s:
        lines += ["", f"Best INT8 at batch 1: {s['best_int8']} ({s['best_int8_p50_ms']:.2f} ms)."]
        lines += [
            f"- speedup vs {k.removeprefix('speedup_vs_')}: {v:.2f}x"
            for k, v in s.items()
            if k.startswith("speedup_vs_")
        ]
    lines += [f"- note: {n}" for n in result.get("notes", [])]
    return "\n".join(lines) + "\n"


def rich_table(result: dict):
    from rich.table import Table

    t = Table(title=f"latency, {result['threads']} threads, {result['iters']} interleaved iterations")
    for col in ("backend", "batch", "p50 ms", "p95 ms", "images/s"):
        t.add_column(col, justify="left" if col == "backend" else "right")
    for name, r in result["results"].items():
        for b, v in r.items():
            t.add_row(name, b, f"{v['p50_ms']:.2f}", f"{v['p95_ms']:.2f}", f"{v['images_per_s']:.1f}")
    return t


def write_reports(result: dict, out_dir: str | Path, stem: str = "bench") -> tuple[Path, Path]:
    """Write `<stem>.json` and `<stem>.md` to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / f"{stem}.json", out / f"{stem}.md"
    j.write_text(json.dumps(result, indent=2))
    m.write_text(markdown(result))
    return j, m
