"""`samfed serve` and `samfed node`: SAM-Fed across sites on Flower."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from samfed.errors import SamfedError

_out = Console()


def _opt(help: str, **kw):
    return typer.Option(help=help, **kw)


def serve(
    out: Annotated[Path, _opt("Server run directory (config, checkpoints, metrics, report).")],
    data: Annotated[
        Path | None, _opt("Folder of the server's labeled images D_p (val.txt optional).")
    ] = None,
    config: Annotated[
        Path | None, _opt("RunConfig TOML with the method settings (as for `samfed train`).")
    ] = None,
    split: Annotated[
        Path | None, _opt("Optional split JSON (server_labeled/val/test ids) to use as is.")
    ] = None,
    clients: Annotated[int | None, _opt("Number of sites (client ids 0..N-1).")] = None,
    rounds: Annotated[int | None, _opt("Number of rounds.")] = None,
    host: Annotated[
        str,
        _opt("Address the sites connect to (0.0.0.0: every interface); Flower's control stays on loopback."),
    ] = "0.0.0.0",
    port: Annotated[
        int, _opt("Port the sites connect to (Fleet API only, through samfed's gateway).")
    ] = 9092,
    certs: Annotated[
        Path | None, _opt("Folder with ca.pem, server.pem, server.key (TLS); the cert must list 127.0.0.1.")
    ] = None,
    insecure: Annotated[bool, _opt("Run without TLS (trials on a trusted network only).")] = False,
    node_key: Annotated[
        list[Path] | None,
        _opt("Public key (.pub, OpenSSH ECDSA P-384) of an allowed node; repeat; enables node auth."),
    ] = None,
    nodes: Annotated[int, _opt("Nodes to wait for before round 1 (0: the number of clients).")] = 0,
    min_clients: Annotated[int, _opt("Fewest valid updates that close a round.")] = 1,
    connect_timeout: Annotated[float, _opt("Seconds to wait for the nodes.")] = 600.0,
    round_timeout: Annotated[float, _opt("Seconds a round may take at most.")] = 3600.0,
    straggler_timeout: Annotated[
        float, _opt("Seconds to wait for the rest once min-clients answered.")
    ] = 300.0,
    outlier_factor: Annotated[
        float, _opt("Reject updates whose norm ratio exceeds this x the round median.")
    ] = 10.0,
    max_update_ratio: Annotated[
        float, _opt("Reject updates whose norm ratio ||w_new - w_sent|| / ||w_sent|| exceeds this (0: off).")
    ] = 20.0,
    teacher_runtime: Annotated[
        str, _opt("Teacher on the nodes: onnx (exported, torch-free) or torch.")
    ] = "onnx",
    dp_clip: Annotated[
        float, _opt("Client-level DP: clip norm of each update (0: off; GroupNorm only).")
    ] = 0.0,
    dp_noise: Annotated[float, _opt("Client-level DP: noise multiplier.")] = 0.0,
    dp_delta: Annotated[float, _opt("Client-level DP: delta of the reported (epsilon, delta).")] = 1e-5,
    resume: Annotated[bool, _opt("Continue the run in --out from its last finished round.")] = False,
) -> None:
    """Start the federation server (Flower SuperLink) and run SAM-Fed rounds."""
    from samfed.federation import processes as fp
    from samfed.federation.options import ServerOptions

    if teacher_runtime not in ("onnx", "torch"):
        raise SamfedError("--teacher-runtime must be onnx or torch.")
    tls = _server_tls(certs, insecure, node_key)
    if not 0 < port < 65536:
        raise SamfedError(f"--port {port} is not a TCP port (1-65535).")
    if not fp.port_free(host, port):
        raise SamfedError(f"Port {port} on {host} is in use (another samfed serve?); choose another --port.")
    out = out.expanduser().resolve()
    cfg, resume = _prepare_run_dir(out, resume, lambda: _new_config(config, data, clients, rounds), split)
    if dp_clip > 0:
        from samfed.federation.dp import require_dp_compatible

        require_dp_compatible(cfg.norm, cfg.aggregation_rule)

    fed = out / "federation"
    with fp.stopping_on_exit():
        server = fp.start_server(host, port, fed, tls, node_keys=node_key or [], gateway=True)
        home = server.home
        app_dir = fp.write_app_dir(fed / "app")
        opts = ServerOptions(
            run_dir=str(out), resume=resume, num_nodes=nodes, min_clients=min_clients,
            connect_timeout=connect_timeout, round_timeout=round_timeout, straggler_timeout=straggler_timeout,
            outlier_factor=outlier_factor, max_update_ratio=max_update_ratio, teacher_runtime=teacher_runtime,
            dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta,
        )  # fmt: skip
        status_file = fed / "status.json"
        status_file.unlink(missing_ok=True)
        run_id = fp.submit_run(app_dir, home, opts.to_run_config())
        scheme = "TLS" if tls else "insecure"
        _out.print(
            f"Fleet gateway for the sites on {server.fleet} ({scheme}); Flower run {run_id}; logs in {fed}"
        )
        _out.print(f"Flower control (flwr CLI) on {server.control} only: FLWR_HOME={home} flwr ls")
        _out.print(
            f"sites join with: samfed node --superlink <this-host>:{port} --data PATH --client-id K ..."
        )
        _watch(server, status_file, fed / "rounds.json", run_id, home, out)


def _server_tls(certs: Path | None, insecure: bool, node_key: list[Path] | None):
    """The server's TLS files from --certs (None with --insecure); SamfedError on a bad setup."""
    from samfed.federation.tls import TlsFiles, certificate_hosts

    tls = None
    if certs is not None:
        tls = TlsFiles(certs / "ca.pem", certs / "server.pem", certs / "server.key")
        missing = [p for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()]
        if missing:
            raise SamfedError(f"--certs {certs} lacks {', '.join(p.name for p in missing)}.")
        try:
            hosts = certificate_hosts(tls.server_cert)
        except ValueError:
            raise SamfedError(f"{tls.server_cert} is not a PEM certificate.") from None
        if "127.0.0.1" not in hosts:
            raise SamfedError(
                f"The server certificate {tls.server_cert} must also list 127.0.0.1 (the gateway, "
                "SuperExec and flwr reach the SuperLink on loopback); it lists: "
                f"{', '.join(sorted(hosts)) or 'no names'}."
            )
    elif not insecure:
        raise SamfedError("Pass --certs DIR for TLS, or --insecure for a trial on a trusted network.")
    if node_key and tls is None:
        raise SamfedError("Node authentication (--node-key) needs TLS (--certs).")
    for key in node_key or []:
        if not key.is_file():
            raise SamfedError(f"Node key {key} does not exist.")
    return tls


