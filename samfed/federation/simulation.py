"""Many simulated clients on one machine: samfed's ServerApp and ClientApp in Flower's simulation runtime.

`samfed train --engine flower-sim --clients N` runs `run_simulation`: the run directory is
prepared as the in-process runner prepares it (data, split), then a loopback SuperLink in
simulation mode gets a simulated federation of N virtual SuperNodes (Ray backend, one
`ClientApp` actor per `threads` CPUs) and the run is submitted with `flwr run`, exactly as a
real federation's is (`processes.write_app_dir`, `write_flwr_home`, `submit_run`). The
ServerApp (`server_app.FederatedRun`) and the ClientApp are the deployment's, so the global
weights equal the in-process runner's for the same settings and seed.

Node settings never travel from the server, in simulation too. Flower's simulation runtime gives
each virtual node only `partition-id` and `num-partitions`; the rest of its settings (data folder,
split, work-dir, threads) is written by this machine's `samfed train` into a local nodes file,
named by the `SAMFED_SIMULATION_NODES` environment variable of the SuperLink it starts (Ray
workers inherit it). `simulated_node_config` reads it, for a node config without data-path only.

Ray comes with the optional extra `samfed[sim]`; without it the engine stops with one line.
Importing this module loads neither torch nor Ray.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from samfed.errors import SamfedError
from samfed.federation import processes as fp
from samfed.fileio import read_json_or_empty

NODES_ENV = "SAMFED_SIMULATION_NODES"
PARTITION_ID = "partition-id"  # what Flower's simulation runtime sets on each virtual node
NUM_PARTITIONS = "num-partitions"
NODES_FILE = "nodes.json"
FOLDER = "simulation"  # under the run directory: nodes file, Flower logs and homes, node work-dirs


def ray_installed() -> bool:
    """Whether Ray (Flower's simulation backend) can be imported here."""
    return importlib.util.find_spec("ray") is not None


def require_ray() -> None:
    """SamfedError (one line) unless Ray is installed."""
    if not ray_installed():
        raise SamfedError(
            "The flower-sim engine needs Flower's simulation runtime (Ray): pip install 'samfed[sim]'."
        )


# ---- node settings -------------------------------------------------------------------------------


def node_configs(
    data: Path, split: Path, folder: Path, clients: int, threads: int, cache: Path
) -> list[dict]:
    """The node config of each virtual node k (what `samfed node` would pass): the shared data
    folder with split.clients[k], its own work-dir under `folder`, `threads` threads."""
    return [
        {
            "data-path": str(data),
            "split": str(split),
            PARTITION_ID: k,
            "name": f"client-{k}",
            "work-dir": str(folder / f"node-{k}"),
            "threads": threads,
            "teacher-cache": str(cache),
        }
        for k in range(clients)
    ]


def write_nodes_file(path: Path, configs: list[dict]) -> Path:
    """Write the virtual nodes' settings (a JSON list of node configs) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"nodes": configs}, indent=1))
    return path


@lru_cache(maxsize=4)
def _read_nodes(path: str, mtime_ns: int) -> dict[int, dict]:
    try:
        nodes = json.loads(Path(path).read_text())["nodes"]
        return {int(n[PARTITION_ID]): dict(n) for n in nodes}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SamfedError(f"The simulation nodes file {path} is unreadable ({exc}).") from None


def simulated_node_config(node_config: dict[str, Any]) -> dict[str, Any]:
    """A virtual node's full node config: `node_config` itself unless it is one of Flower's
    simulation runtime (`partition-id` and `num-partitions`, no data-path) and this process has
    a local nodes file (`SAMFED_SIMULATION_NODES`); then that file's entry for its partition-id.
    Nothing here comes from the server."""
    path = os.environ.get(NODES_ENV)
    if not path or "data-path" in node_config or NUM_PARTITIONS not in node_config:
        return node_config
    try:
        nodes = _read_nodes(path, Path(path).stat().st_mtime_ns)
    except OSError:
        raise SamfedError(f"The simulation nodes file {path} does not exist.") from None
    k = int(node_config.get(PARTITION_ID, -1))
    if k not in nodes:
        raise SamfedError(f"The simulation nodes file {path} has no node with partition-id {k}.")
    return nodes[k]


# ---- the simulated federation -----------------------------------------------------------------


def superlink_command(host: str, port: int) -> list[str]:
    """`flower-superlink` arguments of a loopback SuperLink in simulation mode (insecure)."""
    return [*fp.superlink_command(host, port), "--simulation"]


def configure_federation(home: Path, clients: int, threads: int, cpus: int | None = None) -> None:
    """Set the SuperLink's simulated federation (`flwr federation simulation-config`): `clients`
    virtual SuperNodes, Ray backend, `threads` CPUs per ClientApp, `cpus` for Ray (default: all)."""
    from flwr.supercore.constant import NOOP_FEDERATION_ID

    args = ["federation", "simulation-config", NOOP_FEDERATION_ID, fp.CONNECTION, "--format", "json"]
    args += ["--num-supernodes", str(clients), "--backend-name", "ray"]
    args += ["--client-resources-num-cpus", str(threads)]
    args += ["--init-args-num-cpus", str(cpus or _cpu_count())]
    res = fp.flwr_cli(args, home, timeout=120)
    try:
        ok = bool(json.loads(res.stdout[res.stdout.index("{") :]).get("success"))
    except ValueError:
        ok = False
    if not ok:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        raise SamfedError(f"Configuring the simulated federation failed: {tail}")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def prepare_run(cfg, out: Path, resume: bool, say: Callable[[str], None]):
    """The run directory as the in-process runner prepares it (checks, data, split) -> (RunConfig
    the server runs, RunDir, the dataset folder); config.toml names the dataset folder (the
    built-in synthetic set: written into the run directory), as the federation server needs."""
    from samfed.engine.checks import check_run_folder, validate_config
    from samfed.engine.data import prepare_dataset
    from samfed.method.methods import method_spec
    from samfed.train.run_dir import RunDir, atomic_write_text

    validate_config(cfg)
    if method_spec(cfg.method).kind != "federated":
        raise SamfedError(
            f"Method {cfg.method} has no clients to simulate; run it with the in-process engine."
        )
    run = RunDir(Path(out).expanduser().resolve())
    check_run_folder(run, resume)
    run.root.mkdir(parents=True, exist_ok=True)
    _, split = prepare_dataset(cfg, run, say)
    if len(split.clients) != cfg.clients:
        raise SamfedError(f"The split has {len(split.clients)} clients, the settings {cfg.clients}.")
    data = Path(cfg.data).expanduser().resolve() if cfg.data else run.data
    if cfg.data != str(data):
        cfg = cfg.override(source="flower-sim engine", data=str(data))
    atomic_write_text(run.config, cfg.to_toml())
    return cfg, run, data


def server_options(run_dir: Path, clients: int, resume: bool):
    """The ServerApp's options for a simulated run: all `clients` virtual nodes every round (one
    missing stops the run), the torch teacher, no norm-outlier rejection (the nodes run this
    machine's own code), fast reply polling."""
    from samfed.federation.options import ServerOptions

    return ServerOptions(
        run_dir=str(run_dir), resume=resume, num_nodes=clients, min_clients=clients,
        teacher_runtime="torch", outlier_factor=0.0, max_update_ratio=0.0, poll_interval=0.2,
    )  # fmt: skip


def run_simulation(
    cfg, out: Path, resume: bool = False, say: Callable[[str], None] = print, timeout: float | None = None
) -> dict:
    """Run `cfg` (cfg.clients virtual nodes) in Flower's simulation runtime into run directory
    `out` -> the ServerApp's final status (state finished). SamfedError (one line) without Ray,
    on a failed run, or after `timeout` seconds. `say` gets plain text lines: the server log.
    Every process started (SuperLink, Flower's simulation process, Ray) is stopped on return."""
    from samfed.engine.teacher import cache_root

    require_ray()
    cfg, run, data = prepare_run(cfg, out, resume, say)
    folder, threads = run.root / FOLDER, cfg.threads or 1
    configs = node_configs(data, run.split, folder, cfg.clients, threads, cache_root(cfg))
    nodes = write_nodes_file(folder / NODES_FILE, configs)
    opts = server_options(run.root, cfg.clients, resume)
    (run.root / "federation" / "status.json").unlink(missing_ok=True)
    with fp.stopping_on_exit():
        port = fp.free_port()
        env = {**fp.flwr_env(folder / "superlink-home"), NODES_ENV: str(nodes)}
        link = fp.start_process(
            "SuperLink", superlink_command("127.0.0.1", port), folder / "superlink.log", env
        )
        fp.wait_for_port(link, "127.0.0.1", port)
        home = fp.write_flwr_home(folder / "flwr-home", fp.join_address("127.0.0.1", port))
        configure_federation(home, cfg.clients, threads)
        run_id = fp.submit_run(fp.write_app_dir(folder / "app"), home, opts.to_run_config())
        say(f"Flower simulation run {run_id}: {cfg.clients} virtual SuperNodes (Ray), logs in {folder}")
        status = watch(link, run.root, run_id, home, say, timeout)
        _wait_until_ended(run_id, home)
    return status


def watch(link, run_dir: Path, run_id: int, home: Path, say, timeout: float | None = None) -> dict:
    """Follow the run until the ServerApp reports finished -> its status.json. New lines of its
    server.log go to `say`. SamfedError when it reports failed, the SuperLink exits, Flower ends
    the run without a final status (e.g. the ClientApp could not load), or `timeout` passes."""
    fed = run_dir / "federation"
    end = None if timeout is None else time.monotonic() + timeout
    shown, next_check = 0, time.monotonic() + 20.0
    while True:
        fp.remember_started()  # Ray's processes too, so they are stopped by PID on exit
        shown = _show_log(fed / "server.log", shown, say)
        status = _read_json(fed / "status.json")
        if status.get("state") == "finished":
            return status
        if status.get("state") == "failed":
            raise SamfedError(f"The simulated run failed: {status.get('error')} (logs in {run_dir})")
        if not link.alive():
            raise SamfedError(f"The SuperLink exited; its log ends with: {link.log_tail(5)}")
        now = time.monotonic()
        if now > next_check:  # a `flwr ls` costs a process start: seldom
            next_check = now + 20.0
            if fp.run_status(run_id, home).startswith("finished") and not _final(fed / "status.json"):
                raise SamfedError(f"Flower ended run {run_id} before it finished; see {link.log}.")
        if end is not None and now > end:
            raise SamfedError(f"The simulated run did not finish within {timeout:.0f} s (logs in {run_dir}).")
        time.sleep(0.5)


def _final(status_file: Path) -> bool:
    return _read_json(status_file).get("state") in ("finished", "failed")


def _wait_until_ended(run_id: int, home: Path, timeout: float = 60.0) -> None:
    """Wait (at most `timeout` s) until Flower reports the run finished, so Ray shuts down cleanly."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and not fp.run_status(run_id, home).startswith("finished"):
        time.sleep(1.0)


def _read_json(path: Path) -> dict:
    """The JSON object in `path` ({} when absent, unreadable or not an object)."""
    value = read_json_or_empty(path)
    return value if isinstance(value, dict) else {}


def _show_log(path: Path, shown: int, say) -> int:
    """Pass the lines of `path` after the first `shown` to `say` (their timestamps cut) -> lines shown."""
    try:
        raw = path.read_bytes()
    except OSError:
        return shown
    lines = raw.decode(errors="replace").splitlines()
    complete = lines if raw.endswith(b"\n") else lines[:-1]  # a line being written waits
    for line in complete[shown:]:
        say(line[20:] if line[:4].isdigit() and len(line) > 20 else line)
    return max(shown, len(complete))
