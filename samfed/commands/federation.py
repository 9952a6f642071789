"""`samfed serve` and `samfed node`: SAM-Fed across sites on Flower."""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from samfed.commands.renamed import Renamed
from samfed.errors import SamfedError
from samfed.federation import site_config as sc
from samfed.fileio import read_json_or_empty

_out = Console()


def _opt(help: str, **kw):
    return typer.Option(help=help, **kw)


_S = sc.helps(sc.SERVER)
_N = sc.helps(sc.NODE)
SERVE_RENAMED = Renamed(flags=sc.renamed_flags(sc.SERVER))
NODE_RENAMED = Renamed(flags=sc.renamed_flags(sc.NODE))


def serve(
    config: Annotated[
        Path | None,
        _opt(
            "Server file (TOML, see docs/server.example.toml): every setting below, by its name with "
            "underscores, plus the method settings; flags override it. A file of method settings "
            "only is still read as --method-config (deprecated)."
        ),
    ] = None,
    out: Annotated[Path | None, _opt(_S["out"])] = None,
    data: Annotated[Path | None, _opt(_S["data"])] = None,
    method_config: Annotated[Path | None, _opt(_S["method_config"])] = None,
    split: Annotated[Path | None, _opt(_S["split"])] = None,
    clients: Annotated[int | None, _opt(_S["clients"])] = None,
    rounds: Annotated[int | None, _opt(_S["rounds"])] = None,
    host: Annotated[str | None, _opt(_S["host"])] = None,
    port: Annotated[int | None, _opt(_S["port"])] = None,
    tls_certs: Annotated[Path | None, _opt(_S["tls_certs"])] = None,
    insecure: Annotated[bool | None, typer.Option("--insecure/--no-insecure", help=_S["insecure"])] = None,
    node_keys: Annotated[list[Path] | None, typer.Option("--node-key", help=_S["node_keys"])] = None,
    nodes: Annotated[int | None, _opt(_S["nodes"])] = None,
    min_clients: Annotated[int | None, _opt(_S["min_clients"])] = None,
    connect_timeout: Annotated[float | None, _opt(_S["connect_timeout"])] = None,
    round_timeout: Annotated[float | None, _opt(_S["round_timeout"])] = None,
    straggler_timeout: Annotated[float | None, _opt(_S["straggler_timeout"])] = None,
    outlier_factor: Annotated[float | None, _opt(_S["outlier_factor"])] = None,
    max_update_ratio: Annotated[float | None, _opt(_S["max_update_ratio"])] = None,
    teacher_format: Annotated[str | None, _opt(_S["teacher_format"])] = None,
    dp_clip: Annotated[float | None, _opt(_S["dp_clip"])] = None,
    dp_noise: Annotated[float | None, _opt(_S["dp_noise"])] = None,
    dp_delta: Annotated[float | None, _opt(_S["dp_delta"])] = None,
    auto_resume: Annotated[
        bool | None, typer.Option("--auto-resume/--no-auto-resume", help=_S["auto_resume"])
    ] = None,
    resume: Annotated[bool, _opt("Continue the run in --out from its last finished round.")] = False,
) -> None:
    """Start the federation server (Flower SuperLink) and run SAM-Fed rounds."""
    flags = {k: v for k, v in locals().items() if k in sc.SERVER}
    from samfed.federation import processes as fp
    from samfed.federation.options import ServerOptions
    from samfed.train.run_dir import RunDir

    file = sc.load_server_file(config) if config else None
    if file is not None and file.legacy:  # the old meaning of --config: method settings only
        if method_config is not None:
            raise SamfedError(
                f"{config} holds method settings only and --method-config is given too; pass one."
            )
        flags["method_config"] = file.path
    s = sc.resolve(sc.SERVER, flags, file)
    tls = _server_tls(s.tls_certs, s.insecure, s.node_keys)
    node_key = _node_keys(s.node_keys, s.tls_certs)
    if not fp.port_free(s.host, s.port):
        raise SamfedError(
            f"Port {s.port} on {s.host} is in use (another samfed serve?); choose another --port."
        )
    out = s.out.expanduser().resolve()
    if s.auto_resume and _finished(out):
        _out.print(
            f"the run in {out} has finished; nothing to do (a new run needs another --out)", soft_wrap=True
        )
        return
    resume = resume or (s.auto_resume and RunDir(out).config.is_file())
    cfg, resume = _prepare_run_dir(out, resume, lambda: _new_config(s, file), s.split)
    if s.dp_clip > 0:
        from samfed.federation.dp import require_dp_compatible

        require_dp_compatible(cfg.norm, cfg.aggregation_rule)

    fed = out / "federation"
    with fp.stopping_on_exit():
        server = fp.start_server(s.host, s.port, fed, tls, node_keys=node_key, gateway=True)
        home = server.home
        app_dir = fp.write_app_dir(fed / "app")
        rounds_opts = {field: s.values[name] for name, field in sc.ROUND_SETTINGS.items()}
        opts = ServerOptions(run_dir=str(out), resume=resume, **rounds_opts)
        status_file = fed / "status.json"
        status_file.unlink(missing_ok=True)
        run_id = fp.submit_run(app_dir, home, opts.to_run_config())
        scheme = "TLS" if tls else "insecure"
        auth = f", node authentication for {len(node_key)} key(s)" if node_key else ""
        _out.print(
            f"Fleet gateway for the sites on {server.fleet} ({scheme}{auth}); "
            f"Flower run {run_id}; logs in {fed}"
        )
        _out.print(f"Flower control (flwr CLI) on {server.control} only: FLWR_HOME={home} flwr ls")
        _out.print(
            f"sites join with: samfed node --superlink <this-host>:{s.port} --data PATH --client-id K ..."
        )
        _watch(server, status_file, fed / "rounds.json", run_id, home, out)


