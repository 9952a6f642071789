"""The warm ClientApp executor and its `flwr-clientapp` shim (samfed.federation.warm_exec).

Fast: the executor runs with a stand-in entry point (a module written here) instead of Flower's
`flwr-clientapp`, so no Flower or torch import is paid; the real entry is exercised by the
federation tests, whose every ClientApp runs through it.
"""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from samfed.federation import clientapp_shim, flower_tuning, warm_exec
from samfed.federation import processes as fp

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the warm executor is Linux only")

FAKE_APP = """
import json, os, signal, sys, time
def main():
    what = sys.argv[1]
    print(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[1:],
                      "cwd": os.getcwd(), "marker": os.environ.get("MARKER")}), flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if what == "sleep":
        time.sleep(60)
    if what == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if what == "raise":
        raise RuntimeError("boom")
    sys.exit(int(what))
"""


@pytest.fixture
def executor(tmp_path):
    """A warm executor (stand-in entry point) in a private folder -> (socket, shim bin, process)."""
    (tmp_path / "fake_app.py").write_text(FAKE_APP)
    folder = warm_exec.private_dir()
    bin_dir = warm_exec.write_shim(folder)
    sock = folder / warm_exec.SOCKET_NAME
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "samfed.federation.warm_exec", "--socket", str(sock), "--owns-folder",
         "--parent-pid", str(os.getpid()), "--preload", "fake_app", "--entry", "fake_app:main"],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    end = time.monotonic() + 30
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
        time.sleep(0.05)
    yield sock, bin_dir, proc
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=10)
    assert not folder.exists(), "the executor leaves its private folder behind"


def _shim(bin_dir: Path, sock: str, *args: str, real: str = "/bin/false", **kw) -> subprocess.Popen:
    env = {**os.environ, clientapp_shim.SOCKET_ENV: str(sock), clientapp_shim.REAL_ENV: real, "MARKER": "m1"}
    cmd = [str(bin_dir / clientapp_shim.COMMAND), *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_private_folder_socket_and_shim_permissions(executor):
    sock, bin_dir, _ = executor
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600 and stat.S_ISSOCK(sock.stat().st_mode)
    shim = bin_dir / "flwr-clientapp"
    assert stat.S_IMODE(shim.stat().st_mode) == 0o700
    assert shim.read_text().startswith(f"#!{sys.executable} -S")


def test_a_forked_child_gets_argv_env_cwd_and_stdio_and_its_exit_code_is_relayed(executor, tmp_path):
    sock, bin_dir, proc = executor
    shim = _shim(bin_dir, sock, "3", "--token", "x", cwd=tmp_path)
    out, err = shim.communicate(timeout=30)
    assert shim.returncode == 3, err
    seen = json.loads(out.splitlines()[0])
    assert seen["ppid"] == proc.pid, "the child is forked by the executor"
    assert seen["argv"] == ["3", "--token", "x"] and seen["marker"] == "m1"
    assert seen["cwd"] == str(tmp_path) and "to stderr" in err
    ok = _shim(bin_dir, sock, "0")
    assert ok.wait(timeout=30) == 0
    boom = _shim(bin_dir, sock, "raise")
    _, err = boom.communicate(timeout=30)
    assert boom.returncode == 1 and "RuntimeError: boom" in err
    killed = _shim(bin_dir, sock, "kill")
    assert killed.wait(timeout=30) == 128 + signal.SIGKILL
    assert proc.poll() is None, "a crashing child does not take the executor down"


def test_signals_reach_the_child_and_a_vanished_shim_takes_its_child_along(executor):
    sock, bin_dir, _ = executor
    shim = _shim(bin_dir, sock, "sleep")
    child = json.loads(shim.stdout.readline())["pid"]
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(timeout=30) == 128 + signal.SIGTERM
    assert not _alive(child)
    shim = _shim(bin_dir, sock, "sleep")
    child = json.loads(shim.stdout.readline())["pid"]
    shim.kill()
    shim.wait()
    end = time.monotonic() + 15
    while _alive(child) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _alive(child)


def test_the_shim_runs_the_real_command_when_no_executor_answers(tmp_path):
    real = tmp_path / "real-clientapp"
    real.write_text('#!/bin/sh\necho real "$@"\nexit 7\n')
    real.chmod(0o700)
    folder = warm_exec.private_dir()
    try:
        bin_dir = warm_exec.write_shim(folder)
        missing = _shim(bin_dir, str(folder / "absent.sock"), "--token", "t", real=str(real))
        out, err = missing.communicate(timeout=30)
        assert missing.returncode == 7 and out.strip() == "real --token t"
        assert "warm ClientApp executor unavailable" in err
        # an executor that closes the connection without starting a child: the real command too
        refusing = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        refusing.bind(str(folder / "refuse.sock"))
        refusing.listen(1)

        def refuse():
            conn, _ = refusing.accept()
            conn.recv(1 << 16)
            conn.close()

        threading.Thread(target=refuse, daemon=True).start()
        refused = _shim(bin_dir, str(folder / "refuse.sock"), "x", real=str(real))
        out, _ = refused.communicate(timeout=30)
        assert refused.returncode == 7 and out.strip() == "real x"
        refusing.close()
    finally:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)


