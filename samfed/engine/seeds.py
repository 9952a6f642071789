"""Every seed of a run, derived from cfg.seed and the step it drives (`derive_seed`): the one place
the step keys are spelled, so every runner seeds the same step the same way and a resumed run
repeats an uninterrupted one."""

from __future__ import annotations

from samfed.method.arrays import derive_seed


def init_seed(seed: int, arch: str, *keys) -> int:
    """The random initial weights of a student of `arch` (keys: "global" or "client", k)."""
    return derive_seed(seed, "init", arch, *keys) % (2**63)


def warmup_seed(seed: int, k: int) -> int:
    """Client k's warm-up on D_p."""
    return derive_seed(seed, "warmup", k)


def client_seed(seed: int, r: int, k: int) -> int:
    """Client k's local update in round r (sent to a federation node as is)."""
    return derive_seed(seed, "round", r, "client", k)


def aggregate_seed(seed: int, r: int) -> int:
    """The server's aggregation of round r (ensemble distillation, DP noise)."""
    return derive_seed(seed, "aggregate", r)


def baseline_seed(seed: int, r: int) -> int:
    """Round r of a non-federated baseline (`supervised`, `centralised`)."""
    return derive_seed(seed, "baseline", r)
