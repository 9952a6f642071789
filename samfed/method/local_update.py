"""One client's local update: the same function for the in-process runner and the Flower client.

Each step mixes a batch of labeled D_p images and a batch of the client's unlabeled images:

    L = L_sup(D_p) + lambda_sam(t) * L_sam + lambda_kd(t) * L_kd    (docs/method.md, "The client round")

- weak augmentation (same geometry) on images, teacher maps and masks; strong colour jitter on the
  student's unlabeled input;
- the pseudo-label source depends on the method: the adaptive agreement of teacher, global and
  local maps (`samfed`), teacher hard labels (`sam-only`, `samfed-no-agreement`), the student's own
  confident weak-view predictions (`fixmatch`), or none (`samfed-no-sam`);
- L_kd: two-class KL from the frozen global model (weak view) to the student (strong view).

Client masks, when present, only feed the logged pseudo-label accuracy, never a loss.
All randomness comes from `seed`, so a (round, client) update is reproducible on its own.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from samfed.config import RunConfig
from samfed.method.agreement import NEEDS_GLOBAL, agreement, agreement_stats
from samfed.method.arrays import Cycler, SegArrays, generator
from samfed.method.augment import strong_augment, weak_augment
from samfed.method.device import model_device
from samfed.method.losses import kd_loss, seg_loss, sigmoid_rampup
from samfed.method.methods import method_spec
from samfed.method.precision import forward, training_layout
from samfed.preprocess import Preprocessing


@dataclass(frozen=True)
class Ramps:
    """lambda_sam, lambda_kd and the students' say in the agreement at a point of the schedule."""

    lambda_sam: float
    lambda_kd: float
    agree: float


def ramps(cfg: RunConfig, progress: float) -> Ramps:
    """progress: rounds completed before this step (round - 1 + fraction of the local update)."""
    r = sigmoid_rampup(progress, cfg.rampup_rounds)
    return Ramps(cfg.lambda_sam * r, cfg.lambda_kd * r, sigmoid_rampup(progress, cfg.agreement_rampup))


