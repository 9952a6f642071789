"""Client-level differential privacy lives in `samfed.method.dp` (the `dp-fedavg` aggregator runs
in-process too); this module keeps the federation's old import path."""

from samfed.method.dp import clip_update, delta_norm, noisy_mean, privacy_spent, require_dp_compatible

__all__ = ["clip_update", "delta_norm", "noisy_mean", "privacy_spent", "require_dp_compatible"]
