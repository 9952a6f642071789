"""The CLI lists every verb and turns user errors into one line and a non-zero exit."""

import subprocess
import sys

VERBS = ["train", "export", "predict", "bench", "evaluate", "data", "models", "teacher", "serve", "node"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_every_verb():
    out = run_cli("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout
