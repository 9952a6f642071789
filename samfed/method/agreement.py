"""Adaptive agreement: per-pixel pseudo-labels and weights from teacher, global and local maps.

All inputs are probabilities of the foreground class, shape (B, 1, H, W), values in [0, 1], no
gradient. Confidence of a map p is k = max(p, 1 - p); its hard label is [p > 0.5]. Every rule
returns `(label, weight)`, both (B, 1, H, W) float32, label in {0, 1}, weight in [0, 1].

Variants (``AGREEMENTS``; docs/method.md gives the measurements that chose the default):

- ``teacher``: the teacher's hard label everywhere, weight 1 (no agreement; `sam-only`).
- ``naive``: teacher and local agree -> that label, weight 1; they disagree -> the more confident
  source's label, weight |k_T - k_L|.
- ``ignore``: teacher label where teacher and local agree (weight 1), weight 0 where they disagree.
- ``vote``: majority of the hard labels of teacher, global and local; weight = the vote margin
  (1 when unanimous, 1/3 for two against one).
- ``anneal``: on disagreement the student's say is its confidence scaled by the ramp r(t) in [0, 1]
  (about 0 at the start of round 1, 1 after the ramp): e = r * k_L; label = student where e > k_T, else the
  teacher; weight = |e - k_T| / max(e, k_T). With r = 0 this IS the teacher-only rule.
- ``weighted``: ``anneal`` plus two guards against the student's confident mistakes:
  the local student only speaks where the global model agrees with it (the global model vetoes),
  its confidence is the smaller of the two, k_S = min(k_L, k_G), and it must reach ``tau``. With a
  weak student (global model disagrees, low confidence, early rounds) the rule falls back to
  plain teacher labels: the student can only overturn the teacher where two students confidently
  agree.
- ``override`` (the RunConfig default): the labels of ``weighted`` with weight 1 everywhere, so
  the disagreement pixels (mostly lesion borders) keep their full weight in the loss.
- ``reliable``: the labels of ``override``; one weight per image, its reliability: the Dice of the
  teacher's and the global model's hard masks (1 when both are empty), ramped as
  1 - r(t) * (1 - Dice). An image where the teacher and the global model see different lesions
  has a label that one of them gets wrong, so it counts less (image-level selection of reliable
  pseudo-labels, as in ST++; here the global model, not an earlier checkpoint, is the second
  opinion).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from samfed.registry import Registry

AgreementRule = Callable[..., tuple[torch.Tensor, torch.Tensor]]
AGREEMENTS: Registry[AgreementRule] = Registry("agreement variant")
NEEDS_GLOBAL = ("weighted", "override", "vote", "reliable")  # variants that read the global model's map


def confidence(p: torch.Tensor) -> torch.Tensor:
    """max(p, 1 - p), same shape as p."""
    return torch.maximum(p, 1.0 - p)


def _student_override(
    s: torch.Tensor, e: torch.Tensor, hard_student: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher label unless the student's effective confidence e beats k_T; relative-margin weight."""
    ht = (s > 0.5).float()
    kt = confidence(s)
    disagree = ht != hard_student
    student_wins = disagree & (e > kt)
    label = torch.where(student_wins, hard_student, ht)
    margin = (e - kt).abs() / torch.maximum(e, kt).clamp_min(1e-6)
    weight = torch.where(disagree, margin, torch.ones_like(s))
    return label, weight


