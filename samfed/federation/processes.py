"""Start, watch and stop the Flower processes of a federation: SuperLink, SuperNodes, `flwr run`.

Every process is started in its own session (so a Ctrl-C in the terminal reaches only the
foreground command, which then stops its children cleanly) and stopped by PID together with every
descendant it spawned (Flower's SuperExec, ServerApp and ClientApp processes), terminate first,
kill after a grace period. `LocalFederation` bundles a SuperLink and N SuperNodes on loopback for
tests and single-machine trials and stops all of them on exit, also on failure.

Flower 1.42 serves the Fleet, Control and Runtime APIs of the SuperLink on one HTTP port; a
SuperNode needs a second port for its local ClientApp runtime. `flwr run` reads its SuperLink
connection from `$FLWR_HOME/config.toml`, which `write_flwr_home` writes; it never needs the
internet. Torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from samfed.errors import SamfedError
from samfed.federation.tls import TlsFiles

APP_NAME = "samfed-federation"
CONNECTION = "samfed"
SERVER_COMPONENT = "samfed.federation.server_app:app"
CLIENT_COMPONENT = "samfed.federation.client_app:app"


def flower_bin(name: str) -> str:
    """Path of a Flower console script in this interpreter's environment (falls back to PATH)."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise SamfedError(f"`{name}` was not found; install the training extra: pip install 'samfed[train]'.")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def process_tree(pid: int) -> list:
    """psutil Process objects for `pid` and all its descendants (empty if it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_tree(pid: int, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to `pid` and every descendant, wait `grace` seconds, SIGKILL what is left."""
    import psutil

    procs = process_tree(pid)
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(sig)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace)


@dataclass
class FlowerProcess:
    """One started process (and its descendants), its log file and how to stop it."""

    name: str
    popen: subprocess.Popen
    log: Path
    known: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_children(self) -> None:
        """Record the current descendants' PIDs (so they can be stopped even after re-parenting)."""
        self.known.update(p.pid for p in process_tree(self.pid))

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the process and everything it started (by PID), kill after `grace` s."""
        self.remember_children()
        stop_tree(self.pid, grace)
        for pid in self.known - {self.pid}:
            stop_tree(pid, grace=1.0)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def crash(self) -> None:
        """SIGKILL the process and its descendants at once, as a power cut would."""
        stop_tree(self.pid, grace=2.0, sig=signal.SIGKILL)
        self.popen.wait()


def start_process(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> FlowerProcess:
    """Start `cmd` in a new session with stdout+stderr to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh:
        popen = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    return FlowerProcess(name, popen, log)


def wait_for_port(proc: FlowerProcess, host: str, port: int, timeout: float = 60.0) -> None:
    """Return when `host:port` accepts connections; SamfedError if the process dies or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise SamfedError(f"{proc.name} exited during start-up; its log ends with:\n{proc.log_tail()}")
        if port_open(host, port):
            return
        time.sleep(0.2)
    raise SamfedError(f"{proc.name} did not open {host}:{port} within {timeout:.0f} s (log: {proc.log}).")


def superlink_command(
    host: str, port: int, tls: TlsFiles | None = None, node_auth: bool = False, database: str | None = None
) -> list[str]:
    """`flower-superlink` arguments: one port for all APIs; TLS when `tls` is given, else --insecure."""
    cmd = [flower_bin("flower-superlink"), "--host", host, "--port", str(port)]
    cmd += ["--disable-runtime-dependency-installation"]
    if database:
        cmd += ["--database", database]
    if tls is None:
        if node_auth:
            raise SamfedError("Node authentication needs TLS; pass the certificate files.")
        cmd.append("--insecure")
    else:
        cmd += [
            "--ssl-ca-certfile",
            str(tls.ca_cert),
            "--ssl-certfile",
            str(tls.server_cert),
            "--ssl-keyfile",
            str(tls.server_key),
        ]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    return cmd


def format_node_config(values: dict[str, object]) -> str:
    """`key=value` pairs for --node-config; strings quoted (TOML), numbers and bools as they are."""
    parts = []
    for k, v in values.items():
        if isinstance(v, bool):
            parts.append(f"{k}={'true' if v else 'false'}")
        elif isinstance(v, int | float):
            parts.append(f"{k}={v}")
        else:
            parts.append(f"{k}={json.dumps(str(v))}")
    return " ".join(parts)


def supernode_command(
    superlink: str,
    port: int,
    node_config: dict[str, object],
    root_cert: Path | None = None,
    auth_key: Path | None = None,
    host: str = "127.0.0.1",
) -> list[str]:
    """`flower-supernode` arguments; `port` is the node's local ClientApp runtime port."""
    cmd = [flower_bin("flower-supernode"), "--superlink", superlink, "--host", host, "--port", str(port)]
    cmd += ["--node-config", format_node_config(node_config)]
    if root_cert is None:
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(root_cert)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    return cmd


def write_flwr_home(home: Path, address: str, root_cert: Path | None = None) -> Path:
    """A `$FLWR_HOME` whose config.toml makes connection `samfed` (the default) point at `address`."""
    home.mkdir(parents=True, exist_ok=True)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{address}"',
    ]
    lines.append(f'root-certificates = "{root_cert}"' if root_cert else "insecure = true")
    (home / "config.toml").write_text("\n".join(lines) + "\n")
    return home