def _finished(out: Path) -> bool:
    """Whether the run in `out` reported finished (its federation/status.json; unreadable: no)."""
    status = out / "federation" / "status.json"
    try:
        return json.loads(status.read_text()).get("state") == "finished"
    except (OSError, ValueError, AttributeError):
        return False


def _node_keys(paths: list[Path] | None, certs: Path | None) -> list[Path]:
    """The node public keys `serve` registers (folders expanded, each key checked); a warning when
    the certificate folder holds node keys but node authentication is off."""
    from samfed.federation.tls import NODES_FOLDER, node_public_keys

    if paths:
        return node_public_keys(paths)
    pending = sorted((certs / NODES_FOLDER).glob("*.pub")) if certs is not None else []
    if pending:
        warnings.warn(
            f"{certs / NODES_FOLDER} holds {len(pending)} node key(s) but node authentication is off; "
            f"pass --node-key {certs / NODES_FOLDER} (or node_keys in the server file) to check the nodes.",
            sc.ConfigWarning,
            stacklevel=2,
        )
    return []


def _server_tls(certs: Path | None, insecure: bool, node_key: list[Path] | None):
    """The server's TLS files from --tls-certs (None with --insecure); SamfedError on a bad setup,
    a warning when a certificate expires within a month."""
    from samfed.federation.tls import NEW_CA_HINT, TlsFiles, certificate_hosts, warn_if_expiring

    tls = None
    if certs is not None:
        tls = TlsFiles.in_folder(certs)
        missing = [p for p in (tls.ca_cert, tls.server_cert, tls.server_key) if not p.is_file()]
        if missing:
            raise SamfedError(f"--tls-certs {certs} lacks {', '.join(p.name for p in missing)}.")
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
        warn_if_expiring(tls.ca_cert, f"CA certificate {tls.ca_cert}", hint=NEW_CA_HINT)
        warn_if_expiring(tls.server_cert, f"server certificate {tls.server_cert}")
    elif not insecure:
        raise SamfedError("Pass --tls-certs DIR for TLS, or --insecure for a trial on a trusted network.")
    if node_key and tls is None:
        raise SamfedError("Node authentication (--node-key) needs TLS (--tls-certs).")
    return tls


