"""The one round engine of both runners: the in-process `samfed train` and the Flower ServerApp.

`Engine.run()` does, in this order and with the same seeds (`samfed.engine.seeds`) everywhere:

1. set-up: seeded students; the initial global model trained on D_p, or the resume state; the
   teacher (fine-tuned on D_p and saved) and its validation maps; client warm-up; round 0's record;
2. rounds: the injected `ClientStep` executes round r's client updates (in-process: call
   `client_update`; Flower: send train messages, validate the replies); the engine loads them
   into the client models, aggregates them (`samfed.method.aggregation`, DP included), validates
   the global model, logs the round and writes the resume state;
3. the `supervised` baseline from the same start (federated methods), then the outputs.

A `ClientStep` is shaped like a training loop's hooks: `updates` is the one the runners differ in;
`on_teacher`, `before_rounds`, `after_round` and `mean_client` have defaults.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from rich.markup import escape

from samfed.config import RunConfig
from samfed.engine.checks import require_finite
from samfed.engine.data import Sets
from samfed.engine.models import cached_init_global, new_model
from samfed.engine.outputs import INIT_STAGES, finish
from samfed.engine.records import log_round
from samfed.engine.reporter import Bar, Reporter
from samfed.engine.seeds import aggregate_seed, warmup_seed
from samfed.engine.state import restore_clients, round_state
from samfed.engine.teacher import compute_maps, maps_teacher, prepare_teacher, prompt_masks
from samfed.method.aggregation import ClientResult, aggregate
from samfed.method.local_update import state_copy
from samfed.method.methods import method_spec
from samfed.method.server import recalibrate_bn, warmup_client
from samfed.preprocess import Preprocessing
from samfed.train.compare import mean_client_size, round0_dice, supervised_rounds, teacher_warning
from samfed.train.evaluation import map_dice
from samfed.train.run_dir import RunDir


@dataclass
class ClientUpdate:
    """Client k's update of a round, as it reached the server."""

    k: int
    state: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict = field(default_factory=dict)


@dataclass
class RoundUpdates:
    """What a `ClientStep` returns for one round: the updates to aggregate (sorted by client),
    extra fields of the round record, or, for a step that trained the global model itself (the
    non-federated baselines), that training's metrics."""

    updates: list[ClientUpdate] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    trained_global: dict | None = None


class ClientStep:
    """How a runner executes the clients' part of a round."""

    def on_teacher(self, engine: Engine, teacher) -> None:
        """The teacher is ready (fine-tuned and saved; engine.maps_teacher computes the maps);
        called before its validation maps."""

    def before_rounds(self, engine: Engine) -> None:
        """After set-up (or resume), before the first round of this process."""

    def updates(self, engine: Engine, r: int) -> RoundUpdates:
        """Round r's client updates, computed from engine.glob / engine.clients."""
        raise NotImplementedError

    def after_round(self, engine: Engine, r: int) -> None:
        """Round r is logged and its resume state written."""

    def mean_client(self, engine: Engine) -> int:
        """Images of an average client: the step budget of a `supervised` baseline round."""
        return mean_client_size([len(c) for c in engine.sets.clients])


