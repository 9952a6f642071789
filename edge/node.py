"""Clinic-node helpers for constrained hardware: thread cap, memory-aware batch size, round report.

- `thread_env(n)` / `cap_threads(n)`: keep the node's math libraries to n threads (env for the
  SuperNode and its ClientApp processes; `torch.set_num_threads` inside the ClientApp).
- `memory_budget(limit_mb)`: bytes the local update may use: the explicit limit, else half of
  the memory available now (cgroup limit respected).
- `training_bytes_per_sample(model, size)` and `fit_batch_size(requested, per_sample, fixed, budget)`:
  estimate training memory from one forward pass at batch 1 (activations kept for backward and
  their gradients, plus weights, gradients and the two Adam moments) and halve the batch size
  until the estimate fits. The batch actually used is reported; it equals the run's batch size
  unless memory is short (then the node's result differs from a roomier node's).
- `RoundMeter`: wall time, CPU time and the process's peak resident memory for one round; each
  round's ClientApp is a fresh process, so the process peak is the round's peak. The peak comes
  from `resource` (POSIX) or psutil's `peak_wset` (Windows); where neither exists it is None.
- `append_report(path, record)`: one JSON line per round in the node's work folder.

Importing this module does not import torch (functions that need it import it inside).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment variables that cap BLAS/OpenMP pools to `threads` (empty dict for None)."""
    return {} if not threads else dict.fromkeys(THREAD_VARS, str(threads))


def cap_threads(threads: int | None) -> int:
    """Cap this process (env + torch if importable) to `threads`; returns the thread count in use."""
    if threads:
        os.environ.update(thread_env(threads))
    try:
        import torch
    except ImportError:
        return threads or (os.cpu_count() or 1)
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw)
    return None


def available_memory() -> int:
    """Bytes available to this process now (the smaller of free RAM and the cgroup headroom)."""
    import psutil

    avail = psutil.virtual_memory().available
    limit = _cgroup_limit()
    if limit is not None:
        try:
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, max(limit - used, 0))
        except (OSError, ValueError):
            avail = min(avail, limit)
    return int(avail)


def memory_budget(limit_mb: float | None = None, fraction: float = 0.5) -> int:
    """Training memory budget in bytes: `limit_mb` if given, else `fraction` of available memory."""
    if limit_mb:
        return int(limit_mb * 2**20)
    return int(available_memory() * fraction)


def training_bytes_per_sample(model, size: int) -> tuple[int, int]:
    """(bytes per training sample, fixed bytes) for `model` at input (1, 3, size, size).

    Per sample: every module output of one forward pass (kept for backward) x 3 (activations,
    their gradients, workspace), float32. Fixed: parameters x 4 (weights, grads, Adam m and v).
    """
    import torch

    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    params = sum(p.numel() for p in model.parameters())
    return total * 4 * 3, params * 4 * 4


def fit_batch_size(requested: int, per_sample: int, fixed: int, budget: int, factor: int = 2) -> int:
    """Largest of requested, requested/2, ... (>= 1) whose estimate fits `budget`.

    `factor`: samples per step per batch-size unit (the SAM-Fed update stacks a labeled and an
    unlabeled batch, so 2).
    """
    b = max(1, requested)
    while b > 1 and fixed + factor * b * per_sample > budget:
        b //= 2
    return b


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process so far, None where the platform does not tell."""
    try:
        import resource
    except ImportError:  # Windows: psutil reports the peak working set instead
        import psutil

        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)
        return None if peak is None else int(peak)
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


@dataclass
class RoundReport:
    """What a node reports for one round (all scalars; it may leave the node)."""

    round: int
    wall_s: float
    cpu_s: float
    rss_start_mb: float
    peak_rss_mb: float | None
    threads: int
    batch_size: int


def rss_bytes() -> int:
    """Current resident memory of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class RoundMeter:
    """with RoundMeter() as m: ...; then m.wall_s, m.cpu_s, m.rss_start_mb (resident memory when the
    round's work began: interpreter, torch, Flower) and m.peak_rss_mb (process peak; None where the
    platform does not report it)."""

    def __enter__(self) -> RoundMeter:
        self.rss_start_mb = rss_bytes() / 2**20
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = time.process_time() - self._c0
        peak = peak_rss_bytes()
        self.peak_rss_mb = None if peak is None else peak / 2**20

    def report(self, round: int, threads: int, batch_size: int) -> RoundReport:
        return RoundReport(
            round, self.wall_s, self.cpu_s, self.rss_start_mb, self.peak_rss_mb, threads, batch_size
        )


def append_report(path: str | Path, record: RoundReport | dict) -> None:
    """Append one JSON line to the node's report file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(record) if isinstance(record, RoundReport) else record
    with open(path, "a") as fh:
        fh.write(json.dumps(data) + "\n")