def _new_config(config: Path | None, data: Path | None, clients: int | None, rounds: int | None):
    """The RunConfig of a new run: --config (or the defaults) with the command-line overrides."""
    from samfed.config import RunConfig

    cfg = RunConfig.load(config) if config else RunConfig()
    cfg = cfg.override(
        data=str(data.expanduser().resolve()) if data else None, clients=clients, rounds=rounds
    )
    if cfg.data is None:
        raise SamfedError("Pass --data (the server's labeled images) or set data in --config.")
    return cfg


PENDING = Path("federation") / "start-pending.json"
# what a start that never finished round 0 may have left besides config.toml and split.json
UNSTARTED_LEFTOVERS = (
    "metrics.jsonl",
    "teacher",
    "teacher_onnx",
    "state",
    "federation/status.json",
    "federation/rounds.json",
)


def unstarted(out: Path) -> bool:
    """Whether `out` was prepared by `samfed serve` but its run never saved round 0 (nothing to keep)."""
    from samfed.train.run_dir import RunDir

    return (out / PENDING).is_file() and not RunDir(out).checkpoint.is_file()


def _clear_unstarted(out: Path, keep_config: bool) -> None:
    """Remove what a start that never finished round 0 wrote (config and split too unless kept)."""
    names = [*UNSTARTED_LEFTOVERS, *([] if keep_config else ["config.toml", "split.json"])]
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _prepare_run_dir(out: Path, resume: bool, new_config, split: Path | None):
    """(RunConfig, resume) for the run in `out`, after writing config.toml (and split.json) for a
    new run. A folder left by a start that never finished round 0 is accepted again: a rerun
    prepares it anew, `--resume` starts its saved configuration from the beginning."""
    from samfed.config import RunConfig
    from samfed.train.run_dir import RunDir, atomic_write_text

    run = RunDir(out)
    if resume:
        if not run.config.is_file():
            raise SamfedError(f"Nothing to resume: {run.config} does not exist.")
        cfg = RunConfig.load(run.config)
        if unstarted(out):
            _out.print("no round of this run finished yet: starting it from the beginning")
            _clear_unstarted(out, keep_config=True)
            return cfg, False
        if not run.checkpoint.is_file():
            raise SamfedError(
                f"Nothing to resume in {out}: no round finished ({run.checkpoint} does not exist)."
            )
        return cfg, True
    if run.config.is_file() and not unstarted(out):
        raise SamfedError(f"{out} already holds a run; pass --resume or choose another --out.")
    cfg = new_config()
    if split is not None and not split.is_file():
        raise SamfedError(f"Split file {split} does not exist.")
    if run.config.is_file():
        _out.print(f"{out} holds a start that never got going: preparing it anew")
        _clear_unstarted(out, keep_config=False)
    (out / PENDING).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / PENDING, json.dumps({"state": "started by samfed serve, round 0 not saved yet"}))
    cfg.save(run.config)
    if split is not None:
        shutil.copy(split, run.split)
    return cfg, False


