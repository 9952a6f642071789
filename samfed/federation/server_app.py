"""The server side of a SAM-Fed federation: a Flower ServerApp that drives the Grid itself.

It runs the same steps as the in-process runner (`samfed.train.runner`), with the same functions
and seeds, on a run directory of the same format (so `samfed evaluate` / `samfed export` work on
it): server initialisation (teacher fine-tuned and saved, global student trained on D_p, client
warm-up), then per round

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
   in-process) through `samfed.method.aggregation.aggregate` (or the DP noisy mean), the global
   model is validated and the round record names who answered, who was missing and why;
6. the resume state is written atomically; `resume` continues from it to the same final weights.

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

from samfed.errors import SamfedError
from samfed.federation import protocol as P
from samfed.federation.options import ServerOptions
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


class FederatedRun:
    """One Flower run of SAM-Fed over `grid`, writing into `opts.run_dir`."""

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

    # -- status ----------------------------------------------------------------------------------
    def status(self, state: str, **extra: Any) -> None:
        rec = {"state": state, "time": time.time(), **extra}
        atomic_write_text(self.fed_dir / "status.json", json.dumps(rec, indent=1))

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

        from samfed.config import RunConfig
        from samfed.method.arrays import derive_seed
        from samfed.method.methods import method_spec
        from samfed.method.server import init_global, warmup_client
        from samfed.preprocess import Preprocessing
        from samfed.train.runner import log_round, new_model, round_state, validate_config

        t_start = time.perf_counter()
        opts, run = self.opts, self.run
        cfg = RunConfig.load(run.config)
        validate_config(cfg)
        self.cfg = cfg
        spec = method_spec(cfg.method)
        if spec.kind != "federated":
            raise SamfedError(f"Method {cfg.method} is not federated; run it with `samfed train`.")
        if opts.dp_clip > 0:
            from samfed.federation.dp import require_dp_compatible

            require_dp_compatible(cfg.norm, cfg.aggregation_rule)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.prep = Preprocessing(size=cfg.image_size)

        dataset, split = server_data(cfg, run, self.say)
        self.split = split
        self.sets = server_sets(dataset, split, cfg)
        self.public = {"images": self.sets.labeled.images, "masks": self.sets.labeled.masks.astype(np.uint8)}
        self.public_hash = P.public_digest(self.public)

        # the in-process runner's order: models, init (or resume), teacher, warm-up (or resume)
        self.glob = new_model(cfg.global_arch, cfg, "global")
        self.models = [new_model(cfg.client_arch(k), cfg, "client", k) for k in range(cfg.clients)]
        start, state = 0, None
        if opts.resume:
            state = run.load_state()
            self.glob.load_state_dict(state["global_init"])
        else:
            if run.checkpoint.is_file():
                raise SamfedError(
                    f"{run.root} already holds a started run; resume it or choose another run directory."
                )
            init_info = init_global(self.glob, self.sets.labeled, cfg, cfg.seed)
        self.teacher_info: dict = {}
        self.teacher_spec: dict[str, Any] = {}
        self.teacher_files: dict[str, bytes] = {}
        if spec.needs_teacher:
            self.prepare_teacher(dataset, split)
        self.global_init = {k: v.detach().clone() for k, v in self.glob.state_dict().items()}
        if state is not None:
            self.glob.load_state_dict(state["global"])
            for m, st in zip(self.models, state["clients"], strict=True):
                m.load_state_dict(st)
            start = int(state["round"])
            run.truncate_metrics(start)
            self.history = [h for h in self._read_history() if h["round"] <= start]
            self.say(f"resuming after round {start}")
        else:
            for k, m in enumerate(self.models):
                seed = derive_seed(cfg.seed, "warmup", k)
                warmup_client(m, cfg.client_arch(k), self.glob, self.sets.labeled, cfg, seed)
            run.log({"event": "init", "round": 0, **init_info, "teacher": self.teacher_info})
            log_round(run, 0, self.glob, self.models, self.sets, self.prep, {}, {}, 0.0, self.say)
            run.save_state(round_state(0, self.glob, self.models, cfg, self.global_init))

        self.say(f"server initialised in {time.perf_counter() - t_start:.1f} s")
        self.wait_for_nodes()
        for r in range(start + 1, cfg.rounds + 1):
            self.status("running", round=r)
            self.one_round(r)
            run.save_state(round_state(r, self.glob, self.models, cfg, self.global_init))
            self._write_history()

        from samfed.train.runner import finish

        summary = finish(
            cfg,
            run,
            split,
            self.sets,
            self.glob,
            self.models,
            self.prep,
            self.teacher_info,
            time.perf_counter() - t_start,
        )
        self.status("finished", round=cfg.rounds, val_dice=summary["val_dice"])
        self.say(f"done: global validation Dice {summary['val_dice']:.4f}; run directory {run.root}")

    # -- server initialisation -------------------------------------------------------------------
    def prepare_teacher(self, dataset, split) -> None:
        """Fine-tune/save the teacher as in-process; the asset nodes get: ONNX export or torch folder."""
        from samfed.method.arrays import predict_proba
        from samfed.train.evaluation import map_dice
        from samfed.train.runner import compute_maps, prepare_teacher

        teacher, info = prepare_teacher(self.cfg, self.run, dataset, split, self.say)
        self.prompt = teacher.prompt
        masks = (
            predict_proba(self.glob, self.sets.val, self.prep) > 0.5 if self.prompt == "global-box" else None
        )
        val_maps = compute_maps(teacher, dataset, self.sets.val.ids, self.cfg, self.run, masks)
        info["val_dice"] = map_dice(val_maps, self.sets.val.masks)
        self.teacher_info = info
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
            "public-ids": list(self.sets.labeled.ids),
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
                else:
                    replies[n] = m
                    self.log_message(message_type, rnd, self._client_of(n), n, m.content)
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
        import tomli_w

        from samfed.method.arrays import derive_seed

        cfg = self.cfg
        conf = {
            "round": r,
            "seed": derive_seed(cfg.seed, "round", r, "client", c.k),
            "run-config": tomli_w.dumps({k: v for k, v in cfg.to_dict().items() if v is not None}),
            "arch": cfg.client_arch(c.k),
            "public-hash": self.public_hash,
            "dp-clip": float(self.opts.dp_clip),
            **self.teacher_spec,
        }
        content = RecordDict({P.CONFIG: ConfigRecord(conf), P.GLOBAL: P.state_record(self.glob.state_dict())})
        if cfg.aggregation_rule != "fedavg":
            content[P.LOCAL] = P.state_record(self.models[c.k].state_dict())
        if self.teacher_spec and self.prompt == "global-box":  # the teacher's box comes from the initial M_G
            content[P.GLOBAL_INIT] = P.state_record(self.global_init)
        return content

    def one_round(self, r: int) -> None:
        from samfed.federation.validation import check_num_samples, reference_ratio, validate_updates
        from samfed.method.aggregation import ClientResult, aggregate
        from samfed.method.arrays import derive_seed
        from samfed.train.runner import log_round

        t0 = time.perf_counter()
        cfg, opts = self.cfg, self.opts
        self.refresh_clients()
        online = self.online_node_ids()
        targets = [
            c
            for c in sorted(self.clients_by_k.values(), key=lambda c: c.k)
            if c.ready and c.node_id in online
        ]
        out = RoundOutcome()
        for k in sorted(set(range(cfg.clients)) - {c.k for c in targets}):
            known = self.clients_by_k.get(k)
            name, node = (known.name, known.node_id) if known else (None, None)
            out.missing.append({"client": k, "name": name, "node_id": node, "reason": "not connected"})
        if len(targets) < opts.min_clients:
            raise SamfedError(
                f"Round {r} cannot start: {len(targets)} node(s) online, min-clients is {opts.min_clients}; "
                f"the run stopped after round {r - 1} (resume it when the nodes are back)."
            )

        def snapshot(model) -> dict:
            return {k: v.detach().clone() for k, v in model.state_dict().items()}

        glob_state = snapshot(self.glob)
        fedavg = cfg.aggregation_rule == "fedavg"
        sent = {c.k: glob_state if fedavg else snapshot(self.models[c.k]) for c in targets}
        contents = {c.node_id: self.train_content(r, c) for c in targets}
        self.say(f"round {r}: training on {', '.join(c.name for c in targets)}")
        replies, failures = self.exchange("train", contents, r, opts.round_timeout, quorum=opts.min_clients)

        updates, metrics = {}, {}
        for c in targets:
            if c.node_id not in replies:
                out.missing.append(
                    {
                        "client": c.k,
                        "name": c.name,
                        "node_id": c.node_id,
                        "reason": failures.get(c.node_id, "no reply"),
                    }
                )
                continue
            content = replies[c.node_id].content
            expected = {k: tuple(v.shape) for k, v in sent[c.k].items()}
            reason = P.check_reply(content, expected)
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
        accepted, rejections, ratios = validate_updates(
            updates,
            {str(k): sent[k] for k in map(int, updates)},
            opts.outlier_factor,
            opts.max_update_ratio or None,
            reference_ratio(self.history),
        )
        for rej in rejections:
            c = self.clients_by_k[int(rej.client)]
            out.rejected.append({"client": c.k, "name": c.name, "reason": rej.reason})
        for rej in out.rejected:
            who = f"client {rej['client']} ({rej['name']})"
            self.say(f"[yellow]round {r}: update of {who} rejected[/]: {escape(rej['reason'])}")
        for m in out.missing:
            who = f"client {m['client']} ({m['name']})"
            self.say(f"[yellow]round {r}: {who} missing[/]: {escape(m['reason'])}")
        keys = sorted(int(k) for k in accepted)
        if len(keys) < opts.min_clients:
            self._record_round(r, out, {}, time.perf_counter() - t0, closed=False)
            raise SamfedError(
                f"Round {r} got {len(keys)} valid update(s), fewer than min-clients {opts.min_clients}; "
                f"the run stopped after round {r - 1} (resume it when the nodes are back)."
            )
        out.answered = keys
        out.ratios = {str(k): ratios[str(k)] for k in keys}
        results, client_metrics = [], {}
        for k in keys:
            state = updates[str(k)]
            self.models[k].load_state_dict(state)
            n = int(metrics[k].get("num_samples", self.clients_by_k[k].num_samples))
            results.append(ClientResult(state, n, self.models[k], metrics[k]))
            own = {"arch": cfg.client_arch(k), "n": n, "name": self.clients_by_k[k].name}
            client_metrics[k] = {**metrics[k], **own, "update_ratio": ratios.get(str(k))}
        if opts.dp_clip > 0:
            new_state, agg = self.dp_aggregate(r, [res.state for res in results])
        else:
            new_state, agg = aggregate(
                cfg.aggregation_rule,
                self.glob,
                results,
                self.sets.labeled,
                cfg,
                r,
                derive_seed(cfg.seed, "aggregate", r),
            )
        self.glob.load_state_dict(new_state)
        fed = self._record_round(r, out, metrics, time.perf_counter() - t0, closed=True)
        log_round(self.run, r, self.glob, self.models, self.sets, self.prep, {**agg, **fed}, client_metrics,
                   time.perf_counter() - t0, self.say)  # fmt: skip

    def dp_aggregate(self, r: int, states: list[dict]) -> tuple[dict, dict]:
        from samfed.federation.dp import noisy_mean, privacy_spent
        from samfed.method.arrays import generator

        o = self.opts
        ref = {k: v.clone() for k, v in self.glob.state_dict().items()}
        new = noisy_mean(ref, states, o.dp_clip, o.dp_noise, generator(self.cfg.seed, "dp", r))
        eps = privacy_spent(r, o.dp_noise, o.dp_delta)
        return new, {"dp_epsilon": eps, "dp_delta": o.dp_delta, "dp_clip": o.dp_clip, "dp_noise": o.dp_noise}

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
    from samfed.train.runner import Sets, split_arrays

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