def test_the_executor_exits_and_cleans_up_when_its_parent_dies(tmp_path):
    folder = warm_exec.private_dir()
    sock = folder / warm_exec.SOCKET_NAME
    parent_code = (
        "import os, subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-m', 'samfed.federation.warm_exec', '--socket', sys.argv[1], "
        "'--owns-folder', '--preload', '', '--parent-pid', str(os.getpid())]); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code, str(sock)], stdout=subprocess.PIPE, text=True
    )
    pid = int(parent.stdout.readline())
    end = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert sock.exists()
    parent.kill()  # as a SIGKILLed SuperNode
    parent.wait()
    end = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    assert not _alive(pid) and not folder.exists()


def test_folders_of_owners_that_are_gone_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{warm_exec.PREFIX}old"
    stale.mkdir()
    (stale / warm_exec.OWNER_FILE).write_text(f"{dead.pid} 12.000")
    reused = tmp_path / f"{warm_exec.PREFIX}reused"  # our PID, another start time: not us
    reused.mkdir()
    (reused / warm_exec.OWNER_FILE).write_text(f"{os.getpid()} 12.000")
    live = tmp_path / f"{warm_exec.PREFIX}live"
    live.mkdir()
    (live / warm_exec.OWNER_FILE).write_text(warm_exec._owner_id(os.getpid()))
    unknown = tmp_path / f"{warm_exec.PREFIX}unknown"  # no owner file (yet): left alone
    unknown.mkdir()
    assert sorted(warm_exec.remove_stale(tmp_path)) == sorted([stale, reused])
    assert live.is_dir() and unknown.is_dir() and not stale.exists()


def test_flower_waits_are_shortened_only_for_the_flower_version_checked(monkeypatch):
    import flwr
    from flwr.supercore.inflatable import inflatable_utils as pulls
    from flwr.supernode import start_client_internal as loop

    clock = flower_tuning.SuperNodeClock(idle_s=0.01, local_s=0.001)
    t0 = time.perf_counter()
    clock.sleep(3)
    clock.sleep(0.5)
    assert time.perf_counter() - t0 < 0.5 and clock.monotonic() > 0
    installed = flwr.__version__
    monkeypatch.setattr(loop, "time", time)
    for f in (pulls.pull_objects, pulls.pull_and_inflate_object_from_tree):
        monkeypatch.setattr(f, "__kwdefaults__", dict(f.__kwdefaults__))
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    assert not flower_tuning.supernode_waits() and loop.time is time
    assert not flower_tuning.object_pull_backoff()
    assert pulls.pull_objects.__kwdefaults__["initial_backoff"] == 1
    monkeypatch.setattr(flwr, "__version__", installed)
    # the installed Flower still has the waits these tweaks replace (else: revisit flower_tuning)
    assert flower_tuning.supernode_waits() and isinstance(loop.time, flower_tuning.SuperNodeClock)
    assert flower_tuning.object_pull_backoff()
    assert pulls.pull_and_inflate_object_from_tree.__kwdefaults__["initial_backoff"] == 0.05


def test_supernodes_start_through_the_launcher_with_a_short_task_poll(monkeypatch):
    cmd = fp.supernode_command("127.0.0.1:9092", 9094, {"partition-id": 0})
    assert cmd[:3] == [sys.executable, "-m", "samfed.federation.supernode"]
    assert Path(cmd[3]).name == "flower-supernode" and cmd[4:6] == ["--superlink", "127.0.0.1:9092"]
    monkeypatch.delenv(fp.TASK_POLL_ENV, raising=False)
    assert fp.child_env()[fp.TASK_POLL_ENV] == str(fp.TASK_POLL_S)
    monkeypatch.setenv(fp.TASK_POLL_ENV, "1.0")
    assert fp.child_env()[fp.TASK_POLL_ENV] == "1.0"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
