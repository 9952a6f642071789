"""Start, watch and stop the Flower processes of a federation: SuperLink, gateway, SuperNodes, `flwr`.

Flower 1.42 serves the Fleet (nodes), Control (`flwr` CLI: list, stop, start runs) and Runtime
(ServerApp) APIs of the SuperLink on one HTTP port, so the SuperLink always listens on loopback;
the sites reach it through the Fleet gateway (`samfed.federation.gateway`), which `start_server`
puts on the public address and which forwards the Fleet API only. A SuperNode needs a second,
loopback port for its local ClientApp runtime. `flwr` reads its SuperLink connection from
`$FLWR_HOME/config.toml` (`write_flwr_home`: the loopback Control address); it never needs the
internet.

A SuperNode runs through `samfed.federation.supernode` (`supernode_command`): Flower's SuperNode
with a warm ClientApp executor (`samfed.federation.warm_exec`) and shorter polling waits, so a round
costs little more than its local training (docs/federation.md, *Round overhead*).

Every process runs with `child_env` (telemetry off, this interpreter's bin folder on PATH, a short
SuperExec task poll) in a session of its own (a Ctrl-C in the terminal reaches only the foreground
command, which then stops its children cleanly), and is stopped by PID together with every
descendant seen (Flower's SuperExec, ServerApp and ClientApp processes, the warm executor),
terminate first, kill after a grace period;
`stopping_on_exit` does that for everything started inside it, on SIGTERM and SIGINT too.
`LocalFederation` bundles a server and N SuperNodes on one machine for tests and single-machine
trials. Torch-free.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from samfed.errors import SamfedError
from samfed.federation.tls import TlsFiles

APP_NAME = "samfed-federation"
CONNECTION = "samfed"
SERVER_COMPONENT = "samfed.federation.server_app:app"
CLIENT_COMPONENT = "samfed.federation.client_app:app"
TELEMETRY_OFF = {"FLWR_TELEMETRY_ENABLED": "0"}
EXTRA_API_SWITCHES = ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API")
TASK_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's: seconds between SuperExec task polls
TASK_POLL_S = 0.2  # Flower's default is slower: a delay before every ClientApp and ServerApp


def flower_bin(name: str) -> str:
    """Path of a Flower console script in this interpreter's environment (falls back to PATH)."""
    local = Path(sys.executable).with_name(name)
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise SamfedError(f"`{name}` was not found; install the training extra: pip install 'samfed[train]'.")
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every process samfed starts (Flower's and the `flwr` CLI).

    This process's environment plus `extra`, then: Flower telemetry off; this interpreter's bin
    folder first on PATH (Flower starts flower-superexec, flwr-serverapp and flwr-clientapp from
    PATH, so a samfed started by its full path without the venv activated still finds them);
    without Flower's switches that open extra gRPC API ports on their default (public) addresses;
    Flower's SuperExec task poll at `TASK_POLL_S` unless set.
    """
    env = {k: v for k, v in os.environ.items() if k not in EXTRA_API_SWITCHES}
    env.update({k: v for k, v in (extra or {}).items() if k not in EXTRA_API_SWITCHES})
    env.update(TELEMETRY_OFF)
    env.setdefault(TASK_POLL_ENV, str(TASK_POLL_S))
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env["PATH"]]) if env.get("PATH") else bin_dir
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (the OS picks it)."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """Whether `port` can be bound on `host` right now (False: in use); SamfedError when `host`
    is no address of this machine or the port needs privileges."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise SamfedError(
                f"Cannot listen on {join_address(host, port)}: {exc.strerror or exc}."
            ) from None
    return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def is_loopback(host: str) -> bool:
    """True for 127.x.x.x, ::1 and localhost: addresses only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dial_host(host: str) -> str:
    """The address to connect to for a server listening on `host` (wildcards: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def join_address(host: str, port: int) -> str:
    """HOST:PORT, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT) -> (host, port); SamfedError when it is not one."""
    host, sep, port = address.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise SamfedError(
            f"{address!r} is not a server address; expected HOST:PORT, e.g. server.example.org:9092."
        )
    return host, int(port)


def process_tree(pid: int) -> list:
    """psutil Process objects for `pid` and all its descendants (empty if it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _descendants(procs: list) -> list:
    import psutil

    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            out += p.children(recursive=True)
    return out


def terminate(procs: list, grace: float = 5.0, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to every psutil Process in `procs` (and to what they spawn meanwhile), wait up to
    `grace` seconds, SIGKILL what is left. A process whose PID was reused is never touched
    (psutil checks the creation time)."""
    import psutil

    pending = {p.pid: p for p in procs}
    for _ in range(3):  # children started while the first ones shut down get the same treatment
        for p in pending.values():
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)
        _, alive = psutil.wait_procs(list(pending.values()), timeout=grace)
        late = {p.pid: p for p in _descendants(alive) if p.pid not in pending}
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=grace)
        if not late:
            return
        pending = late