def _watch(server, status_file: Path, rounds_file: Path, run_id: int, home: Path, out: Path) -> None:
    """Print round summaries until the ServerApp reports finished or failed."""
    from samfed.federation import processes as fp
    from samfed.train.run_dir import RunDir

    shown, last_check, checkpoint = 0, time.monotonic(), RunDir(out).checkpoint
    while True:
        fp.remember_started()
        if checkpoint.is_file():  # round 0 is saved: from now on the folder is a run to resume
            (out / PENDING).unlink(missing_ok=True)
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        if rounds_file.is_file():
            rounds = json.loads(rounds_file.read_text())
            for rec in rounds[shown:]:
                _out.print(_round_line(rec))
            shown = len(rounds)
        if status.get("state") == "finished":
            _out.print(f"[green]finished[/]: validation Dice {status.get('val_dice', float('nan')):.4f}")
            return
        if status.get("state") == "failed":
            raise SamfedError(f"The federation stopped: {status.get('error')}")
        if (gone := server.exited()) is not None:
            raise SamfedError(f"The {gone.name} exited; its log ends with:\n{gone.log_tail()}")
        if time.monotonic() - last_check > 30:
            last_check = time.monotonic()
            if fp.run_status(run_id, home).endswith(("failed", "stopped")):
                raise SamfedError(f"Flower run {run_id} ended early; see {server.superlink.log}.")
        time.sleep(2)


def _round_line(rec: dict) -> str:
    """One printed line for a rounds.json record."""
    missing = f"; missing {', '.join(rec['missing'])}" if rec["missing"] else ""
    rejected = f"; rejected {', '.join(str(x['name']) for x in rec['rejected'])}" if rec["rejected"] else ""
    took = f"{len(rec['answered'])} update(s) in {rec['round_wall_s']:.1f} s"
    return f"round {rec['round']}: {took}{missing}{rejected}"


