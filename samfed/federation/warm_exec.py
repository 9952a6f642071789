"""A warm ClientApp executor: ClientApps forked from a process that has Flower and torch imported.

Flower's SuperExec runs every message a node receives in a fresh `flwr-clientapp` process, which
spends seconds importing Flower, torch and samfed before its first line of work. The warm executor
is one process per SuperNode (started by `samfed.federation.supernode`) that imports those modules
once (`WARM_MODULES`: imports only, no torch computation and no Python threads, so that forking
it is safe), then listens on a Unix socket in a private folder (0700, its socket 0600, peers of
other users refused). The SuperNode's `flwr-clientapp` is the shim `samfed.federation.clientapp_shim`:
per message it sends its arguments, environment, working folder and standard streams (SCM_RIGHTS)
here; the executor forks a child that runs Flower's own `flwr-clientapp` entry point with them,
reports the child's PID and later its exit status to the shim. Each child starts from the same
freshly imported state and exits after its message, as a Flower ClientApp process does; nothing
of one round's data stays in the executor.

Containment is Flower's: a child that crashes fails only its message; a shim that goes away has
its child terminated; the executor exits (terminating its children) when its parent SuperNode
exits, and the SuperNode's process tree holds the executor and every child, so samfed's
`processes.terminate` stops them with it. Linux only (fork after import, SCM_RIGHTS, SO_PEERCRED);
elsewhere, or with SAMFED_WARM_CLIENTAPP=0, the SuperNode starts Flower's `flwr-clientapp` as usual.

    python -m samfed.federation.warm_exec --socket DIR/clientapp.sock --parent-pid PID

(--preload and --entry replace the imported modules and the children's entry point, for tests.)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from samfed.federation import clientapp_shim as shim

SOCKET_NAME = "clientapp.sock"
PREFIX = "samfed-warm-"
OWNER_FILE = "owner"
ENABLE_ENV = "SAMFED_WARM_CLIENTAPP"  # "0": no warm executor (Flower's own per-message processes)
WARM_MODULES = (
    "flwr.supernode.cli.flwr_clientapp",
    "numpy",
    "torch",
    "torch._dynamo",  # torch.optim imports it on the first optimizer
    "httpcore",  # Flower's Runtime API client imports its transport on first use
    "PIL.ImageDraw",
    "PIL.ImageFilter",
    "psutil",
    "edge.node",
    "samfed.config",
    "samfed.engine.checks",
    "samfed.engine.client",
    "samfed.engine.data",
    "samfed.engine.teacher",
    "samfed.data.readers",
    "samfed.data.partition",
    "samfed.data.synth",
    "samfed.federation.client_app",
    "samfed.federation.processes",
    "samfed.federation.simulation",
    "samfed.federation.validation",
    "samfed.method.aggregation",
    "samfed.method.arrays",
    "samfed.models",
    "samfed.preprocess",
    "samfed.teacher",
    "samfed.teacher.cache",
    "samfed.train.run_dir",
)
ENTRY = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"  # what `flwr-clientapp` runs
MAX_REQUEST = 1 << 20
SHIM_GRACE_S = 10.0  # a child whose shim went away: SIGTERM, SIGKILL after this
POLL_S = 0.2
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux


def supported() -> bool:
    """Whether SuperNodes get a warm executor here: Linux, and not switched off by $SAMFED_WARM_CLIENTAPP."""
    return sys.platform == "linux" and os.environ.get(ENABLE_ENV, "1") != "0"


def private_dir() -> Path:
    """A new folder only this user can enter, short enough to hold a Unix socket path: under
    $XDG_RUNTIME_DIR (a per-user tmpfs) when that exists, else the system temp folder. It names
    its owner (this process) in OWNER_FILE; folders whose owner is gone (a SuperNode killed with
    SIGKILL cleans up nothing) are removed first."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base) or len(base) > MAX_SOCKET_PATH - 40:
        base = tempfile.gettempdir()
    remove_stale(Path(base))
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base))
    folder.chmod(0o700)
    (folder / OWNER_FILE).write_text(_owner_id(os.getpid()))
    return folder


def _owner_id(pid: int) -> str:
    """PID and start time: a later process that reuses the PID is not the owner."""
    import psutil

    try:
        return f"{pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return ""