_STARTED: list[FlowerProcess] = []


@dataclass
class FlowerProcess:
    """One started process (and its descendants), its log file and how to stop it."""

    name: str
    popen: subprocess.Popen
    log: Path
    handles: dict = field(default_factory=dict)  # pid -> psutil.Process of it and every descendant seen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def known(self) -> set[int]:
        """PIDs of this process and of every descendant seen so far."""
        return set(self.handles) | {self.pid}

    def alive(self) -> bool:
        return self.popen.poll() is None

    def remember_children(self) -> None:
        """Record the current descendants (so they can be stopped even after re-parenting)."""
        for p in process_tree(self.pid):
            self.handles.setdefault(p.pid, p)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the process and everything it started (by PID), kill after `grace` s."""
        self.remember_children()
        terminate(list(self.handles.values()), grace)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        with contextlib.suppress(ValueError):
            _STARTED.remove(self)

    def crash(self) -> None:
        """SIGKILL the process and its descendants at once, as a power cut would."""
        self.remember_children()
        terminate(list(self.handles.values()), grace=2.0, sig=signal.SIGKILL)
        self.popen.wait()
        with contextlib.suppress(ValueError):
            _STARTED.remove(self)


def start_process(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> FlowerProcess:
    """Start `cmd` in a new session with stdout+stderr to `log`, environment `child_env(env)`.

    The process is registered: `stopping_on_exit` stops it (and its descendants) by PID.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        popen = subprocess.Popen(
            cmd,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            start_new_session=True,
        )
    proc = FlowerProcess(name, popen, log)
    proc.remember_children()
    _STARTED.append(proc)
    return proc


def remember_started() -> None:
    """Record the current descendants of every started process that still runs."""
    for proc in list(_STARTED):
        if proc.alive():
            proc.remember_children()


@contextlib.contextmanager
def stopping_on_exit(grace: float = 5.0) -> Iterator[None]:
    """Inside: SIGTERM and SIGINT raise KeyboardInterrupt. On leaving, by any route, every process
    started inside is stopped by PID with all its descendants (also those in sessions of their
    own, which a signal to our process group never reaches); further signals wait until then."""
    first = len(_STARTED)
    main = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT)
    old = {}
    if main:

        def interrupt(signum, frame):
            raise KeyboardInterrupt

        old = {s: signal.signal(s, interrupt) for s in signals}
    try:
        yield
    finally:
        if main:
            for s in signals:
                signal.signal(s, signal.SIG_IGN)
        try:
            for proc in reversed(_STARTED[first:]):
                proc.stop(grace)
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)


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
    """`flower-superlink` arguments: all its APIs on `host:port`, which must be a loopback address
    (the sites reach it through the Fleet gateway); TLS when `tls` is given, else --insecure."""
    if not is_loopback(host):
        raise ValueError(f"the SuperLink serves its Control API too: it listens on loopback only, not {host}")
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


def gateway_command(
    host: str, port: int, upstream_port: int, tls: TlsFiles | None = None, max_body_mb: float | None = None
) -> list[str]:
    """`python -m samfed.federation.gateway` arguments: Fleet API on `host:port` -> 127.0.0.1:upstream."""
    cmd = [sys.executable, "-m", "samfed.federation.gateway", "--host", host, "--port", str(port)]
    cmd += ["--upstream-port", str(upstream_port), "--parent-pid", str(os.getpid())]
    if tls is not None:
        cmd += [
            "--certfile",
            str(tls.server_cert),
            "--keyfile",
            str(tls.server_key),
            "--ca-cert",
            str(tls.ca_cert),
        ]
    if max_body_mb is not None:
        cmd += ["--max-body-mb", str(max_body_mb)]
    return cmd


@dataclass
class FlowerServer:
    """The server side of a federation: a SuperLink on loopback and, in front of it, the Fleet
    gateway on the address the sites dial (the only port that faces them)."""

    superlink: FlowerProcess
    gateway: FlowerProcess | None
    control: str  # loopback HOST:PORT of the SuperLink: Control API for the operator's `flwr`
    fleet: str  # HOST:PORT the sites' SuperNodes connect to (the gateway's, or the SuperLink's)
    home: Path  # $FLWR_HOME whose connection `samfed` is the Control API

    @property
    def processes(self) -> list[FlowerProcess]:
        return [self.superlink, *([self.gateway] if self.gateway else [])]

    def exited(self) -> FlowerProcess | None:
        """The first of its processes that is no longer running (None while all run)."""
        return next((p for p in self.processes if not p.alive()), None)

    def stop(self, grace: float = 5.0) -> None:
        for p in reversed(self.processes):
            p.stop(grace)