def node(
    data: Annotated[Path, _opt("The clinic's private image folder (images never leave this machine).")],
    superlink: Annotated[str, _opt("Server address HOST:PORT.")],
    client_id: Annotated[int, _opt("This site's client number, agreed with the server (0..N-1).")],
    name: Annotated[str | None, _opt("Display name in the server's reports (default client-K).")] = None,
    split: Annotated[
        Path | None, _opt("Use only split.clients[client-id] of --data (trials sharing a folder).")
    ] = None,
    work_dir: Annotated[
        Path | None, _opt("Cache and report folder (default ~/.cache/samfed/node-K).")
    ] = None,
    threads: Annotated[int | None, _opt("Thread cap for training and the teacher.")] = None,
    memory_mb: Annotated[
        float | None, _opt("Training memory budget in MB (default: half the free memory).")
    ] = None,
    ca: Annotated[Path | None, _opt("CA certificate (PEM) that signed the server's TLS certificate.")] = None,
    insecure: Annotated[bool, _opt("Connect without TLS (trials on a trusted network only).")] = False,
    auth_key: Annotated[
        Path | None, _opt("This node's private key (OpenSSH ECDSA P-384), if the server checks nodes.")
    ] = None,
    teacher_backend: Annotated[
        str, _opt("Runtime of an exported teacher: onnxruntime or openvino.")
    ] = "onnxruntime",
    teacher_cache: Annotated[
        Path | None, _opt("Folder of teacher maps kept between runs (default: inside --work-dir).")
    ] = None,
    connect_timeout: Annotated[
        float, _opt("Seconds to wait for an unreachable server (at start and after a lost connection).")
    ] = 120.0,
) -> None:
    """Start one clinic node (Flower SuperNode) on its private image folder."""
    from edge.node import thread_env
    from samfed.data.readers import load_dataset
    from samfed.federation import processes as fp

    if ca is None and not insecure:
        raise SamfedError("Pass --ca CA.pem (TLS) or --insecure for a trial on a trusted network.")
    if not connect_timeout > 0:
        raise SamfedError(f"--connect-timeout must be a positive number of seconds, not {connect_timeout}.")
    server_host, server_port = fp.split_address(superlink)
    for p, what in ((ca, "CA certificate"), (auth_key, "node key"), (split, "split file")):
        if p is not None and not p.is_file():
            raise SamfedError(f"The {what} {p} does not exist.")
    data = data.expanduser().resolve()
    n = len(load_dataset(data).samples)  # fail here, not inside Flower, on a bad folder
    if split is not None:
        from samfed.data.partition import Split

        parts = Split.load(split).clients
        if not 0 <= client_id < len(parts):
            raise SamfedError(f"--client-id {client_id} is not a client of split {split}.")
        n = len(parts[client_id])
    work = (work_dir or Path.home() / ".cache" / "samfed" / f"node-{client_id}").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    node_config: dict[str, object] = {
        "data-path": str(data),
        "partition-id": client_id,
        "work-dir": str(work),
        "name": name or f"client-{client_id}",
        "teacher-backend": teacher_backend,
    }
    if split is not None:
        node_config["split"] = str(split.expanduser().resolve())
    if threads:
        node_config["threads"] = threads
    if memory_mb:
        node_config["memory-mb"] = memory_mb
    if teacher_cache is not None:
        node_config["teacher-cache"] = str(teacher_cache.expanduser().resolve())
    _wait_for_server(server_host, server_port, connect_timeout)
    report = work / "node-report.jsonl"
    shown = len(report.read_text().splitlines()) if report.is_file() else 0
    with fp.stopping_on_exit():
        cmd = fp.supernode_command(superlink, fp.free_port(), node_config, ca, auth_key)
        proc = fp.start_process(
            "SuperNode",
            cmd,
            work / "supernode.log",
            env={**fp.flwr_env(work / "flwr-home"), **thread_env(threads)},
        )
        _out.print(
            f"node {node_config['name']} (client {client_id}, {n} images) -> {superlink}; log {proc.log}"
        )
        rounds, server_gone = _follow_node(proc, report, shown, (server_host, server_port), connect_timeout)
    if not server_gone:
        raise SamfedError(f"The SuperNode exited; its log ends with:\n{proc.log_tail()}")
    if not rounds:
        raise SamfedError(
            f"Lost the server at {superlink} for {connect_timeout:.0f} s before any round; "
            f"the SuperNode's log ends with:\n{proc.log_tail(5)}"
        )
    _out.print(
        f"[green]done[/]: {len(rounds)} round(s) trained here (last: round {rounds[-1]['round']}); "
        f"the server at {superlink} has been unreachable for {connect_timeout:.0f} s, so the "
        f"federation has ended (or its server stopped); report {report}"
    )


def _wait_for_server(host: str, port: int, timeout: float) -> None:
    """Return once host:port accepts TCP connections; SamfedError after `timeout` seconds."""
    from samfed.federation import processes as fp

    end = time.monotonic() + timeout
    while not fp.port_open(host, port, timeout=min(5.0, timeout)):
        if time.monotonic() >= end:
            raise SamfedError(
                f"Cannot reach the server at {fp.join_address(host, port)} within {timeout:.0f} s; "
                "check the address and port, the firewall, and that `samfed serve` is running there."
            )
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))


def _follow_node(
    proc, report: Path, shown: int, server: tuple[str, int], timeout: float
) -> tuple[list, bool]:
    """Print each new round record of the node's report while the SuperNode runs and the server
    answers. Returns (the round records, True when the server was unreachable for `timeout`
    seconds: Flower's SuperNode would retry forever) once either ends."""
    from samfed.federation import processes as fp

    rounds: list[dict] = []
    lost_since, last_probe = None, 0.0
    while True:
        running = proc.alive()
        fp.remember_started()
        lines = report.read_text().splitlines() if report.is_file() else []
        for line in lines[shown:]:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                r = json.loads(line)
                peak = f"peak memory {r['peak_rss_mb']:.0f} MB"
                _out.print(f"round {r['round']}: {r['wall_s']:.1f} s, {peak}, batch {r['batch_size']}")
                rounds.append(r)
        shown = max(shown, len(lines))
        if not running:
            return rounds, False
        now = time.monotonic()
        if now - last_probe >= 5.0:
            last_probe = now
            if fp.port_open(*server, timeout=3.0):
                lost_since = None
            elif lost_since is None:
                lost_since = now
        if lost_since is not None and now - lost_since >= timeout:
            return rounds, True
        time.sleep(1)