def make_optimizer(
    model: nn.Module, cfg: RunConfig, warmup: bool = True
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Adam with the run's learning rate and weight decay (a fresh one per update), and its linear
    warm-up: the learning rate ramps from lr / W to lr over the first W = cfg.lr_warmup steps (call
    `sched.step()` after every `opt.step()`; W = 0 or warmup=False: none). A fresh Adam's
    bias-corrected first steps are about lr * sign(g) for every parameter, whatever the gradient's
    size; the warm-up keeps those first steps of a round from undoing the trained weights it starts
    from (training from scratch passes warmup=False). The fused CUDA kernel on a GPU (one launch per
    step instead of several per parameter)."""
    fused = True if model_device(model).type == "cuda" else None  # None: torch's default on a CPU
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    steps = cfg.lr_warmup if warmup else 0
    return opt, LambdaLR(opt, lambda t: min(1.0, (t + 1) / steps) if steps > 0 else 1.0)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU clone of a state dict."""
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def first_nonfinite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of a state dict holding NaN or inf, else None."""
    return next(
        (k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None
    )


def _labeled_batch(labeled: SegArrays, idx: torch.Tensor, cfg: RunConfig, prep: Preprocessing, gen, device):
    x, y = labeled.batch(idx, prep, device)
    if cfg.weak_aug:
        x, (y,) = weak_augment(x, [y], gen)
    return x, y


def supervised_steps(
    model: nn.Module,
    labeled: SegArrays,
    cfg: RunConfig,
    steps: int,
    seed: int,
    prep: Preprocessing | None = None,
    warmup: bool = True,
) -> dict[str, float]:
    """`steps` Adam steps of BCE + Dice on weakly augmented labeled batches (`make_optimizer`'s
    learning-rate warm-up unless warmup=False: training from scratch); returns mean loss."""
    prep = prep or Preprocessing(size=cfg.image_size)
    gen = generator(seed, "supervised")
    torch.manual_seed(seed % (2**63))
    cyc = Cycler(len(labeled), gen)
    device = model_device(model)
    model.train()
    total = torch.zeros((), device=device)
    with training_layout(cfg.precision, model):
        opt, sched = make_optimizer(model, cfg, warmup)
        for _ in range(steps):
            idx = cyc.take(min(cfg.batch_size, len(labeled)))
            x, y = _labeled_batch(labeled, idx, cfg, prep, gen, device)
            loss = seg_loss(forward(model, x, cfg.precision), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach()
    return {"loss": float(total) / max(steps, 1), "steps": steps}


def epoch_steps(n: int, batch_size: int, epochs: int) -> int:
    """Optimiser steps for `epochs` passes over n samples."""
    return max(1, math.ceil(n / batch_size)) * epochs


def client_update(
    global_model: nn.Module,
    local_model: nn.Module,
    client_data: SegArrays,
    teacher_maps: np.ndarray | None,
    labeled_data: SegArrays,
    cfg: RunConfig,
    round: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
    """Train `local_model` in place for cfg.local_epochs over `client_data`; round is 1-based.

    global_model: the model received this round (frozen, eval mode; used by KD and the agreement).
    With FedAvg aggregation the local model first takes the global weights; with heterogeneous
    aggregation it keeps its own. teacher_maps: (N, S, S) float teacher probabilities aligned with
    client_data (None for methods without a teacher).
    Returns (state dict copy, number of client samples, metrics: mean losses, agreement rate,
    pseudo-label accuracy vs ground truth when client masks exist, ramps, steps, seconds).
    """
    spec = method_spec(cfg.method)
    if spec.needs_teacher and teacher_maps is None:
        raise ValueError(f"method {cfg.method} needs teacher maps")
    t0 = time.perf_counter()
    prep = Preprocessing(size=cfg.image_size)
    if not cfg.clients_keep_weights:
        local_model.load_state_dict(global_model.state_dict())
    gen = generator(seed, "client_update")
    torch.manual_seed(seed % (2**63))
    needs_global = spec.kd or (spec.pseudo == "agreement" and cfg.agreement in NEEDS_GLOBAL)
    frozen_global = None
    if needs_global:
        frozen_global = copy.deepcopy(global_model).eval()
        for p in frozen_global.parameters():
            p.requires_grad_(False)
    device = model_device(local_model)
    maps = None if teacher_maps is None else torch.from_numpy(np.asarray(teacher_maps, np.float32)).to(device)

    n_u = len(client_data)
    b_u = min(cfg.batch_size, n_u)
    b_l = min(cfg.batch_size, len(labeled_data))
    steps = epoch_steps(n_u, b_u, cfg.local_epochs)
    cyc_u, cyc_l = Cycler(n_u, gen), Cycler(len(labeled_data), gen)
    local_model.train()

    sums: dict[str, torch.Tensor] = {}  # device tensors: one host sync at the end, not per step
    with training_layout(cfg.precision, local_model, frozen_global):
        opt, sched = make_optimizer(local_model, cfg)
        for step in range(steps):
            rp = ramps(cfg, round - 1 + step / steps)
            xl, yl = _labeled_batch(labeled_data, cyc_l.take(b_l), cfg, prep, gen, device)
            iu = cyc_u.take(b_u)
            xu, gt = client_data.batch(iu, prep, device)
            s = None if maps is None else maps[iu.to(device), None]
            if cfg.weak_aug:
                xu, (s, gt) = weak_augment(xu, [s, gt], gen)
            xs = strong_augment(xu, gen) if cfg.strong_aug else xu

            logits = forward(local_model, torch.cat([xl, xs]), cfg.precision)
            lg_l, lg_u = logits[: len(xl)], logits[len(xl) :]
            loss_sup = seg_loss(lg_l, yl)
            g_logits = None
            if frozen_global is not None:
                with torch.no_grad():
                    g_logits = forward(frozen_global, xu, cfg.precision)
            loss_sam = torch.zeros((), device=device)
            stats: dict[str, torch.Tensor] = {}
            if spec.pseudo is not None:
                label, weight, src = _pseudo_labels(spec.pseudo, local_model, xu, lg_u, s, g_logits, cfg, rp)
                loss_sam = seg_loss(lg_u, label, weight)
                stats = agreement_stats(src, torch.sigmoid(lg_u.detach()), label, weight, gt)
            loss_kd = (
                kd_loss(lg_u, g_logits, cfg.kd_temperature, _kd_gate(cfg, s, g_logits))
                if spec.kd
                else torch.zeros((), device=device)
            )
            loss = loss_sup + rp.lambda_sam * loss_sam + rp.lambda_kd * loss_kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {
                "loss": loss,
                "loss_sup": loss_sup,
                "loss_sam": loss_sam,
                "loss_kd": loss_kd,
            }.items():
                sums[k] = sums.get(k, 0.0) + v.detach()
            for k, v in stats.items():
                sums["n_" + k] = sums.get("n_" + k, 0.0) + v

    totals = {k: float(v) for k, v in sums.items()}
    metrics = {k: totals[k] / steps for k in ("loss", "loss_sup", "loss_sam", "loss_kd")}
    metrics.update(_rates(totals))
    last = ramps(cfg, round)
    metrics.update(lambda_sam=last.lambda_sam, lambda_kd=last.lambda_kd, ramp_agree=last.agree)
    metrics.update(steps=steps, seconds=time.perf_counter() - t0)
    return state_copy(local_model), n_u, metrics


def _kd_gate(cfg: RunConfig, s: torch.Tensor | None, g_logits: torch.Tensor) -> torch.Tensor | None:
    """Per-pixel KD weight (B, 1, H, W): 1 where the global model's hard label equals the teacher's
    (``kd_gate = "teacher"``), so KD adds the global model's soft boundaries without pulling the
    student towards the global model's mistakes; None (plain mean) otherwise."""
    if cfg.kd_gate != "teacher" or s is None:
        return None
    return ((g_logits > 0) == (s > 0.5)).float()


def _pseudo_labels(pseudo, local_model, xu, lg_u, s, g_logits, cfg: RunConfig, rp: Ramps):
    """(label, weight, source map the labels start from), each (B, 1, H, W)."""
    if pseudo == "self":
        with torch.no_grad():
            local_model.eval()
            p = torch.sigmoid(forward(local_model, xu, cfg.precision))
            local_model.train()
        conf = torch.maximum(p, 1 - p)
        return (p > 0.5).float(), (conf >= cfg.fixmatch_threshold).float(), p
    variant = "teacher" if pseudo == "teacher" else cfg.agreement
    g = None if g_logits is None else torch.sigmoid(g_logits)
    label, weight = agreement(
        s, g, torch.sigmoid(lg_u.detach()), variant, ramp=rp.agree, tau=cfg.agreement_tau
    )
    return label, weight, s


def _rates(sums: dict[str, float]) -> dict[str, float]:
    """Turn summed counts into rates: agreement, overrides, mean weight, accuracies, mean Dice."""
    px = sums.get("n_pixels", 0.0)
    if px == 0:
        return {}
    out = {
        "agreement_rate": sums["n_agree"] / px,
        "override_rate": sums["n_override"] / px,
        "weight_mean": sums["n_weight_sum"] / px,
    }
    if "n_pl_correct" in sums:
        out["teacher_acc"] = sums["n_teacher_correct"] / px
        out["pl_acc"] = sums["n_pl_correct"] / px
        out["pl_acc_weighted"] = sums["n_pl_correct_weighted"] / max(sums["n_weight_sum"], 1e-9)
        out["teacher_dice"] = sums["n_teacher_dice"] / sums["n_images"]
        out["pl_dice"] = sums["n_pl_dice"] / sums["n_images"]
    return out
