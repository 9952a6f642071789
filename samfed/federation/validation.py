"""Server-side checks of client updates before aggregation.

An update is rejected (and logged with its reason) when
- its keys differ from the state dict of the architecture the client was asked to train;
- a tensor has the wrong shape or dtype;
- a value is NaN or +-Inf;
- its relative update norm ||w_new - w_sent|| / ||w_sent|| (float tensors only; w_sent is the
  previous global model under FedAvg) is larger than `outlier_factor` times a typical ratio: the
  median of the round's updates when there are at least 3 (with two the median cannot tell which
  one is off), else the median of the previous closed round's accepted updates (`reference_ratio`);
- or that ratio is larger than `max_ratio` (an absolute bound, meaningful with any number of
  clients);
- the sample count it reports is not a whole number from 1 to the count it announced when it
  joined (`check_num_samples`; FedAvg weights by it).
The relative norm makes clients with different architectures comparable.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Rejection:
    """Why an update was refused: who sent it and a one-line reason."""

    client: str
    reason: str


def check_state(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> str | None:
    """None if `state` has exactly the keys, shapes and dtypes of `reference` and only finite values."""
    missing, extra = sorted(set(reference) - set(state)), sorted(set(state) - set(reference))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + (
            [f"unexpected {', '.join(extra[:3])}"] if extra else []
        )
        return "wrong keys: " + "; ".join(parts)
    for key, ref in reference.items():
        t = state[key]
        if tuple(t.shape) != tuple(ref.shape):
            return f"wrong shape for {key}: {tuple(t.shape)} instead of {tuple(ref.shape)}"
        if t.dtype != ref.dtype:
            return f"wrong dtype for {key}: {t.dtype} instead of {ref.dtype}"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"non-finite values (NaN/Inf) in {key}"
    return None


def update_ratio(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """||state - reference|| / ||reference|| over the floating-point tensors (float64 sums)."""
    diff = ref = 0.0
    for key, r in reference.items():
        if not r.is_floating_point():
            continue
        r64 = r.to(torch.float64)
        diff += float(((state[key].to(torch.float64) - r64) ** 2).sum())
        ref += float((r64**2).sum())
    return math.sqrt(diff) / max(math.sqrt(ref), 1e-12)


def check_num_samples(value: object, announced: int) -> str | None:
    """None if `value` (a reply's num_samples metric) is a whole number in 1..announced (the count the
    node gave when it joined); else the reason."""
    whole = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if whole and float(value).is_integer() and 1 <= value <= announced:
        return None
    return (
        f"reported num_samples {str(value)[:40]!r}: expected a whole number from 1 to {announced} "
        "(the image count it announced when it joined)"
    )


def reference_ratio(history: list[dict]) -> float | None:
    """Median update ratio of the last closed round in `history` (round records with an
    ``update_ratios`` {client: ratio} of its accepted updates); None before the first."""
    for rec in reversed(history):
        values = [float(v) for v in (rec.get("update_ratios") or {}).values()]
        if rec.get("closed") and values:
            return statistics.median(values)
    return None


def norm_outliers(
    ratios: dict[str, float],
    outlier_factor: float,
    max_ratio: float | None = None,
    reference: float | None = None,
) -> dict[str, str]:
    """client -> reason for every ratio above `outlier_factor` x the round median (>= 3 clients) or,
    with fewer, x `reference` (the previous round's median); or above `max_ratio`."""
    out: dict[str, str] = {}
    if len(ratios) >= 3:
        typical, what = statistics.median(ratios.values()), "round median"
    else:
        typical, what = reference, "previous round's median"
    if typical is not None and outlier_factor > 0:
        for client, r in ratios.items():
            if r > outlier_factor * max(typical, 1e-12):
                out[client] = (
                    f"outlier update norm: ratio {r:.3g} > {outlier_factor:g} x {what} {typical:.3g}"
                )
    if max_ratio is not None:
        for client, r in ratios.items():
            if r > max_ratio and client not in out:
                out[client] = f"update norm ratio {r:.3g} above the limit {max_ratio:g} (max-update-ratio)"
    return out


def validate_updates(
    updates: dict[str, dict[str, torch.Tensor]],
    sent: dict[str, dict[str, torch.Tensor]],
    outlier_factor: float = 10.0,
    max_ratio: float | None = None,
    reference: float | None = None,
) -> tuple[list[str], list[Rejection], dict[str, float]]:
    """Check every client's state against what it was sent -> (accepted, rejections, ratios).

    reference: the previous round's median ratio (`reference_ratio`), used below 3 updates."""
    rejected: list[Rejection] = []
    ratios: dict[str, float] = {}
    for client, state in updates.items():
        reason = check_state(state, sent[client])
        if reason is None:
            ratios[client] = update_ratio(state, sent[client])
        else:
            rejected.append(Rejection(client, reason))
    for client, reason in norm_outliers(ratios, outlier_factor, max_ratio, reference).items():
        rejected.append(Rejection(client, reason))
    bad = {r.client for r in rejected}
    return [c for c in updates if c not in bad], rejected, ratios