def remove_stale(base: Path) -> list[Path]:
    """Remove this user's warm-executor folders in `base` whose owner process is gone -> them."""
    removed = []
    for folder in base.glob(f"{PREFIX}*"):
        try:
            if folder.stat().st_uid != os.getuid() or not folder.is_dir():
                continue
            owner = (folder / OWNER_FILE).read_text().split()
        except OSError:  # no owner file (yet): not ours to judge
            continue
        if len(owner) == 2 and owner[0].isdigit() and _owner_id(int(owner[0])) != " ".join(owner):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def write_shim(folder: Path) -> Path:
    """`folder/bin/flwr-clientapp`: the shim, run by this interpreter with -S (no site-packages
    scan) -> its bin folder, to put first on the SuperNode's PATH."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(mode=0o700, exist_ok=True)
    exe = bin_dir / shim.COMMAND
    source = Path(shim.__file__).read_text()
    if len(sys.executable) < 120 and " " not in sys.executable:
        head = f"#!{sys.executable} -S\n"
    else:  # a shebang line this long or with spaces is not portable: a shell hands over
        (bin_dir / f"{shim.COMMAND}.py").write_text(source)
        target = shlex.quote(str(bin_dir / f"{shim.COMMAND}.py"))
        head = f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S {target} "$@"\n'
        source = ""
    exe.write_text(head + source)
    exe.chmod(0o700)
    return bin_dir


@dataclass
class _Job:
    conn: socket.socket
    pid: int
    shim_gone_at: float | None = None


class WarmExecutor:
    """Serve fork requests of `flwr-clientapp` shims on `socket_path` (see the module docstring)."""

    def __init__(
        self,
        socket_path: str | Path,
        parent_pid: int | None = None,
        owns_folder: bool = False,
        entry: str = ENTRY,
    ):
        self.path = Path(socket_path)
        self.entry = entry
        self.parent_pid = parent_pid
        self.owns_folder = owns_folder
        self.jobs: dict[int, _Job] = {}  # child pid -> its shim connection
        self.listener: socket.socket | None = None
        self.selector: selectors.BaseSelector | None = None
        self.wakeup: socket.socket | None = None  # readable when a child exited
        self._wakeup_w: socket.socket | None = None

    def preload(self, modules: tuple[str, ...] = WARM_MODULES) -> list[str]:
        """Import `modules` (those that fail are skipped) -> the names that could not be imported."""
        failed = []
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # an optional part (e.g. a teacher runtime) missing here
                failed.append(name)
        return failed

    def listen(self) -> None:
        """Bind the socket (0600) under a temporary name, then rename it into place: a shim finds
        either no socket (and runs the real command) or one that accepts."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(tmp))
        finally:
            os.umask(old)
        sock.listen(64)
        sock.setblocking(False)
        os.replace(tmp, self.path)
        self.listener = sock
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)
        # a child's exit wakes the loop at once (SIGCHLD writes to this pair), so shims learn it
        self.wakeup, self._wakeup_w = socket.socketpair()
        self.wakeup.setblocking(False)
        self._wakeup_w.setblocking(False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self._wakeup_w.fileno(), warn_on_full_buffer=False)
        self.selector.register(self.wakeup, selectors.EVENT_READ)

    def serve(self) -> None:
        """Until the parent exits or SIGTERM/SIGINT: accept requests, watch shims, reap children."""
        assert self.selector is not None and self.listener is not None
        while True:
            for key, _ in self.selector.select(POLL_S):
                if key.fileobj is self.listener:
                    self._accept()
                elif key.fileobj is self.wakeup:
                    with contextlib.suppress(OSError):
                        self.wakeup.recv(4096)
                else:
                    self._shim_event(key.data)
            self._reap()
            self._kill_orphans()
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                break

    def close(self) -> None:
        """Terminate running children (SIGTERM, SIGKILL after a grace), remove the socket (and the
        private folder when this executor owns it)."""
        for job in self.jobs.values():
            with contextlib.suppress(OSError):
                os.kill(job.pid, signal.SIGTERM)
        end = time.monotonic() + 5.0
        while self.jobs and time.monotonic() < end:
            self._reap()
            time.sleep(0.05)
        for job in list(self.jobs.values()):
            with contextlib.suppress(OSError):
                os.kill(job.pid, signal.SIGKILL)
                os.waitpid(job.pid, 0)
            job.conn.close()
        self.jobs.clear()
        for own in (self.listener, self.wakeup, self._wakeup_w):
            if own is not None:
                own.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if self.owns_folder:
            shutil.rmtree(self.path.parent, ignore_errors=True)

    # -- requests ---------------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        try:
            conn.setblocking(True)
            conn.settimeout(5.0)
            if not _same_user(conn):
                raise ConnectionRefusedError("a process of another user")
            req, fds = _read_request(conn)
        except (OSError, ValueError, KeyError) as exc:
            print(f"warm executor: refused a request ({exc})", file=sys.stderr, flush=True)
            conn.close()
            return
        try:
            if threading.active_count() != 1:  # forking a process with Python threads is unsafe
                print("warm executor: threads are running here; not forking", file=sys.stderr, flush=True)
                conn.close()  # the shim runs the real flwr-clientapp
                return
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                self._child(conn, fds, req)
            conn.settimeout(None)
            try:
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            except OSError:  # the shim is already gone
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
            self.jobs[pid] = _Job(conn, pid)
            assert self.selector is not None
            self.selector.register(conn, selectors.EVENT_READ, data=pid)
        finally:
            for fd in fds:
                os.close(fd)

    def _child(self, conn: socket.socket, fds: list[int], req: dict) -> None:
        """In the forked child: become `flwr-clientapp argv` and exit with its status (never returns)."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for own in (self.selector, self.listener, self.wakeup, self._wakeup_w):
                if own is not None:
                    own.close()
            for job in self.jobs.values():
                job.conn.close()
            conn.close()
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for target, fd in enumerate(fds[:3]):
                os.dup2(fd, target)
            for fd in fds:
                if fd > 2:
                    os.close(fd)
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            sys.argv = [shim.COMMAND, *req["argv"]]
            module, _, func = self.entry.partition(":")
            getattr(importlib.import_module(module), func)()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _shim_event(self, pid: int) -> None:
        """A shim's connection became readable: it closed (shim gone) -> terminate its child."""
        job = self.jobs.get(pid)
        if job is None or job.shim_gone_at is not None:
            return
        try:
            data = job.conn.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            return  # shims send nothing after the request
        assert self.selector is not None
        self.selector.unregister(job.conn)
        job.shim_gone_at = time.monotonic()
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)

    def _kill_orphans(self) -> None:
        now = time.monotonic()
        for job in self.jobs.values():
            if job.shim_gone_at is not None and now - job.shim_gone_at > SHIM_GRACE_S:
                with contextlib.suppress(OSError):
                    os.kill(job.pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            job = self.jobs.pop(pid, None)
            if job is None:
                continue
            if job.shim_gone_at is None:
                assert self.selector is not None
                self.selector.unregister(job.conn)
                with contextlib.suppress(OSError):
                    job.conn.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")
            job.conn.close()


def _same_user(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid == os.getuid()


def _read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    """The shim's request (`clientapp_shim.encode_request`) and the three stdio fds sent with it."""
    head, fds, _, _ = socket.recv_fds(conn, 4, 3)
    try:
        if len(fds) != 3:
            raise ValueError(f"expected 3 file descriptors, got {len(fds)}")
        while len(head) < 4:
            more = conn.recv(4 - len(head))
            if not more:
                raise ValueError("truncated request")
            head += more
        (size,) = struct.unpack("!I", head)
        if size > MAX_REQUEST:
            raise ValueError("request too large")
        body = b""
        while len(body) < size:
            more = conn.recv(size - len(body))
            if not more:
                raise ValueError("truncated request")
            body += more
        req = json.loads(body)
        if not (
            isinstance(req.get("argv"), list)
            and all(isinstance(a, str) for a in req["argv"])
            and isinstance(req.get("cwd"), str)
            and isinstance(req.get("env"), dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in req["env"].items())
        ):
            raise ValueError("malformed request")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return req, fds


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, type=Path)
    ap.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    ap.add_argument("--owns-folder", action="store_true", help="remove the socket's folder on exit")
    ap.add_argument("--preload", default=",".join(WARM_MODULES), help="comma-separated modules to import")
    ap.add_argument("--entry", default=ENTRY, help="MODULE:FUNCTION each child runs")
    args = ap.parse_args(argv)

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    executor = WarmExecutor(args.socket, args.parent_pid, args.owns_folder, args.entry)
    try:
        t0 = time.perf_counter()
        failed = executor.preload(tuple(m for m in args.preload.split(",") if m))
        if "flwr" in sys.modules:  # children run Flower's ClientApp: its waits, shortened once here
            from samfed.federation import flower_tuning

            flower_tuning.object_pull_backoff()
        executor.listen()
        note = f"; not importable here: {', '.join(failed)}" if failed else ""
        print(
            f"warm ClientApp executor {os.getpid()} ready in {time.perf_counter() - t0:.1f} s{note}",
            file=sys.stderr,
            flush=True,
        )
        executor.serve()
    finally:
        executor.close()


if __name__ == "__main__":
    main()
