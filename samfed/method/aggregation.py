"""Server aggregation strategies, pluggable by name (`AGGREGATORS`).

- ``fedavg`` (homogeneous clients): weighted average of the client state dicts by sample count.
  Float tensors (weights, BatchNorm running mean/var) are averaged; integer buffers
  (BatchNorm ``num_batches_tracked``) take the maximum over clients.
- ``distill`` (heterogeneous clients): clients keep their own architectures and weights; the
  server distils the ensemble (mean client probability) on its labeled set D_p into the
  fixed-architecture global model, with KD (two-class KL, temperature T, times T^2) plus the
  supervised loss on D_p, starting from the previous global weights.
- ``dp-fedavg`` (client-level differential privacy, `samfed.method.dp`): the clipped updates'
  equal-weight mean plus Gaussian noise of std cfg.dp_noise * cfg.dp_clip on their sum; chosen
  whenever cfg.dp_clip > 0.

Every strategy is `aggregate(global_model, results, labeled_data, cfg, round, seed) -> (state,
metrics)` where results are `ClientResult`s; add a strategy with `@register_aggregator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from samfed.config import RunConfig
from samfed.method.arrays import Cycler, SegArrays, generator
from samfed.method.augment import weak_augment
from samfed.method.device import model_device
from samfed.method.local_update import epoch_steps, make_optimizer, state_copy
from samfed.method.losses import kd_loss, seg_loss
from samfed.method.precision import forward, training_layout
from samfed.preprocess import Preprocessing
from samfed.registry import Registry


@dataclass
class ClientResult:
    """What a client sends back: its weights, its sample count and (for `distill`) its model."""

    state: dict[str, torch.Tensor]
    num_samples: int
    model: nn.Module | None = None
    metrics: dict | None = None


def fedavg(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted average of state dicts with identical keys; integer buffers take the max."""
    if not states:
        raise ValueError("fedavg needs at least one client state")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("fedavg weights must sum to a positive number")
    out = {}
    for key, ref in states[0].items():
        if ref.is_floating_point():
            acc = torch.zeros_like(ref, dtype=torch.float64)
            for st, w in zip(states, weights, strict=True):
                acc += st[key].to(torch.float64) * (w / total)
            out[key] = acc.to(ref.dtype)
        else:
            out[key] = torch.stack([st[key] for st in states]).max(dim=0).values
    return out


Aggregator = Callable[..., tuple[dict[str, torch.Tensor], dict[str, float]]]
AGGREGATORS: Registry[Aggregator] = Registry("aggregation rule")
register_aggregator = AGGREGATORS.register


@register_aggregator("fedavg")
def aggregate_fedavg(global_model, results: list[ClientResult], labeled_data, cfg, round, seed):
    """FedAvg by client sample counts."""
    state = fedavg([r.state for r in results], [r.num_samples for r in results])
    return state, {"clients": len(results)}


@torch.no_grad()
def _ensemble_logits(models: list[nn.Module], x: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Logit of the sample-weighted mean client probability, (B, 1, H, W)."""
    total = float(sum(weights))
    p = sum(torch.sigmoid(m.eval()(x)) * (w / total) for m, w in zip(models, weights, strict=True))
    return torch.logit(p.clamp(1e-4, 1 - 1e-4))


@register_aggregator("distill")
def aggregate_distill(
    global_model: nn.Module,
    results: list[ClientResult],
    labeled_data: SegArrays,
    cfg: RunConfig,
    round: int,
    seed: int,
    sup_weight: float = 1.0,
):
    """Ensemble distillation on D_p into `global_model` (trained in place); cfg.distill_epochs passes."""
    models = [r.model for r in results]
    if any(m is None for m in models):
        raise ValueError("distill aggregation needs the client models")
    weights = [r.num_samples for r in results]
    prep = Preprocessing(size=cfg.image_size)
    gen = generator(seed, "distill")
    torch.manual_seed(seed % (2**63))
    b = min(cfg.batch_size, len(labeled_data))
    steps = epoch_steps(len(labeled_data), b, cfg.distill_epochs)
    cyc = Cycler(len(labeled_data), gen)
    total_kd = total_sup = 0.0
    device = model_device(global_model)
    with training_layout(cfg.precision, global_model):
        opt, sched = make_optimizer(global_model, cfg)
        for _ in range(steps):
            x, y = labeled_data.batch(cyc.take(b), prep, device)
            if cfg.weak_aug:
                x, (y,) = weak_augment(x, [y], gen)
            target = _ensemble_logits(models, x, weights)
            global_model.train()
            logits = forward(global_model, x, cfg.precision)
            loss_kd = kd_loss(logits, target, cfg.kd_temperature)
            loss_sup = seg_loss(logits, y)
            loss = loss_kd + sup_weight * loss_sup
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_kd += float(loss_kd.detach())
            total_sup += float(loss_sup.detach())
    return state_copy(global_model), {"distill_kd": total_kd / steps, "distill_sup": total_sup / steps}


def aggregate(
    strategy: str,
    global_model: nn.Module,
    results: list[ClientResult],
    labeled_data: SegArrays,
    cfg: RunConfig,
    round: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Run aggregation `strategy` ('fedavg' | 'distill' | registered) -> (global state, metrics)."""
    return AGGREGATORS.lookup(strategy)(global_model, results, labeled_data, cfg, round, seed)


@register_aggregator("dp-fedavg")
def aggregate_dp_fedavg(global_model, results: list[ClientResult], labeled_data, cfg, round, seed):
    """DP-FedAvg: `noisy_mean` of the client states around the global weights; (epsilon, delta)
    spent after `round` full-participation rounds."""
    from samfed.method.dp import noisy_mean, privacy_spent

    reference = state_copy(global_model)
    states = [r.state for r in results]
    new = noisy_mean(reference, states, cfg.dp_clip, cfg.dp_noise, generator(seed, "dp"))
    eps = privacy_spent(round, cfg.dp_noise, cfg.dp_delta)
    return new, {
        "clients": len(results), "dp_epsilon": eps, "dp_delta": cfg.dp_delta, "dp_clip": cfg.dp_clip,
        "dp_noise": cfg.dp_noise,
    }  # fmt: skip
