"""`samfed serve` and `samfed node`: SAM-Fed across sites on Flower."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from samfed.errors import SamfedError

_out = Console()


def _exit_on_sigterm() -> None:
    """SIGTERM (a service manager stopping us) unwinds like Ctrl-C, so finally blocks stop Flower."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


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
    host: Annotated[str, _opt("Address the SuperLink listens on (0.0.0.0: every interface).")] = "0.0.0.0",
    port: Annotated[int, _opt("SuperLink port (Fleet, Control and Runtime APIs).")] = 9092,
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
    from samfed.config import RunConfig
    from samfed.federation import processes as fp
    from samfed.federation.options import ServerOptions
    from samfed.federation.tls import TlsFiles

    if teacher_runtime not in ("onnx", "torch"):
        raise SamfedError("--teacher-runtime must be onnx or torch.")
    tls = None
    if certs is not None:
        tls = TlsFiles(certs / "ca.pem", certs / "server.pem", certs / "server.key")
        missing = [p for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()]
        if missing:
            raise SamfedError(f"--certs {certs} lacks {', '.join(p.name for p in missing)}.")
    elif not insecure:
        raise SamfedError("Pass --certs DIR for TLS, or --insecure for a trial on a trusted network.")
    if node_key and tls is None:
        raise SamfedError("Node authentication (--node-key) needs TLS (--certs).")
    for key in node_key or []:
        if not key.is_file():
            raise SamfedError(f"Node key {key} does not exist.")

    out = out.expanduser().resolve()
    cfg_path = out / "config.toml"
    if resume:
        if not cfg_path.is_file():
            raise SamfedError(f"Nothing to resume: {cfg_path} does not exist.")
        cfg = RunConfig.load(cfg_path)
    else:
        if cfg_path.is_file():
            raise SamfedError(f"{out} already holds a run; pass --resume or choose another --out.")
        cfg = RunConfig.load(config) if config else RunConfig()
        cfg = cfg.override(
            data=str(data.expanduser().resolve()) if data else None, clients=clients, rounds=rounds
        )
        if cfg.data is None:
            raise SamfedError("Pass --data (the server's labeled images) or set data in --config.")
        if split is not None and not split.is_file():
            raise SamfedError(f"Split file {split} does not exist.")
    if dp_clip > 0:
        from samfed.federation.dp import require_dp_compatible

        require_dp_compatible(cfg.norm, cfg.aggregation_rule)
    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(cfg_path)
        if split is not None:
            shutil.copy(split, out / "split.json")

    fed = out / "federation"
    local = "127.0.0.1"
    _exit_on_sigterm()
    superlink = fp.start_process(
        "SuperLink",
        fp.superlink_command(host, port, tls, node_auth=bool(node_key)),
        fed / "superlink.log",
        env=fp.flwr_env(fed / "superlink-home"),
    )
    try:
        fp.wait_for_port(superlink, local if host in ("0.0.0.0", "::") else host, port)
        home = fp.write_flwr_home(fed / "flwr-home", f"{local}:{port}", tls.ca_cert if tls else None)
        for key in node_key or []:
            fp.register_node(key, home, name=key.stem)
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
        _out.print(f"SuperLink on {host}:{port} ({scheme}); Flower run {run_id}; log {fed / 'superlink.log'}")
        _out.print(
            f"sites join with: samfed node --superlink <this-host>:{port} --data PATH --client-id K ..."
        )
        _watch(superlink, status_file, fed / "rounds.json", run_id, home)
    finally:
        superlink.stop()


def _watch(superlink, status_file: Path, rounds_file: Path, run_id: int, home: Path) -> None:
    """Print round summaries until the ServerApp reports finished or failed."""
    from samfed.federation import processes as fp

    shown, last_check = 0, time.monotonic()
    while True:
        superlink.remember_children()
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        if rounds_file.is_file():
            rounds = json.loads(rounds_file.read_text())
            for rec in rounds[shown:]:
                missing = f"; missing {', '.join(rec['missing'])}" if rec["missing"] else ""
                rejected = (
                    f"; rejected {', '.join(str(x['name']) for x in rec['rejected'])}"
                    if rec["rejected"]
                    else ""
                )
                took = f"{len(rec['answered'])} update(s) in {rec['round_wall_s']:.1f} s"
                _out.print(f"round {rec['round']}: {took}{missing}{rejected}")
            shown = len(rounds)
        if status.get("state") == "finished":
            _out.print(f"[green]finished[/]: validation Dice {status.get('val_dice', float('nan')):.4f}")
            return
        if status.get("state") == "failed":
            raise SamfedError(f"The federation stopped: {status.get('error')}")
        if not superlink.alive():
            raise SamfedError(f"The SuperLink exited; its log ends with:\n{superlink.log_tail()}")
        if time.monotonic() - last_check > 30:
            last_check = time.monotonic()
            if fp.run_status(run_id, home).endswith(("failed", "stopped")):
                raise SamfedError(f"Flower run {run_id} ended early; see {superlink.log}.")
        time.sleep(2)


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
) -> None:
    """Start one clinic node (Flower SuperNode) on its private image folder."""
    from edge.node import thread_env
    from samfed.data.readers import load_dataset
    from samfed.federation import processes as fp

    if ca is None and not insecure:
        raise SamfedError("Pass --ca CA.pem (TLS) or --insecure for a trial on a trusted network.")
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
    _exit_on_sigterm()
    cmd = fp.supernode_command(superlink, fp.free_port(), node_config, ca, auth_key)
    proc = fp.start_process(
        "SuperNode",
        cmd,
        work / "supernode.log",
        env={**fp.flwr_env(work / "flwr-home"), **thread_env(threads)},
    )
    _out.print(f"node {node_config['name']} (client {client_id}, {n} images) -> {superlink}; log {proc.log}")
    report = work / "node-report.jsonl"
    shown = len(report.read_text().splitlines()) if report.is_file() else 0
    try:
        while proc.alive():
            proc.remember_children()
            if report.is_file():
                lines = report.read_text().splitlines()
                for line in lines[shown:]:
                    r = json.loads(line)
                    peak = f"peak memory {r['peak_rss_mb']:.0f} MB"
                    _out.print(f"round {r['round']}: {r['wall_s']:.1f} s, {peak}, batch {r['batch_size']}")
                shown = len(lines)
            time.sleep(2)
        raise SamfedError(f"The SuperNode exited; its log ends with:\n{proc.log_tail()}")
    finally:
        proc.stop()