def start_server(
    host: str,
    port: int,
    folder: Path,
    tls: TlsFiles | None = None,
    node_keys: Iterable[Path] = (),
    node_auth: bool | None = None,
    gateway: bool | None = None,
) -> FlowerServer:
    """Start the SuperLink on loopback (logs, Flower homes in `folder`), register `node_keys`
    (node authentication is on when there are any, or when `node_auth`), then open the Fleet
    gateway on `host:port`, so no node can knock before its key is known. `gateway=None`: a
    gateway unless `host` is loopback (then the SuperLink itself listens on `host:port`). Stops
    what it started when a step fails."""
    node_keys = list(node_keys)
    node_auth = bool(node_keys) if node_auth is None else node_auth
    gateway = not is_loopback(host) if gateway is None else gateway
    link_host, link_port = ("127.0.0.1", free_port("127.0.0.1")) if gateway else (host, port)
    superlink = start_process(
        "SuperLink",
        superlink_command(link_host, link_port, tls, node_auth),
        folder / "superlink.log",
        env=flwr_env(folder / "superlink-home"),
    )
    control = join_address(link_host, link_port)
    home = write_flwr_home(folder / "flwr-home", control, tls.ca_cert if tls else None)
    server = FlowerServer(superlink, None, control, join_address(host, port), home)
    try:
        wait_for_port(superlink, link_host, link_port)
        for key in node_keys:
            register_node(key, home, name=key.stem)
        if gateway:
            server.gateway = start_process(
                "Fleet gateway", gateway_command(host, port, link_port, tls), folder / "gateway.log"
            )
            wait_for_port(server.gateway, dial_host(host), port)
    except BaseException:
        server.stop()
        raise
    return server


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
    """The command of a SuperNode: `flower-supernode` arguments, run through
    `samfed.federation.supernode` (warm ClientApps, shorter waits); `port` is the node's local
    ClientApp runtime port (loopback)."""
    cmd = [sys.executable, "-m", "samfed.federation.supernode", flower_bin("flower-supernode")]
    cmd += ["--superlink", superlink, "--host", host, "--port", str(port)]
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
        env=child_env(flwr_env(home)),
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


def register_node(public_key: Path, home: Path, name: str | None = None, timeout: float = 60) -> None:
    """`flwr supernode register KEY.pub samfed` (SuperLink started with node authentication)."""
    args = ["supernode", "register", str(public_key), CONNECTION]
    if name:
        args += ["--name", name]
    res = flwr_cli(args, home, timeout)
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
    """A SuperLink and SuperNodes on this machine (free ports), stopped by PID on exit (also on
    failure). With a non-loopback `host` (e.g. 0.0.0.0) the SuperLink stays on loopback and the
    nodes connect through the Fleet gateway on `host`, exactly as `samfed serve` runs it.

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
        self.server: FlowerServer | None = None
        self.nodes: list[FlowerProcess] = []
        self.home = self.workdir / "flwr-home"
        self.app_dir = self.workdir / "flower-app"

    @property
    def superlink(self) -> FlowerProcess | None:
        return self.server.superlink if self.server else None

    @property
    def gateway(self) -> FlowerProcess | None:
        return self.server.gateway if self.server else None

    @property
    def address(self) -> str:
        """What the nodes dial: the Fleet port (the gateway's when `host` is not loopback)."""
        return join_address(dial_host(self.host), self.port)

    @property
    def processes(self) -> list[FlowerProcess]:
        return [*(self.server.processes if self.server else []), *self.nodes]

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
        self.server = start_server(
            self.host, self.port, self.workdir / "logs", self.tls, node_auth=self.node_auth
        )
        self.home = self.server.home
        write_app_dir(self.app_dir)
        for spec in self.node_specs:
            self.add_node(spec)

    def add_node(self, spec: NodeSpec, register: bool = True) -> FlowerProcess:
        """Start one more SuperNode (registering its key first when node auth is on and `register`)."""
        i = len(self.nodes)
        if self.node_auth and register:
            if spec.auth_key is None:
                raise SamfedError("Node authentication is on, so every node needs a key.")
            register_node(spec.auth_key.with_suffix(".pub"), self.home, name=f"node-{i}")
        port = free_port("127.0.0.1")
        root = self.tls.ca_cert if self.tls else None
        proc = start_process(
            f"SuperNode {i}",
            supernode_command(self.address, port, spec.node_config, root, spec.auth_key),
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
        """Stop every node, the gateway and the SuperLink with all their children (idempotent)."""
        for proc in self.nodes:
            proc.stop()
        if self.server is not None:
            self.server.stop()
