"""Server-side steps shared by every runner: initialisation, client warm-up, baseline rounds.

- `init_global`: train the global student M_G on D_p (cfg.server_epochs passes) [paper].
- `warmup_client`: before the first round a client gets a model trained on D_p. A client whose
  architecture is the global one copies M_G (already trained on D_p, so the warm-up is done);
  another architecture is trained on D_p for cfg.warmup_epochs passes.
- `recalibrate_bn` (optional, cfg.bn_recalibration): after each aggregation the server re-estimates
  the global model's BatchNorm running statistics on D_p, un-augmented (the weights are unchanged):
  running statistics accumulated on strongly augmented local batches and averaged across non-IID
  clients need not match clean images.
- `baseline_round`: one round of the non-federated baselines, `supervised` (D_p only, as many
  steps as an average client update) and `centralised` (all labeled data pooled, cfg.local_epochs
  passes).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from samfed.config import RunConfig
from samfed.method.arrays import SegArrays, derive_seed
from samfed.method.device import model_device
from samfed.method.local_update import epoch_steps, supervised_steps


def init_global(model: nn.Module, labeled: SegArrays, cfg: RunConfig, seed: int) -> dict[str, float]:
    """Supervised training of the global model on D_p from scratch, in place."""
    steps = epoch_steps(len(labeled), min(cfg.batch_size, len(labeled)), cfg.server_epochs)
    return supervised_steps(model, labeled, cfg, steps, derive_seed(seed, "init_global"), warmup=False)


def warmup_client(
    local_model: nn.Module, arch: str, global_model: nn.Module, labeled: SegArrays, cfg: RunConfig, seed: int
) -> dict[str, float]:
    """Supervised warm-up of a client model on D_p, in place (copies M_G for the global arch)."""
    if arch == cfg.global_arch:
        local_model.load_state_dict(global_model.state_dict())
        return {"loss": 0.0, "steps": 0, "copied_global": 1}
    steps = epoch_steps(len(labeled), min(cfg.batch_size, len(labeled)), cfg.warmup_epochs)
    return supervised_steps(local_model, labeled, cfg, steps, seed, warmup=False)


def baseline_round(
    model: nn.Module,
    kind: str,
    labeled: SegArrays,
    pooled: SegArrays | None,
    mean_client: int,
    cfg: RunConfig,
    seed: int,
) -> dict[str, float]:
    """One round of `supervised` (D_p, steps of a mean client update) or `centralised` (pooled)."""
    b = cfg.batch_size
    if kind == "supervised":
        return supervised_steps(model, labeled, cfg, epoch_steps(mean_client, b, cfg.local_epochs), seed)
    if kind == "centralised":
        if pooled is None or pooled.masks is None:
            raise ValueError("centralised training needs masks for every client image")
        return supervised_steps(model, pooled, cfg, epoch_steps(len(pooled), b, cfg.local_epochs), seed)
    raise ValueError(f"unknown baseline kind {kind!r}")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, labeled: SegArrays, cfg: RunConfig) -> int:
    """Reset the BatchNorm running statistics of `model` and re-estimate them as the exact mean over
    D_p's un-augmented images, in order, in batches of cfg.batch_size (train-mode forward passes
    without gradients); weights and momentum are left as they were. Returns the number of
    BatchNorm layers (0: nothing to do, e.g. GroupNorm students)."""
    from samfed.preprocess import Preprocessing

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(labeled) == 0:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    prep, device, b = Preprocessing(size=cfg.image_size), model_device(model), cfg.batch_size
    for start in range(0, len(labeled), b):
        x, _ = labeled.batch(np.arange(start, min(start + b, len(labeled))), prep, device)
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return len(norms)