class Engine:
    """One run: `cfg` on `sets` (made from `dataset` and `split`) into `run`, with `n_clients`
    client models; `state` is the resume state (None for a new run); `teacher` an optional ready
    teacher object used instead of loading and fine-tuning cfg.teacher."""

    def __init__(
        self,
        cfg: RunConfig,
        run: RunDir,
        dataset,
        split,
        sets: Sets,
        step: ClientStep,
        reporter: Reporter,
        n_clients: int,
        state: dict | None = None,
        teacher=None,
    ):
        self.cfg, self.run, self.dataset, self.split, self.sets = cfg, run, dataset, split, sets
        self.step, self.reporter, self.state, self.teacher = step, reporter, state, teacher
        self.spec = method_spec(cfg.method)
        self.federated = self.spec.kind == "federated"
        self.n_clients = n_clients if self.federated else 0
        self.prep = Preprocessing(size=cfg.image_size)
        self.teacher_info: dict = {}
        self.stages: dict[str, float] = {}
        self.start_round = 0
        self.bar = Bar()
        self._clock = time.perf_counter()

    def say(self, text: str) -> None:
        self.reporter.say(text)

    def stage(self, name: str) -> None:
        """Add the time since the last stage (or construction) to stage `name`."""
        now = time.perf_counter()
        self.stages[name] = self.stages.get(name, 0.0) + now - self._clock
        self._clock = now

    # -- the run ---------------------------------------------------------------------------------
    def run_all(self, t_start: float) -> dict:
        """Set-up, rounds, baseline and outputs -> the run's summary."""
        self.setup()
        self._clock = time.perf_counter()
        self.rounds()
        self.stage("rounds")
        baseline = self.baseline()
        return finish(self, time.perf_counter() - t_start, baseline)

    def setup(self) -> None:
        """Models, initial global model, teacher, then warm-up (new run) or the resume state."""
        cfg = self.cfg
        self.glob = new_model(cfg.global_arch, cfg, "global")
        self.clients = [new_model(cfg.client_arch(k), cfg, "client", k) for k in range(self.n_clients)]
        init_info: dict = {}
        if self.state is not None:
            self.glob.load_state_dict(self.state["global_init"])
        else:
            n = len(self.sets.labeled)
            self.say(f"training the global model on the {n} server images (server initialisation)")
            init_info = cached_init_global(self.glob, self.sets.labeled, cfg)
            require_finite(self.glob, self.run, "the initial training of the global model on D_p")
        self.stage("server init")
        if self.spec.needs_teacher:
            self.prepare_teacher()
        self.global_init = state_copy(self.glob)
        if self.state is not None:
            self.resume()
        else:
            self.start(init_info)
        warning = teacher_warning(self.teacher_info.get("val_dice"), round0_dice(self.run.read_metrics()))
        if warning:
            self.say(f"[yellow]{escape(warning)}[/]")

    def prepare_teacher(self) -> None:
        """The teacher (given, or fine-tuned on D_p and saved), the step's `on_teacher`, and the
        teacher's validation maps and Dice."""
        cfg, sets = self.cfg, self.sets
        if self.teacher is None:
            self.teacher, info = prepare_teacher(cfg, self.run, self.dataset, self.split, self.say)
        else:
            t = self.teacher
            info = {
                "name": getattr(t, "name", "injected"),
                "mode": "injected",
                "prompt": getattr(t, "prompt", None),
            }
        self.stage("teacher fine-tune")
        self.maps_teacher = maps_teacher(cfg, self.teacher, self.dataset, self.split, self.say)
        info["maps_runtime"] = getattr(self.maps_teacher, "variant", "torch")
        self.step.on_teacher(self, self.teacher)
        masks = prompt_masks(self.teacher.prompt, self.glob, sets.val, self.prep)
        sets.val_maps = compute_maps(self.maps_teacher, self.dataset, sets.val.ids, cfg, masks)
        info["val_dice"] = map_dice(sets.val_maps, sets.val.masks)
        self.stage("teacher maps")
        info["maps_seconds"] = self.stages["teacher maps"]
        self.say(f"teacher validation Dice {info['val_dice']:.3f}")
        self.teacher_info = info

    def start(self, init_info: dict) -> None:
        """A new run: warm up the clients, log round 0, write the round-0 resume state."""
        cfg = self.cfg
        for k, m in enumerate(self.clients):
            warmup_client(m, cfg.client_arch(k), self.glob, self.sets.labeled, cfg, warmup_seed(cfg.seed, k))
            require_finite(m, self.run, f"the warm-up of client {k}")
        self.stage("client warm-up")
        init_seconds = sum(self.stages[k] for k in INIT_STAGES if k in self.stages)
        self.run.log(
            {
                "event": "init",
                "round": 0,
                **init_info,
                "teacher": self.teacher_info,
                "stages": dict(self.stages),
            }
        )
        log_round(self, 0, {}, {}, init_seconds)
        self.run.save_state(round_state(0, self.glob, self.clients, cfg, self.global_init))

    def resume(self) -> None:
        """Global and client weights, random state and round count from the resume state."""
        state = self.state
        self.glob.load_state_dict(state["global"])
        restore_clients(self.run, self.clients, state)
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.start_round = int(state["round"])
        self.run.truncate_metrics(self.start_round)
        self.say(f"resuming after round {self.start_round}")

    # -- rounds ----------------------------------------------------------------------------------
    def rounds(self) -> None:
        self.step.before_rounds(self)
        total = (self.cfg.rounds - self.start_round) * max(1, self.n_clients)
        with self.reporter.progress(total) as self.bar:
            for r in range(self.start_round + 1, self.cfg.rounds + 1):
                self.one_round(r)
        self.bar = Bar()

    def one_round(self, r: int) -> None:
        """The step's updates of round r, aggregated; the round validated, logged and saved."""
        cfg, run = self.cfg, self.run
        t0 = time.perf_counter()
        got = self.step.updates(self, r)
        agg, client_metrics = got.trained_global, {}
        if agg is None:
            results = []
            for u in got.updates:
                require_finite(u.state, run, f"round {r}, client {u.k}", u.metrics.get("loss"), r)
                model = self.clients[u.k]
                model.load_state_dict(u.state)
                results.append(ClientResult(u.state, u.num_samples, model, u.metrics))
                client_metrics[u.k] = {"arch": cfg.client_arch(u.k), "n": u.num_samples, **u.metrics}
            new_state, agg = aggregate(
                cfg.aggregation_rule,
                self.glob,
                results,
                self.sets.labeled,
                cfg,
                r,
                aggregate_seed(cfg.seed, r),
            )
            self.glob.load_state_dict(new_state)
            if cfg.bn_recalibration:
                agg["bn_recalibrated"] = recalibrate_bn(self.glob, self.sets.labeled, cfg)
        require_finite(self.glob, run, f"round {r}, aggregation", None, r)
        seconds = time.perf_counter() - t0
        log_round(self, r, {**agg, **got.facts}, client_metrics, seconds)
        run.save_state(round_state(r, self.glob, self.clients, cfg, self.global_init))
        self.step.after_round(self, r)

    def baseline(self):
        """The `supervised` baseline from the same initial global model (federated methods only)."""
        if not self.federated:
            return None
        cfg = self.cfg
        self.say(f"supervised baseline: {cfg.rounds} rounds on the server images only, from the same start")
        baseline = new_model(cfg.global_arch, cfg, "global")
        baseline.load_state_dict(self.global_init)
        mean_client = self.step.mean_client(self)
        supervised_rounds(baseline, self.sets, mean_client, cfg, self.prep, lambda r, rec: self.run.log(rec))
        require_finite(baseline, self.run, "the supervised baseline")
        self.stage("supervised baseline")
        return baseline