def _new_config(s: sc.Resolved, file: sc.SettingsFile | None):
    """The RunConfig of a new run: the method settings (--method-config, flag or file, else the
    server file's [method], else the defaults) with data, clients and rounds applied."""
    from samfed.config import CLI, RunConfig

    if s.method_config is not None:
        cfg = RunConfig.load(s.method_config)
    else:
        cfg = file.method if file is not None and file.method is not None else RunConfig()
    for name in ("data", "clients", "rounds"):
        value = s.values[name]
        if value is not None:
            value = str(value.expanduser().resolve()) if name == "data" else value
            source = CLI if s.origin[name].startswith("--") else str(file.path if file else CLI)
            cfg = cfg.override(source=source, **{name: value})
    if cfg.data is None:
        raise SamfedError("Pass --data (the server's labeled images) or set data in the server file.")
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
    from samfed.fileio import atomic_write_text
    from samfed.train.run_dir import RunDir

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
    """Print a line per finished round, with a live table of the sites on a terminal, until the
    ServerApp reports finished or failed."""
    from rich.live import Live

    live = Live(console=_out, auto_refresh=False, transient=True) if _out.is_terminal else None
    if live is None:
        _follow(server, status_file, rounds_file, run_id, home, out, lambda _s: None)
        return
    with live:
        _follow(
            server,
            status_file,
            rounds_file,
            run_id,
            home,
            out,
            lambda st: live.update(_sites_table(st), refresh=True),
        )


def _follow(server, status_file: Path, rounds_file: Path, run_id: int, home: Path, out: Path, show) -> None:
    """The watch loop: round lines from rounds.json, `show(status)` of status.json every poll."""
    from samfed.federation import processes as fp
    from samfed.train.run_dir import RunDir

    shown, last_check, checkpoint = 0, time.monotonic(), RunDir(out).checkpoint
    while True:
        fp.remember_started()
        if checkpoint.is_file():  # round 0 is saved: from now on the folder is a run to resume
            (out / PENDING).unlink(missing_ok=True)
        status = read_json_or_empty(status_file)
        if rounds_file.is_file():
            rounds = read_json_or_empty(rounds_file) or []
            for rec in rounds[shown:]:
                _out.print(_round_line(rec))
            shown = max(shown, len(rounds))
        show(status)
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


def _sites_table(status: dict):
    """The live table of `samfed serve`: the round in progress and every site's state in it."""
    from rich.table import Table

    title = f"{status.get('state', 'starting')}" + (f", round {status['round']}" if "round" in status else "")
    table = Table(title=title)
    table.add_column("site")
    table.add_column("state")
    colours = {"training": "yellow", "done": "green", "failed": "red", "missing": "red"}
    for name, state in sorted((status.get("nodes") or {}).items()):
        table.add_row(str(name), f"[{colours.get(state, 'white')}]{state}[/]")
    return table


def _round_line(rec: dict) -> str:
    """One printed line for a rounds.json record."""
    missing = f"; missing {', '.join(rec['missing'])}" if rec["missing"] else ""
    rejected = f"; rejected {', '.join(str(x['name']) for x in rec['rejected'])}" if rec["rejected"] else ""
    took = f"{len(rec['answered'])} update(s) in {rec['round_wall_s']:.1f} s"
    dice = f", global val Dice {rec['val_dice']:.3f}" if isinstance(rec.get("val_dice"), float) else ""
    return f"round {rec['round']}: {took}{dice}{missing}{rejected}"