def write_app_dir(folder: Path, run_config: dict[str, object] | None = None) -> Path:
    """A minimal Flower app project whose components are samfed's ServerApp and ClientApp.

    The app code itself is the installed `samfed` package (the same on server and nodes); the
    project holds only pyproject.toml, so the FAB that `flwr run` ships is a few hundred bytes.
    """
    import tomli_w

    from samfed import __version__
    from samfed.federation.options import ServerOptions

    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {
            "name": APP_NAME,
            "version": __version__,
            "description": "SAM-Fed rounds on Flower (code: the installed samfed package)",
            "license": "Apache-2.0",
            "dependencies": [],
        },
        "tool": {
            "flwr": {
                "app": {
                    "publisher": "samfed",
                    "components": {"serverapp": SERVER_COMPONENT, "clientapp": CLIENT_COMPONENT},
                    "config": {**ServerOptions.defaults(), **(run_config or {})},
                }
            }
        },
    }
    (folder / "pyproject.toml").write_text(tomli_w.dumps(doc))
    return folder


def flwr_env(home: Path) -> dict[str, str]:
    return {"FLWR_HOME": str(home)}


def flwr_cli(args: list[str], home: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run the `flwr` CLI with `args` against this run's Flower home; output captured (no check)."""
    return subprocess.run(
        [flower_bin("flwr"), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **flwr_env(home)},
        timeout=timeout,
        check=False,
    )


def submit_run(
    app_dir: Path, home: Path, run_config: dict[str, object] | None = None, timeout: float = 120
) -> int:
    """`flwr run APP samfed` (run config overrides as key=value) -> the run id."""
    args = ["run", str(app_dir), CONNECTION, "--format", "json"]
    if run_config:
        args += ["--run-config", format_node_config(run_config)]
    res = flwr_cli(args, home, timeout)
    try:
        payload = json.loads(res.stdout[res.stdout.index("{") :])
        return int(payload["run-id"])
    except (ValueError, KeyError, TypeError):
        msg = (res.stdout + res.stderr).strip().splitlines()[-5:]
        raise SamfedError(f"`flwr run` could not start the run: {' | '.join(msg)}") from None


def run_status(run_id: int, home: Path, timeout: float = 60) -> str:
    """'pending' | 'starting' | 'running' | 'finished:completed' | 'finished:failed' | ... ('' if unknown)."""
    res = flwr_cli(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], home, timeout)
    try:
        runs = json.loads(res.stdout[res.stdout.index("{") :])["runs"]
        return str(runs[0]["status"]) if runs else ""
    except (ValueError, KeyError, IndexError):
        return ""


def register_node(public_key: Path, home: Path, name: str | None = None) -> None:
    """`flwr supernode register KEY.pub samfed` (SuperLink started with node authentication)."""
    cmd = [flower_bin("flwr"), "supernode", "register", str(public_key), CONNECTION]
    if name:
        cmd += ["--name", name]
    res = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **flwr_env(home)}, check=False
    )
    if res.returncode != 0:
        raise SamfedError(
            f"registering node key {public_key} failed: {(res.stdout + res.stderr).strip()[-300:]}"
        )


@dataclass
class NodeSpec:
    """One SuperNode to start: its node config (data-path, partition-id, ...) and optional auth key."""

    node_config: dict[str, object]
    auth_key: Path | None = None
    env: dict[str, str] = field(default_factory=dict)


class LocalFederation:
    """A SuperLink and SuperNodes on loopback (free ports), stopped by PID on exit (also on failure).

    with LocalFederation(workdir, nodes=[NodeSpec({...}), ...]) as fed:
        run_id = fed.submit(run_config)
    """

    def __init__(
        self,
        workdir: str | Path,
        nodes: Iterable[NodeSpec] = (),
        tls: TlsFiles | None = None,
        node_auth: bool = False,
        host: str = "127.0.0.1",
    ):
        self.workdir = Path(workdir)
        self.node_specs = list(nodes)
        self.tls, self.node_auth, self.host = tls, node_auth, host
        self.port = free_port(host)
        self.superlink: FlowerProcess | None = None
        self.nodes: list[FlowerProcess] = []
        self.home = self.workdir / "flwr-home"
        self.app_dir = self.workdir / "flower-app"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        root = self.tls.ca_cert if self.tls else None
        write_flwr_home(self.home, self.address, root)
        write_app_dir(self.app_dir)
        self.superlink = start_process(
            "SuperLink",
            superlink_command(self.host, self.port, self.tls, self.node_auth),
            self.workdir / "logs" / "superlink.log",
            env=flwr_env(self.workdir / "superlink-home"),
        )
        wait_for_port(self.superlink, self.host, self.port)
        for spec in self.node_specs:
            self.add_node(spec)

    def add_node(self, spec: NodeSpec, register: bool = True) -> FlowerProcess:
        """Start one more SuperNode (registering its key first when node auth is on and `register`)."""
        i = len(self.nodes)
        if self.node_auth and register:
            if spec.auth_key is None:
                raise SamfedError("Node authentication is on, so every node needs a key.")
            register_node(spec.auth_key.with_suffix(".pub"), self.home, name=f"node-{i}")
        port = free_port(self.host)
        root = self.tls.ca_cert if self.tls else None
        proc = start_process(
            f"SuperNode {i}",
            supernode_command(self.address, port, spec.node_config, root, spec.auth_key, self.host),
            self.workdir / "logs" / f"supernode-{i}.log",
            env={**flwr_env(self.workdir / f"supernode-{i}-home"), **spec.env},
        )
        self.nodes.append(proc)
        return proc

    def submit(self, run_config: dict[str, object] | None = None) -> int:
        return submit_run(self.app_dir, self.home, run_config)

    def status(self, run_id: int) -> str:
        return run_status(run_id, self.home)

    def stop(self) -> None:
        """Stop every node and the SuperLink with all their children (idempotent)."""
        for proc in [*self.nodes, *([self.superlink] if self.superlink else [])]:
            proc.stop()
