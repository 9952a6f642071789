"""Settings of the federation server (Flower run config keys), with their defaults. Torch-free.

They travel as `flwr run --run-config "key=value ..."`; the Flower app project that
`processes.write_app_dir` generates declares every key with its default, as `flwr run` requires.
The SAM-Fed method settings themselves are the run directory's config.toml (`RunConfig`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from samfed.errors import SamfedError


@dataclass(frozen=True)
class ServerOptions:
    """How the server runs the rounds (not what the method does: that is RunConfig)."""

    run_dir: str = ""  # server run directory holding config.toml (required)
    resume: bool = False  # continue from run_dir/state/checkpoint.pt
    num_nodes: int = 0  # nodes to wait for before round 1 (0: cfg.clients)
    min_clients: int = 1  # a round needs at least this many valid updates, else the run stops
    connect_timeout: float = 600.0  # seconds to wait for num_nodes (then go on with >= min_clients)
    round_timeout: float = 3600.0  # hard limit for one round's replies
    straggler_timeout: float = 300.0  # once min_clients answered, wait this long for the others
    # reject update norm ratios above factor x the round median (>= 3 updates) or, with fewer, x the
    # previous round's median
    outlier_factor: float = 10.0
    # reject update norm ratios ||w_new - w_sent|| / ||w_sent|| above this, any client count (0: off);
    # local updates stay near 0.1 at lr 1e-3 and below about 10 even at lr 1e-2 with BatchNorm
    max_update_ratio: float = 20.0
    teacher_runtime: str = "onnx"  # what nodes run the teacher with: onnx (exported) | torch
    dp_clip: float = 0.0  # client-level DP: clip norm C of each update (0: DP off)
    dp_noise: float = 0.0  # noise multiplier sigma (noise std sigma * C on the sum)
    dp_delta: float = 1e-5  # delta of the reported (epsilon, delta)
    poll_interval: float = 0.5  # seconds between pulls of replies

    def __post_init__(self) -> None:
        for name in ("outlier_factor", "max_update_ratio"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise SamfedError(f"{self.key(name)} must be a finite number >= 0 (0: off), got {v}.")

    @staticmethod
    def key(name: str) -> str:
        return name.replace("_", "-")

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{run-config key: default} for the app project's [tool.flwr.app.config]."""
        d = cls()
        return {cls.key(f.name): getattr(d, f.name) for f in fields(cls)}

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ServerOptions:
        kw = {}
        for f in fields(cls):
            k = cls.key(f.name)
            if k in run_config:
                default, value = getattr(cls(), f.name), run_config[k]
                if isinstance(default, bool) and isinstance(value, str):
                    value = value.strip().lower() in ("1", "true", "yes")
                kw[f.name] = type(default)(value)
        return cls(**kw)

    def to_run_config(self) -> dict[str, Any]:
        return {self.key(f.name): getattr(self, f.name) for f in fields(self)}
