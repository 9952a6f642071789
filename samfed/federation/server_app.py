"""The server side of a SAM-Fed federation: a Flower ServerApp that drives the Grid itself.

It runs the engine of the in-process runner (`samfed.engine.Engine`: set-up, rounds,
aggregation, resume state, outputs) on a run directory of the same format (so `samfed evaluate` /
`samfed export` work on it); `FederatedRun` is the engine's `ClientStep` that, per round,

1. new nodes say hello (client number, name, sample count) and get what they lack once: D_p and
   the teacher (exported ONNX folder by default, or the saved torch teacher);
2. every known online client gets a train message (global weights; heterogeneous students also
   get their own last weights back, so nodes hold no state between rounds);
3. replies are collected until all answered, or `straggler_timeout` after `min_clients` answered,
   or `round_timeout`; Flower reports a node that stops sending heartbeats as unavailable;
4. each reply is checked (only weights + scalars, the model's keys and shapes, finite values,
   update norm vs the round median or, below 3 updates, the previous round's, and an absolute
   bound; a sample count within what the node announced); bad ones are rejected and logged;
5. with >= `min_clients` valid updates the round closes with them (sorted by client number, as
   in-process); the engine aggregates them, validates the global model and writes the resume
   state; the round record names who answered, who was missing and why.

Nodes get the method's settings only (`RunConfig.method_settings`): the server's paths, threads
and device stay on the server.

Replies' structure (record names, array keys and shapes, value types) is logged to
`federation/messages.jsonl`; per-round federation facts to metrics.jsonl and `federation/`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from rich.markup import escape

from samfed.engine.engine import ClientStep, ClientUpdate, Engine, RoundUpdates
from samfed.errors import SamfedError
from samfed.federation import protocol as P
from samfed.federation.options import ServerOptions
from samfed.method.precision import BF16_EMULATED
from samfed.train.run_dir import atomic_write_text

app = ServerApp()

ERROR_NAMES = {
    0: "unknown error",
    1: "the node could not load the samfed ClientApp",
    2: "the node's ClientApp raised an exception",
    3: "the message expired before the node fetched it",
    4: "the reply expired",
    5: "node unavailable (no heartbeat)",
    6: "a node module refused the message",
    7: "invalid app bundle",
    8: "the node's ClientApp crashed",
}


@dataclass
class Client:
    """A known site: client number k, display name, Flower node id, sample count."""

    k: int
    name: str
    node_id: int
    num_samples: int
    ready: bool = False  # holds D_p and the teacher


@dataclass
class RoundOutcome:
    answered: list[int] = field(default_factory=list)
    missing: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)  # accepted updates' norm ratios by client


def folder_files(folder: Path) -> dict[str, bytes]:
    """Top-level files of a folder (teacher folders are flat) by name."""
    return {
        p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")
    }


class FederatedRun(ClientStep):
    """One Flower run of SAM-Fed over `grid`, writing into `opts.run_dir`: the engine's client step."""

    def __init__(self, grid: Grid, opts: ServerOptions, say=print):
        from samfed.train.run_dir import RunDir

        if not opts.run_dir:
            raise SamfedError("The server needs run-dir (the run directory holding config.toml).")
        self.grid, self.opts, self.say = grid, opts, say
        self.run = RunDir(opts.run_dir)
        self.fed_dir = self.run.root / "federation"
        self.fed_dir.mkdir(parents=True, exist_ok=True)
        self.clients_by_k: dict[int, Client] = {}
        self.prompt: str | None = None
        self.refused: set[int] = set()  # nodes refused for good (bad partition-id or reply)
        self.history: list[dict] = []
        self.nodes: dict[str, str] = {}  # site name -> its state in the current round
        self.teacher_spec: dict[str, Any] = {}
        self.teacher_files: dict[str, bytes] = {}
        self.bf16_warned: set[str] = set()  # sites already told that they emulate bf16

    # -- status ----------------------------------------------------------------------------------
    def status(self, state: str, **extra: Any) -> None:
        rec = {"state": state, "time": time.time(), **extra}
        atomic_write_text(self.fed_dir / "status.json", json.dumps(rec, indent=1))

    def node_state(self, node_id: int, state: str, message_type: str, rnd: int) -> None:
        """Record a site's state in this round (training | done | failed | missing) in status.json."""
        client = self._client_of(node_id)
        if message_type != "train" or client is None:
            return
        self.nodes[client.name] = state
        self.status("running", round=rnd, nodes=self.nodes)

    def log_message(
        self,
        kind: str,
        rnd: int,
        client: Client | None,
        node_id: int,
        content: RecordDict | None,
        error: str = "",
    ) -> None:
        rec = {"kind": kind, "round": rnd, "client": None if client is None else client.k, "node_id": node_id}
        rec.update({"content": P.describe(content)} if content is not None else {"error": error})
        with open(self.fed_dir / "messages.jsonl", "a") as fh:
            fh.write(json.dumps(rec) + "\n")

    # -- main ------------------------------------------------------------------------------------
    def main(self) -> None:
        try:
            self.status("starting")
            self._main()
        except BaseException as exc:
            self.status("failed", error=str(exc) or type(exc).__name__)
            raise

    def _main(self) -> None:
        import torch

        from samfed.engine.checks import check_resume, run_threads
        from samfed.engine.reporter import Reporter

        t_start = time.perf_counter()
        opts, run = self.opts, self.run
        self.cfg = cfg = self.run_config()
        state = None
        if opts.resume:
            state = run.load_state()
            check_resume(cfg, run, int(state["round"]))
        elif run.checkpoint.is_file():
            raise SamfedError(
                f"{run.root} already holds a started run; resume it or choose another run directory."
            )
        if not run.start_config.is_file():  # the settings a later resume must keep
            atomic_write_text(run.start_config, cfg.to_toml())
        torch.set_num_threads(run_threads(cfg, state))
        dataset, split = server_data(cfg, run, self.say)
        sets = server_sets(dataset, split, cfg)
        self.public = {"images": sets.labeled.images, "masks": sets.labeled.masks.astype(np.uint8)}
        self.public_hash = P.public_digest(self.public)
        self.engine = Engine(cfg, run, dataset, split, sets, self, Reporter(self.say), cfg.clients, state)
        summary = self.engine.run_all(t_start)
        self.status("finished", round=cfg.rounds, val_dice=summary["val_dice"], nodes=self.nodes)
        self.say(f"done: global validation Dice {summary['val_dice']:.4f}; run directory {run.root}")

    def run_config(self):
        """The run directory's RunConfig with the server's DP options applied, checked: federated
        method, settings valid on this machine (written back when the DP options changed it)."""
        from samfed.config import RunConfig
        from samfed.engine.checks import validate_config
        from samfed.method.methods import method_spec

        cfg = RunConfig.load(self.run.config)
        o = self.opts
        if o.dp_clip > 0 and cfg.dp_clip == 0:  # DP asked for on the command line (`serve --dp-clip`)
            cfg = cfg.override(
                source="server options", dp_clip=o.dp_clip, dp_noise=o.dp_noise, dp_delta=o.dp_delta
            )
            atomic_write_text(self.run.config, cfg.to_toml())
        validate_config(cfg)
        if method_spec(cfg.method).kind != "federated":
            raise SamfedError(f"Method {cfg.method} is not federated; run it with `samfed train`.")
        return cfg

    # -- engine hooks ----------------------------------------------------------------------------
    def on_teacher(self, engine: Engine, teacher) -> None:
        """What nodes get of the teacher: the exported ONNX folder (made once) or the torch folder."""
        self.prompt = teacher.prompt
        if self.opts.teacher_runtime == "torch":
            folder, kind = self.run.teacher, "torch"
        elif self.opts.teacher_runtime == "onnx":
            folder, kind = self.run.root / "teacher_onnx", "onnx"
            if not (folder / "teacher_onnx.json").is_file():
                from samfed.teacher.export import export_teacher

                self.say("exporting the teacher to ONNX for the nodes")
                export_teacher(teacher, folder)
        else:
            raise SamfedError(f"Unknown teacher runtime {self.opts.teacher_runtime!r}; choose onnx or torch.")
        self.teacher_files = folder_files(folder)
        self.teacher_spec = {"teacher-kind": kind, "teacher-ref": P.files_digest(self.teacher_files)}

    def before_rounds(self, engine: Engine) -> None:
        self.history = [h for h in self._read_history() if h["round"] <= engine.start_round]
        self.wait_for_nodes()

    def after_round(self, engine: Engine, r: int) -> None:
        """rounds.json gains the round's validation Dice (from its metrics record)."""
        rec = next((x for x in reversed(engine.run.read_metrics()) if x.get("event") == "round"), {})
        if self.history and rec.get("round") == r:
            self.history[-1]["val_dice"] = rec.get("val_dice")
        self._write_history()

    def mean_client(self, engine: Engine) -> int:
        from samfed.train.compare import mean_client_size

        return mean_client_size([c.num_samples for c in self.clients_by_k.values()])

    # -- nodes -----------------------------------------------------------------------------------
    def online_node_ids(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def wait_for_nodes(self) -> None:
        """Wait for num_nodes (default cfg.clients) sites, at least min_clients, up to connect_timeout."""
        want = self.opts.num_nodes or self.cfg.clients
        end = time.monotonic() + self.opts.connect_timeout
        self.status("waiting for nodes", want=want)
        self.say(f"waiting for {want} node(s)")
        while True:
            self.refresh_clients()
            ready = [c for c in self.clients_by_k.values() if c.ready]
            if len(ready) >= want:
                return
            if time.monotonic() > end:
                if len(ready) >= self.opts.min_clients:
                    self.say(
                        f"going on with {len(ready)} of {want} nodes after {self.opts.connect_timeout:.0f} s"
                    )
                    return
                raise SamfedError(
                    f"Only {len(ready)} node(s) joined within {self.opts.connect_timeout:.0f} s; "
                    f"at least {self.opts.min_clients} are needed."
                )
            time.sleep(max(self.opts.poll_interval, 1.0))

    def refresh_clients(self) -> None:
        """Say hello to nodes not known yet and set them up (D_p, teacher) when they lack them."""
        online = self.online_node_ids()
        known = {c.node_id for c in self.clients_by_k.values()}
        new = sorted(online - known - self.refused)
        if not new:
            return
        cfg = {
            "protocol": P.PROTOCOL_VERSION,
            "public-hash": self.public_hash,
            "teacher-hash": self.teacher_spec.get("teacher-ref", ""),
        }
        replies, failures = self.exchange(
            "query.hello", {n: RecordDict({P.CONFIG: ConfigRecord(cfg)}) for n in new}, 0, 120.0
        )
        for node_id, reason in failures.items():
            if not reason.startswith("no reply"):  # its ClientApp failed (bad data folder, ...)
                self.refused.add(node_id)
            self.say(f"[yellow]node {node_id} did not answer hello[/]: {escape(reason)}")
        needs_setup: list[Client] = []
        for node_id, msg in replies.items():
            client = self.admit(node_id, msg)
            if client is None:
                continue
            info = msg.content[P.INFO]
            if bool(info.get("has-public")) and bool(info.get("has-teacher")):
                client.ready = True
            else:
                needs_setup.append(client)
        if needs_setup:
            self.say(f"sending D_p and the teacher to {', '.join(c.name for c in needs_setup)}")
            self.setup(needs_setup)

    def admit(self, node_id: int, msg: Message) -> Client | None:
        """The hello reply's site as a known Client, or None (refused, logged) when the reply or its
        identity is malformed (`protocol.read_hello`) or its partition-id is taken."""
        reason, ident = P.check_reply(msg.content, None), None
        if reason is None:
            try:
                ident = P.read_hello(msg.content.get(P.INFO) or {}, self.cfg.clients)
            except ValueError as exc:
                reason = str(exc)
        if ident is not None and ident.k in self.clients_by_k:
            taken = self.clients_by_k[ident.k].node_id
            if taken in self.online_node_ids():
                reason = f"partition-id {ident.k} is already taken by node {taken}"
        if reason is not None or ident is None:
            if "already taken" not in reason:  # a duplicate may be a restarted site: ask again later
                self.refused.add(node_id)
            self.say(f"[yellow]node {node_id} refused[/]: {escape(reason)}")
            self.log_message("hello-refused", 0, None, node_id, None, reason)
            return None
        k = ident.k
        client = Client(k, ident.name, node_id, ident.num_samples)
        self.clients_by_k[k] = client
        self.say(f"node {node_id} is client {k} ({client.name}, {client.num_samples} images)")
        return client

    def setup(self, clients: list[Client]) -> None:
        from flwr.app import ConfigRecord as CR

        cfg = {
            "public-hash": self.public_hash,
            "public-ids": list(self.engine.sets.labeled.ids),
            "teacher-hash": self.teacher_spec.get("teacher-ref", ""),
        }
        content = {}
        for c in clients:
            rd = RecordDict({P.CONFIG: CR(cfg), P.PUBLIC: P.arrays_record(self.public)})
            if self.teacher_files:
                rd[P.FILES] = CR(dict(self.teacher_files))
            content[c.node_id] = rd
        replies, failures = self.exchange("query.setup", content, 0, 600.0)
        for c in clients:
            if c.node_id in replies:
                c.ready = True
            else:
                reason = escape(str(failures.get(c.node_id)))
                self.say(f"[yellow]setup of client {c.k} ({c.name}) failed[/]: {reason}")

    # -- messaging -------------------------------------------------------------------------------
    def exchange(
        self,
        message_type: str,
        contents: dict[int, RecordDict],
        rnd: int,
        timeout: float,
        quorum: int | None = None,
    ) -> tuple[dict[int, Message], dict[int, str]]:
        """Send one message per node; collect replies -> ({node: reply}, {node: failure reason}).

        Stops when all answered, at `timeout`, or `straggler_timeout` after `quorum` replies."""
        node_ids = list(contents)
        msgs = [
            Message(
                contents[n],
                dst_node_id=n,
                message_type=message_type,
                ttl=max(timeout, 60.0),
                group_id=str(rnd),
            )
            for n in node_ids
        ]
        ids = list(self.grid.push_messages(msgs))
        pending = {mid: n for mid, n in zip(ids, node_ids, strict=True) if mid}
        failures = {
            n: "the SuperLink refused the message" for mid, n in zip(ids, node_ids, strict=True) if not mid
        }
        replies: dict[int, Message] = {}
        start = time.monotonic()
        quorum_at = None
        while pending:
            for m in self.grid.pull_messages(list(pending)):
                n = pending.pop(m.metadata.reply_to_message_id, None)
                if n is None:
                    continue
                if m.has_error():
                    failures[n] = f"{ERROR_NAMES.get(m.error.code, 'error')}: {m.error.reason[:300]}"
                    self.log_message(message_type, rnd, self._client_of(n), n, None, failures[n])
                    self.node_state(n, "failed", message_type, rnd)
                else:
                    replies[n] = m
                    self.log_message(message_type, rnd, self._client_of(n), n, m.content)
                    self.node_state(n, "done", message_type, rnd)
            if not pending:
                break
            now = time.monotonic()
            if quorum is not None and quorum_at is None and len(replies) >= quorum:
                quorum_at = now
            if now - start > timeout:
                break
            if quorum_at is not None and now - quorum_at > self.opts.straggler_timeout:
                break
            time.sleep(self.opts.poll_interval)
        waited = time.monotonic() - start
        for n in pending.values():
            if quorum_at is not None:
                failures[n] = (
                    f"no reply {self.opts.straggler_timeout:.0f} s after the others answered ({waited:.0f} s)"
                )
            else:
                failures[n] = f"no reply within {waited:.0f} s"
        return replies, failures

    def _client_of(self, node_id: int) -> Client | None:
        return next((c for c in self.clients_by_k.values() if c.node_id == node_id), None)

    # -- one round -------------------------------------------------------------------------------
    def train_content(self, r: int, c: Client) -> RecordDict:
        """Round r's train message for client c: the method settings, its seed, the global weights
        (and its own weights when clients keep them, the initial global ones for a global-box teacher)."""
        import tomli_w

        from samfed.engine.seeds import client_seed

        cfg, engine = self.cfg, self.engine
        conf = {
            "round": r,
            "seed": client_seed(cfg.seed, r, c.k),
            "run-config": tomli_w.dumps(cfg.method_settings()),
            "arch": cfg.client_arch(c.k),
            "public-hash": self.public_hash,
            "dp-clip": float(cfg.dp_clip),
            **self.teacher_spec,
        }
        content = RecordDict(
            {P.CONFIG: ConfigRecord(conf), P.GLOBAL: P.state_record(engine.glob.state_dict())}
        )
        if cfg.clients_keep_weights:
            content[P.LOCAL] = P.state_record(engine.clients[c.k].state_dict())
        if self.teacher_spec and self.prompt == "global-box":  # the teacher's box comes from the initial M_G
            content[P.GLOBAL_INIT] = P.state_record(engine.global_init)
        return content

    def updates(self, engine: Engine, r: int) -> RoundUpdates:
        """Round r on the nodes: train messages to every ready online client, replies checked;
        SamfedError (the run stops, resumable) below min-clients."""
        from samfed.method.local_update import state_copy

        t0 = time.perf_counter()
        targets, out = self.round_targets(r)
        self.nodes = {c.name: "training" for c in targets}
        self.nodes |= {m["name"] or f"client {m['client']}": "missing" for m in out.missing}
        self.status("running", round=r, nodes=self.nodes)
        sent = {
            c.k: state_copy(engine.clients[c.k] if self.cfg.clients_keep_weights else engine.glob)
            for c in targets
        }
        contents = {c.node_id: self.train_content(r, c) for c in targets}
        self.say(f"round {r}: training on {', '.join(c.name for c in targets)}")
        replies, failures = self.exchange(
            "train", contents, r, self.opts.round_timeout, quorum=self.opts.min_clients
        )
        updates, metrics = self.read_replies(targets, replies, failures, sent, out)
        self.warn_emulated_bf16(metrics)
        keys = self.accept(r, updates, sent, out)
        if len(keys) < self.opts.min_clients:
            self._record_round(r, out, {}, time.perf_counter() - t0, closed=False)
            raise SamfedError(
                f"Round {r} got {len(keys)} valid update(s), fewer than min-clients {self.opts.min_clients}; "
                f"the run stopped after round {r - 1} (resume it when the nodes are back)."
            )
        result = []
        for k in keys:
            n = int(metrics[k].get("num_samples", self.clients_by_k[k].num_samples))
            extra = {"name": self.clients_by_k[k].name, "update_ratio": out.ratios[str(k)]}
            result.append(ClientUpdate(k, updates[str(k)], n, {**metrics[k], **extra}))
        facts = self._record_round(r, out, metrics, time.perf_counter() - t0, closed=True)
        return RoundUpdates(result, facts)

    def warn_emulated_bf16(self, metrics: dict[int, dict]) -> None:
        """Say once per site that it trains in emulated bf16 (its reply's ``bf16_native`` is 0)."""
        for k, m in metrics.items():
            name = self.clients_by_k[k].name
            if m.get("bf16_native") == 0.0 and name not in self.bf16_warned:
                self.bf16_warned.add(name)
                self.say(
                    f"[yellow]warning[/]: site {escape(name)} has {BF16_EMULATED}; "
                    'set precision = "fp32" in the run config'
                )

    def round_targets(self, r: int) -> tuple[list[Client], RoundOutcome]:
        """The ready online clients of round r (by client number) and the outcome so far (the
        clients not connected); SamfedError when fewer than min-clients are online."""
        self.refresh_clients()
        online = self.online_node_ids()
        targets = [
            c
            for c in sorted(self.clients_by_k.values(), key=lambda c: c.k)
            if c.ready and c.node_id in online
        ]
        out = RoundOutcome()
        for k in sorted(set(range(self.cfg.clients)) - {c.k for c in targets}):
            known = self.clients_by_k.get(k)
            name, node = (known.name, known.node_id) if known else (None, None)
            out.missing.append({"client": k, "name": name, "node_id": node, "reason": "not connected"})
        if len(targets) < self.opts.min_clients:
            raise SamfedError(
                f"Round {r} cannot start: {len(targets)} node(s) online, "
                f"min-clients is {self.opts.min_clients}; "
                f"the run stopped after round {r - 1} (resume it when the nodes are back)."
            )
        return targets, out

    def read_replies(self, targets, replies, failures, sent, out: RoundOutcome) -> tuple[dict, dict]:
        """The replies' states {str(k): state} and scalar metrics {k: dict} whose structure,
        identity and sample count check out; the others go to out.missing / out.rejected."""
        from samfed.federation.validation import check_num_samples

        updates, metrics = {}, {}
        for c in targets:
            if c.node_id not in replies:
                reason = failures.get(c.node_id, "no reply")
                out.missing.append({"client": c.k, "name": c.name, "node_id": c.node_id, "reason": reason})
                continue
            content = replies[c.node_id].content
            reason = P.check_reply(content, {k: tuple(v.shape) for k, v in sent[c.k].items()})
            if reason is None:
                reported = content[P.INFO].get("partition-id") if P.INFO in content else None
                if type(reported) is not int or reported != c.k:
                    reason = f"reply claims partition-id {str(reported)[:40]!r}"
            if reason is None and P.METRICS in content and "num_samples" in content[P.METRICS]:
                reason = check_num_samples(content[P.METRICS]["num_samples"], c.num_samples)
            if reason is not None:
                out.rejected.append({"client": c.k, "name": c.name, "reason": reason})
                continue
            updates[str(c.k)] = P.record_state(content[P.STATE])
            metrics[c.k] = dict(P.scalar_metrics(content.get(P.METRICS, {})))  # finite numbers only
        return updates, metrics

    def accept(self, r: int, updates: dict, sent: dict, out: RoundOutcome) -> list[int]:
        """Client numbers of the updates that pass `validate_updates` (norms, finite values); the
        rest are rejected; everything refused or missing is said."""
        from samfed.federation.validation import reference_ratio, validate_updates

        o = self.opts
        accepted, rejections, ratios = validate_updates(
            updates, {k: sent[int(k)] for k in updates}, o.outlier_factor, o.max_update_ratio or None,
            reference_ratio(self.history),
        )  # fmt: skip
        for rej in rejections:
            c = self.clients_by_k[int(rej.client)]
            out.rejected.append({"client": c.k, "name": c.name, "reason": rej.reason})
        for rej in out.rejected:
            self.say(f"[yellow]round {r}: update of client {rej['client']} ({rej['name']}) rejected[/]: "
                     f"{escape(rej['reason'])}")  # fmt: skip
        for m in out.missing:
            self.say(
                f"[yellow]round {r}: client {m['client']} ({m['name']}) missing[/]: {escape(m['reason'])}"
            )
        keys = sorted(int(k) for k in accepted)
        out.answered = keys
        out.ratios = {str(k): ratios[str(k)] for k in keys}
        return keys

    # -- records ---------------------------------------------------------------------------------
    def _record_round(self, r: int, out: RoundOutcome, metrics: dict, seconds: float, closed: bool) -> dict:
        names = {c.k: c.name for c in self.clients_by_k.values()}
        fed = {
            "answered": [names.get(k, str(k)) for k in out.answered],
            "missing": [m["name"] or f"client {m['client']}" for m in out.missing],
            "missing_detail": out.missing,
            "rejected": out.rejected,
            "update_ratios": out.ratios,
            "node_wall_s": {names.get(k, str(k)): m.get("wall_s") for k, m in metrics.items()},
            "node_peak_rss_mb": {names.get(k, str(k)): m.get("peak_rss_mb") for k, m in metrics.items()},
            "round_wall_s": seconds,
            "closed": closed,
        }
        self.history.append({"round": r, **fed})
        if not closed:  # a closed round is written by after_round, with its Dice
            self._write_history()
        return fed

    def _history_path(self) -> Path:
        return self.fed_dir / "rounds.json"

    def _read_history(self) -> list[dict]:
        p = self._history_path()
        return json.loads(p.read_text()) if p.is_file() else []

    def _write_history(self) -> None:
        atomic_write_text(self._history_path(), json.dumps(self.history, indent=1))


# ---- server data -------------------------------------------------------------------------------


def server_data(cfg, run, say):
    """The server's dataset and split. A given split (run_dir/split.json) is used as is; else the
    server's folder is all labeled data: val from its val.txt or a cfg.val_fraction holdout."""
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset
    from samfed.teacher.data import holdout

    if cfg.data is None:
        raise SamfedError("The federation server needs data = the folder of its labeled images (D_p).")
    dataset = load_dataset(cfg.data)
    if run.split.is_file():
        split = Split.load(run.split)
        missing = [i for i in [*split.server_labeled, *split.val, *split.test] if i not in dataset]
        if missing:
            raise SamfedError(f"The split's server ids are not all in {cfg.data} (e.g. {missing[0]!r}).")
        return dataset, split
    test = list(dataset.splits.get("test", []))
    rest = [i for i in dataset.ids if i not in set(test)]
    if dataset.splits.get("val"):
        val = [i for i in dataset.splits["val"] if i not in set(test)]
        labeled = [i for i in rest if i not in set(val)]
    else:
        labeled, val = holdout(rest, cfg.val_fraction, cfg.seed)
    split = Split(
        labeled,
        [[] for _ in range(cfg.clients)],
        val,
        test,
        scheme="federated",
        seed=cfg.seed,
        dataset=str(cfg.data),
    )
    split.save(run.split)
    say(f"server data: {len(labeled)} labeled, {len(val)} validation, {len(test)} test images")
    return dataset, split


def server_sets(dataset, split, cfg):
    """Sets with D_p, val and test only (client images never reach the server)."""
    from samfed.engine.data import Sets, split_arrays

    s = cfg.image_size
    if not split.server_labeled or not split.val:
        raise SamfedError("The server needs labeled (D_p) and validation images.")
    test = split_arrays(dataset, split.test, s, True) if split.test else None
    return Sets(
        split_arrays(dataset, split.server_labeled, s, True),
        [],
        split_arrays(dataset, split.val, s, True),
        test,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: options from the run config (`flwr run --run-config`)."""
    from rich.console import Console
    from rich.text import Text

    opts = ServerOptions.from_run_config(dict(context.run_config))
    console = Console(force_terminal=False, soft_wrap=True)
    log_path = Path(opts.run_dir) / "federation" / "server.log"

    def say(msg: str) -> None:
        console.print(msg)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {Text.from_markup(msg).plain}\n")

    FederatedRun(grid, opts, say=say).main()