def agreement(
    s: torch.Tensor,
    g: torch.Tensor | None,
    l: torch.Tensor,  # noqa: E741 - the notation of docs/method.md
    variant: str = "weighted",
    ramp: float = 1.0,
    tau: float = 0.8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-label and per-pixel weight, each (B, 1, H, W) float32, by rule `variant` (AGREEMENTS).

    s, g, l: teacher, global and local foreground probabilities (B, 1, H, W); g may be None for the
    variants that do not use it (``teacher``, ``naive``, ``ignore``, ``anneal``).
    ramp: the student's say in [0, 1] this round (``anneal``, ``weighted``).
    tau: minimal student confidence min(k_L, k_G) for ``weighted`` to let the students speak.
    """
    rule = AGREEMENTS.lookup(variant)
    return rule(s.float(), None if g is None else g.float(), l.float(), float(ramp), tau)


def _needs_global(g: torch.Tensor | None, variant: str) -> torch.Tensor:
    if g is None:
        raise ValueError(f"agreement variant {variant!r} needs the global model's map g")
    return g


def _global_local(s, g, l, ramp: float, tau: float, weighted: bool):  # noqa: E741
    """``weighted`` / ``override``: the students speak where global and local agree, each at least
    `tau` confident; they overrule the teacher where their ramped confidence beats its own."""
    hl, hg = (l > 0.5).float(), (g > 0.5).float()
    ks = torch.minimum(confidence(l), confidence(g))
    speaks = (hg == hl) & (ks >= tau)
    e = torch.where(speaks, ramp * ks, torch.zeros_like(ks))
    label, weight = _student_override(s, e, hl)
    return (label, weight) if weighted else (label, torch.ones_like(s))


@AGREEMENTS.register("weighted")
def _weighted(s, g, l, ramp, tau):  # noqa: E741
    return _global_local(s, _needs_global(g, "weighted"), l, ramp, tau, weighted=True)


@AGREEMENTS.register("override")
def _override(s, g, l, ramp, tau):  # noqa: E741
    return _global_local(s, _needs_global(g, "override"), l, ramp, tau, weighted=False)


@AGREEMENTS.register("reliable")
def _reliable(s, g, l, ramp, tau):  # noqa: E741
    """``override``'s labels, weighted per image by the teacher-global Dice (ramped)."""
    g = _needs_global(g, "reliable")
    label, _ = _global_local(s, g, l, ramp, tau, weighted=False)
    dice = mask_dice((s > 0.5).flatten(1), (g > 0.5).flatten(1))
    weight = 1.0 - ramp * (1.0 - dice)
    return label, weight.view(-1, 1, 1, 1).expand_as(s).contiguous()


@AGREEMENTS.register("ignore")
def _ignore(s, g, l, ramp, tau):  # noqa: E741
    """Teacher label; weight 0 where teacher and local student disagree."""
    return (s > 0.5).float(), ((s > 0.5) == (l > 0.5)).float()


@AGREEMENTS.register("vote")
def _vote(s, g, l, ramp, tau):  # noqa: E741
    """Majority of teacher, global and local; weight from the vote margin."""
    votes = (s > 0.5).float() + (_needs_global(g, "vote") > 0.5).float() + (l > 0.5).float()
    return (votes >= 2).float(), (votes / 3.0 - 0.5).abs() * 2.0


@AGREEMENTS.register("anneal")
def _anneal(s, g, l, ramp, tau):  # noqa: E741
    """The local student overrules the teacher with its confidence scaled by the ramp."""
    return _student_override(s, ramp * confidence(l), (l > 0.5).float())


@AGREEMENTS.register("naive")
def _naive(s, g, l, ramp, tau):  # noqa: E741
    """The more confident of teacher and local student; weight their confidence gap."""
    ht, hl = (s > 0.5).float(), (l > 0.5).float()
    kt, kl = confidence(s), confidence(l)
    disagree = ht != hl
    label = torch.where(disagree & (kl > kt), hl, ht)
    return label, torch.where(disagree, (kt - kl).abs(), torch.ones_like(s))


@AGREEMENTS.register("teacher")
def _teacher(s, g, l, ramp, tau):  # noqa: E741
    """The teacher's label everywhere, full weight."""
    return (s > 0.5).float(), torch.ones_like(s)


def agreement_stats(
    s: torch.Tensor,
    l: torch.Tensor,  # noqa: E741
    label: torch.Tensor,
    weight: torch.Tensor,
    gt: torch.Tensor | None = None,
) -> dict[str, float]:
    """Sums for logging (divide by ``pixels``/``weight_sum`` later): agreement of teacher and local
    hard labels, pseudo-labels that differ from the teacher, and, with ground truth (B, 1, H, W),
    accuracy of the teacher, of the pseudo-labels, and of the pseudo-labels weighted by `weight`.
    With ground truth also the summed per-image Dice of the teacher's and the pseudo-labels' masks
    (``images`` of them; both empty = 1): pixel accuracy hides lesion-level gains on small lesions.
    Values are 0-dim float tensors on the inputs' device (summing them needs no host sync)."""
    ht, hl = s > 0.5, l > 0.5
    out = {
        "pixels": torch.tensor(float(s.numel()), device=s.device),
        "agree": (ht == hl).sum().float(),
        "override": ((label > 0.5) != ht).sum().float(),
        "weight_sum": weight.sum().float(),
    }
    if gt is not None:
        g = gt > 0.5
        correct = (label > 0.5) == g
        out["teacher_correct"] = (ht == g).sum().float()
        out["pl_correct"] = correct.sum().float()
        out["pl_correct_weighted"] = (correct.float() * weight).sum()
        out["images"] = torch.tensor(float(len(s)), device=s.device)
        out["teacher_dice"] = mask_dice(ht, g).sum()
        out["pl_dice"] = mask_dice(label > 0.5, g).sum()
    return out


def mask_dice(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """(B, ...) bool masks -> (B,) Dice per image, on their device; 1 where both are empty (the
    samfed.metrics convention)."""
    inter = (pred & gt).flatten(1).sum(1).float()
    total = (pred.flatten(1).sum(1) + gt.flatten(1).sum(1)).float()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total))
