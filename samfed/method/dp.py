"""Optional client-level differential privacy for FedAvg rounds (DP-FedAvg, McMahan et al. 2018).

- Each node clips its update delta = w_local - w_global (all float tensors as one vector) to L2
  norm <= C before it leaves the node (`clip_update`); the server clips again (idempotent, it
  guards against a node that skipped it).
- The server averages the clipped deltas with equal weights and adds Gaussian noise of standard
  deviation sigma * C to their sum (`noisy_mean`), sigma = the noise multiplier.
- `privacy_spent` reports (epsilon, delta) after T rounds: every client takes part in every round
  (no subsampling amplification is claimed), so each round is a Gaussian mechanism with L2
  sensitivity C and noise sigma * C, Renyi-DP alpha / (2 sigma^2) per round, composed over rounds
  and converted with eps = min_alpha [T alpha / (2 sigma^2) + log(1/delta) / (alpha - 1)].
  The number of clients that answered a round is treated as public.

Needs GroupNorm students: BatchNorm running statistics are not gradients, are computed from the
private images and would leave the node outside the clipping (`require_dp_compatible`).
"""

from __future__ import annotations

import math

import torch

from samfed.errors import SamfedError

ALPHAS = tuple([1 + x / 10.0 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512])


def require_dp_compatible(norm: str, aggregation: str, state: dict[str, torch.Tensor] | None = None) -> None:
    """SamfedError unless the students use GroupNorm and aggregation is FedAvg."""
    has_bn = state is not None and any(k.endswith("running_mean") for k in state)
    if norm != "group" or has_bn:
        raise SamfedError(
            'Differential privacy needs GroupNorm students (norm = "group"): BatchNorm running statistics '
            "would leave the node unclipped and un-noised."
        )
    if aggregation not in ("fedavg", "dp-fedavg"):
        raise SamfedError(
            "Differential privacy is supported with FedAvg aggregation (homogeneous students) only."
        )


def _float_keys(reference: dict[str, torch.Tensor]) -> list[str]:
    return [k for k, v in reference.items() if v.is_floating_point()]


def delta_norm(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """L2 norm of state - reference over the float tensors (float64)."""
    return math.sqrt(
        sum(float(((state[k].double() - reference[k].double()) ** 2).sum()) for k in _float_keys(reference))
    )


def clip_update(
    state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], clip: float
) -> tuple[dict[str, torch.Tensor], float]:
    """reference + delta * min(1, clip / ||delta||) -> (clipped state, norm before clipping)."""
    norm = delta_norm(state, reference)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    out = dict(state)
    for k in _float_keys(reference):
        d = state[k].double() - reference[k].double()
        out[k] = (reference[k].double() + d * scale).to(reference[k].dtype)
    return out, norm


def noisy_mean(
    reference: dict[str, torch.Tensor],
    states: list[dict[str, torch.Tensor]],
    clip: float,
    noise_multiplier: float,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """reference + (sum of clipped deltas + N(0, (sigma C)^2)) / n; integer buffers from reference."""
    if not states:
        raise ValueError("noisy_mean needs at least one client update")
    clipped = [clip_update(s, reference, clip)[0] for s in states]
    out = dict(reference)
    n = len(clipped)
    for k in _float_keys(reference):
        ref = reference[k].double()
        total = sum(s[k].double() - ref for s in clipped)
        noise = torch.randn(ref.shape, generator=generator, dtype=torch.float64) * (noise_multiplier * clip)
        out[k] = (ref + (total + noise) / n).to(reference[k].dtype)
    return out


def privacy_spent(rounds: int, noise_multiplier: float, delta: float) -> float:
    """epsilon after `rounds` full-participation Gaussian rounds (inf when noise_multiplier is 0)."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return math.inf
    if not 0 < delta < 1:
        raise SamfedError(f"dp delta must be in (0, 1), got {delta}.")
    return min(rounds * a / (2 * noise_multiplier**2) + math.log(1 / delta) / (a - 1) for a in ALPHAS)
