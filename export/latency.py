"""Interleaved latency measurement and CPU description. Torch-free (callers pass runner functions).

Every backend is timed in the same process, round-robin per iteration (the starting backend
rotates), so a noisy neighbour on a shared CPU slows all of them alike and ratios stay meaningful.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

Runner = Callable[[np.ndarray], object]
FLAG_PATTERN = re.compile(r"^(avx512.*|avx_vnni.*|.*vnni.*|amx.*|avx2|fma)$")


def cpu_info() -> dict:
    """CPU model, logical CPUs, usable CPUs and SIMD flags relevant to INT8 (avx512*, vnni, amx)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = {f for f in value.split() if FLAG_PATTERN.match(f)}
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "flags": sorted(flags),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def summarize_times(times_s: list[float], batch: int) -> dict:
    """Seconds per call -> p50/p95/mean in ms and images/s (from the median)."""
    t = np.asarray(times_s) * 1e3
    p50 = float(np.percentile(t, 50))
    return {
        "batch": batch,
        "iters": len(t),
        "p50_ms": round(p50, 3),
        "p95_ms": round(float(np.percentile(t, 95)), 3),
        "mean_ms": round(float(t.mean()), 3),
        "images_per_s": round(batch * 1e3 / p50, 2),
    }


def measure_interleaved(
    runners: dict[str, Runner],
    inputs: dict[int, np.ndarray],
    iters: int = 50,
    warmup: int = 5,
    on_iter: Callable[[], None] | None = None,
) -> dict[str, dict[int, dict]]:
    """Time every runner on every input batch; returns {runner: {batch: summarize_times(...)}}.

    `inputs` maps batch size -> (B, 3, S, S) float32. Per batch size: `warmup` untimed calls each,
    then `iters` rounds in which every runner is called once (rotating the starting runner).
    """
    names = list(runners)
    out: dict[str, dict[int, dict]] = {n: {} for n in names}
    for b, x in inputs.items():
        for n in names:
            for _ in range(warmup):
                runners[n](x)
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(iters):
            k = i % len(names)
            for n in names[k:] + names[:k]:
                t0 = time.perf_counter()
                runners[n](x)
                times[n].append(time.perf_counter() - t0)
            if on_iter:
                on_iter()
        for n in names:
            out[n][b] = summarize_times(times[n], b)
    return out


def random_inputs(batches: list[int], size: int, seed: int = 0) -> dict[int, np.ndarray]:
    """{batch: (B, 3, size, size) float32 standard-normal} (content does not change CPU latency)."""
    rng = np.random.default_rng(seed)
    return {b: rng.standard_normal((b, 3, size, size), dtype=np.float32) for b in batches}
