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


def test_cli_imports_no_heavy_stack():
    """`samfed --help` and the edge verbs must work on a torch-free install."""
    code = (
        "import sys; import cli; "
        "heavy = {'torch', 'nncf', 'flwr', 'onnx', 'matplotlib'}; "
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


def test_user_error_is_one_line_without_traceback(tmp_path):
    out = run_cli("data", "check", str(tmp_path / "does-not-exist"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "error" in out.stderr.lower()


def test_version_prints_and_exits_0():
    import samfed

    out = run_cli("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"samfed {samfed.__version__}"


def test_samfed_errors_exit_1_and_usage_errors_exit_2(tmp_path):
    """A SamfedError (a folder that does not exist) is not a usage error: its exit code differs."""
    own = run_cli("data", "check", str(tmp_path / "does-not-exist"))
    assert own.returncode == 1 and own.stderr.strip().startswith("error:"), own.stderr
    usage = run_cli("data", "check", str(tmp_path), "--no-such-option")
    assert usage.returncode == 2 and "No such option" in usage.stderr, usage.stderr


def test_dataset_warnings_are_one_line(tmp_path, polyp_dir):
    """samfed's own warnings print as one 'warning:' line, without Python's file:line prefix."""
    import shutil

    data = tmp_path / "d"
    shutil.copytree(polyp_dir, data)
    nested = data / "images" / "more"
    nested.mkdir()
    shutil.copy(next((data / "images").glob("*.jpg")), nested / "x.jpg")
    out = run_cli("data", "split", str(data), "--clients", "2", "--out", str(tmp_path / "s.json"))
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "more" in ln]
    assert lines and lines[0].startswith("warning:"), out.stderr
    assert "DatasetWarning" not in out.stderr and ".py:" not in out.stderr