def node(
    config: Annotated[
        Path | None,
        _opt(
            "Node file (TOML, see docs/node.example.toml): every setting below, by its name with "
            "underscores; flags override it."
        ),
    ] = None,
    data: Annotated[Path | None, _opt(_N["data"])] = None,
    superlink: Annotated[str | None, _opt(_N["superlink"])] = None,
    client_id: Annotated[int | None, _opt(_N["client_id"])] = None,
    name: Annotated[str | None, _opt(_N["name"])] = None,
    split: Annotated[Path | None, _opt(_N["split"])] = None,
    work_dir: Annotated[Path | None, _opt(_N["work_dir"])] = None,
    threads: Annotated[int | None, _opt(_N["threads"])] = None,
    memory_mb: Annotated[float | None, _opt(_N["memory_mb"])] = None,
    tls_ca: Annotated[Path | None, _opt(_N["tls_ca"])] = None,
    insecure: Annotated[bool | None, typer.Option("--insecure/--no-insecure", help=_N["insecure"])] = None,
    auth_key: Annotated[Path | None, _opt(_N["auth_key"])] = None,
    teacher_variant: Annotated[str | None, _opt(_N["teacher_variant"])] = None,
    teacher_cache: Annotated[Path | None, _opt(_N["teacher_cache"])] = None,
    connect_timeout: Annotated[float | None, _opt(_N["connect_timeout"])] = None,
) -> None:
    """Start one clinic node (Flower SuperNode) on its private image folder."""
    flags = {k: v for k, v in locals().items() if k in sc.NODE}
    from edge.node import thread_env
    from samfed.data.readers import load_dataset
    from samfed.federation import processes as fp
    from samfed.federation import tls as T

    s = sc.resolve(sc.NODE, flags, sc.load_node_file(config) if config else None)
    data, superlink, client_id, split = s.data, s.superlink, s.client_id, s.split
    ca, auth_key, threads, memory_mb, connect_timeout = (
        s.tls_ca,
        s.auth_key,
        s.threads,
        s.memory_mb,
        s.connect_timeout,
    )
    if ca is None and not s.insecure:
        raise SamfedError("Pass --tls-ca CA.pem (TLS) or --insecure for a trial on a trusted network.")
    server_host, server_port = fp.split_address(superlink)
    if ca is not None:
        T.warn_if_expiring(ca, f"CA certificate {ca}", hint=T.NODE_CA_HINT)
    if auth_key is not None:
        _check_private_key(auth_key)
    data = data.expanduser().resolve()
    n = len(load_dataset(data).samples)  # fail here, not inside Flower, on a bad folder
    if split is not None:
        from samfed.data.partition import Split

        parts = Split.load(split).clients
        if not 0 <= client_id < len(parts):
            raise SamfedError(f"--client-id {client_id} is not a client of split {split}.")
        n = len(parts[client_id])
    work = (s.work_dir or Path.home() / ".cache" / "samfed" / f"node-{client_id}").expanduser().resolve()
    work.mkdir(parents=True, exist_ok=True)
    node_config: dict[str, object] = {
        "data-path": str(data),
        "partition-id": client_id,
        "work-dir": str(work),
        "name": s.name or f"client-{client_id}",
        "teacher-backend": s.teacher_variant,  # client_app's key
    }
    if split is not None:
        node_config["split"] = str(split.expanduser().resolve())
    if threads:
        node_config["threads"] = threads
    if memory_mb:
        node_config["memory-mb"] = memory_mb
    if s.teacher_cache is not None:
        node_config["teacher-cache"] = str(s.teacher_cache.expanduser().resolve())
    _wait_for_server(server_host, server_port, connect_timeout)
    if ca is not None:
        _check_server_certificate(server_host, server_port)
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


def _check_private_key(path: Path) -> None:
    """SamfedError unless `path` is a node private key; a warning when others may read it."""
    import os

    from samfed.federation.tls import CertificateWarning, check_node_private_key

    check_node_private_key(path)
    if os.name == "posix" and path.stat().st_mode & 0o077:
        warnings.warn(
            f"the node key {path} may be read by other users of this machine; chmod 600 {path}.",
            CertificateWarning,
            stacklevel=2,
        )


def _check_server_certificate(host: str, port: int) -> None:
    """Refuse an expired server certificate (warn a month ahead) before the SuperNode dials it;
    a server that does not answer TLS is left to the SuperNode's own error."""
    import ssl

    from cryptography import x509

    from samfed.federation import processes as fp
    from samfed.federation.tls import NODE_SERVER_HINT, warn_if_expiring

    try:
        pem = ssl.get_server_certificate((host, port), timeout=10)
    except (OSError, ssl.SSLError, ValueError):
        return
    cert = x509.load_pem_x509_certificate(pem.encode())
    warn_if_expiring(
        cert, f"certificate of the server at {fp.join_address(host, port)}", hint=NODE_SERVER_HINT
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
