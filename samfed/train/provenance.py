"""Where a run came from: package versions, the git commit of the code, the command line, the machine."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGES = ("samfed", "torch", "flwr", "onnxruntime", "openvino")


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """{package: installed version, or None when it is not installed}."""
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str | None:
    repo = Path(__file__).resolve().parents[2]
    try:
        res = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_commit() -> str | None:
    """The commit of the samfed checkout this code runs from (``-dirty`` when tracked files were
    changed), or None for an installed wheel or without git."""
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}-dirty" if dirty else commit


def command_line() -> str:
    """The process's command line, shell-quoted."""
    return shlex.join(sys.argv)


def hardware() -> str:
    """One line: CPU model, logical cores, torch threads, torch version, GPU (when torch sees one)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        tv = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        if torch.cuda.is_available():
            tv += f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:  # pragma: no cover
        tv = "no torch"
    return f"{cpu}, {os.cpu_count()} logical cores, {tv}"


def provenance() -> dict:
    """{versions, git_commit, command, hardware, python} for summary.json and the report."""
    return {
        "versions": versions(),
        "git_commit": git_commit(),
        "command": command_line(),
        "hardware": hardware(),
        "python": platform.python_version(),
    }
