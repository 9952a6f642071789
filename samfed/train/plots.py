"""PNG plots of a run from its metrics records and its qualitative panel (matplotlib, Agg backend)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _by_round(records: list[dict], event: str, key: str, group: str | None = None) -> dict:
    """{group value: ([rounds], [values])} of records of `event` that have `key`."""
    out: dict = defaultdict(lambda: ([], []))
    for r in records:
        if r.get("event") == event and r.get(key) is not None:
            g = r.get(group) if group else None
            out[g][0].append(r["round"])
            out[g][1].append(r[key])
    return dict(out)


FONT = 9  # points: legible at the report's width
GLOBAL, SUPERVISED, TEACHER, PSEUDO = "black", "#d9822b", "#8c8c8c", "#2b6cb0"
CLIENTS = ("#4c9be8", "#4caf50", "#9c6ade", "#e05c8a", "#17becf", "#8c6d31", "#bcbd22")  # not the above


def _axes_style(ax, ylabel: str, xlabel: str = "round (0 = after server initialisation)") -> None:
    """Labels, grid, and whole-round ticks (every round when there are few)."""
    ax.set_xlabel(xlabel, fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.tick_params(labelsize=FONT)
    rounds = sorted({int(x) for line in ax.get_lines() if line.get_transform() == ax.transData
                     for x in line.get_xdata()})  # fmt: skip
    if 0 < len(rounds) <= 16:
        ax.set_xticks(rounds)
        ax.set_xlim(rounds[0] - 0.3, rounds[-1] + 0.3)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    _plt().close(fig)
    return path


def _client_mean(records: list[dict], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per round >= 1: (rounds, mean, min, max) over the client records that have `key`."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("event") == "client" and r.get("round", 0) >= 1 and r.get(key) is not None:
            by_round[r["round"]].append(r[key])
    rounds = sorted(by_round)
    vals = [by_round[k] for k in rounds]
    return rounds, [sum(v) / len(v) for v in vals], [min(v) for v in vals], [max(v) for v in vals]


def baseline_series(records: list[dict], key: str = "val_dice") -> tuple[list[int], list[float]]:
    """The supervised baseline per round, starting at the shared round 0 (empty without one)."""
    base = _by_round(records, "baseline", key).get(None)
    if not base:
        return [], []
    start = _by_round(records, "round", key).get(None, ([], []))
    r0 = [v for r, v in zip(*start, strict=True) if r == 0]
    return [0, *base[0]] if r0 else list(base[0]), [*r0, *base[1]]


def plot_val_dice(
    records: list[dict], path: Path, method: str = "global model", teacher_dice: float | None = None
) -> Path | None:
    """Validation Dice per round: the method's global model, each client model (thin), the
    supervised baseline from the same start, and the teacher's maps (a constant)."""
    series = _by_round(records, "round", "val_dice")
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.9), dpi=110)
    for client, (cr, cv) in sorted(_by_round(records, "client", "val_dice", "client").items()):
        color = CLIENTS[int(client) % len(CLIENTS)]
        ax.plot(cr, cv, ".--", lw=1, alpha=0.7, color=color, label=f"client {client}")
    rounds, vals = series[None]
    ax.plot(rounds, vals, "o-", lw=2.2, color=GLOBAL, label=f"{method} (global)", zorder=5)
    br, bv = baseline_series(records)
    if br:
        ax.plot(br, bv, "s-", lw=2, color=SUPERVISED, label="supervised (D_p only)", zorder=4)
    if teacher_dice is not None:
        ax.axhline(teacher_dice, ls=":", lw=1.8, color=TEACHER, label="teacher maps")
    _axes_style(ax, "validation Dice")
    ax.set_title("Validation Dice per round", fontsize=FONT + 1)
    ax.legend(fontsize=FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    return _save(fig, path)


def plot_loss(records: list[dict], path: Path) -> Path | None:
    """Training loss per round: the clients' mean total loss and its terms (federated methods) or
    the round's loss (baselines), and the supervised baseline's loss."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    drawn = False
    terms = [("loss", "total", "-", 2.0, PSEUDO), ("loss_sup", "L_sup", "--", 1.2, CLIENTS[1]),
             ("loss_sam", "L_sam", "-.", 1.2, CLIENTS[2]),
             ("loss_kd", "L_kd", ":", 1.4, CLIENTS[3])]  # fmt: skip
    for key, label, style, lw, color in terms:
        rounds, mean, _, _ = _client_mean(records, key)
        if rounds and any(v != 0 for v in mean):
            ax.plot(rounds, mean, style, marker=".", lw=lw, color=color, label=f"clients: {label}")
            drawn = True
    if not drawn:
        rounds, vals = _by_round(records, "round", "loss").get(None, ([], []))
        if rounds:
            ax.plot(rounds, vals, "o-", lw=2, color=GLOBAL, label="training loss")
            drawn = True
    br, bv = _by_round(records, "baseline", "loss").get(None, ([], []))
    if br:
        ax.plot(br, bv, "s-", lw=1.5, color=SUPERVISED, label="supervised baseline")
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    _axes_style(ax, "mean loss per step", "round")
    ax.set_title("Training loss (mean over clients)", fontsize=FONT + 1)
    ax.legend(fontsize=FONT, frameon=False)
    return _save(fig, path)


def plot_agreement(records: list[dict], path: Path, source: str = "teacher") -> Path | None:
    """Two panels per round, means over clients (band: lowest to highest client): how often the
    pseudo-labels' source map (the teacher, or for fixmatch the student's own weak view) and the
    local student agree and how often the pseudo-label differs from the source; the Dice (vs
    ground truth) of the source's labels and of the pseudo-labels."""
    rates = [("agreement_rate", f"{source} and student agree", PSEUDO),
             ("override_rate", f"pseudo-label differs from {source}", SUPERVISED)]  # fmt: skip
    have_rates = any(_client_mean(records, k)[0] for k, _, _ in rates)
    t_r, t_m, t_lo, t_hi = _client_mean(records, "teacher_dice")
    p_r, p_m, p_lo, p_hi = _client_mean(records, "pl_dice")
    if not have_rates and not t_r:
        return None
    plt = _plt()
    n = 1 + bool(t_r and have_rates)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.7), dpi=110, squeeze=False)
    ax = axes[0][0]
    if have_rates:
        for key, label, color in rates:
            r, m, lo, hi = _client_mean(records, key)
            ax.plot(r, m, "o-", lw=1.8, color=color, label=label)
            ax.fill_between(r, lo, hi, color=color, alpha=0.15, lw=0)
        ax.set_ylim(-0.02, 1.02)
        _axes_style(ax, "fraction of unlabeled pixels", "round")
        ax.set_title("Agreement on the clients' images", fontsize=FONT + 1)
        ax.legend(fontsize=FONT, frameon=False, loc="best")
        ax = axes[0][-1]
    if t_r:
        ax.plot(t_r, t_m, "s-", lw=5, ms=9, color=TEACHER, alpha=0.6, label=f"{source} labels")
        ax.fill_between(t_r, t_lo, t_hi, color=TEACHER, alpha=0.15, lw=0)
        if p_r:
            ax.plot(p_r, p_m, "o-", lw=1.6, color=PSEUDO, label="pseudo-labels", zorder=5)
            ax.fill_between(p_r, p_lo, p_hi, color=PSEUDO, alpha=0.12, lw=0)
        _axes_style(ax, "mean Dice per image vs ground truth", "round")
        same = p_r and max(abs(a - b) for a, b in zip(p_m, t_m, strict=False)) < 0.005
        title = "Label quality" + (f" (pseudo-labels = {source}'s)" if same else "")
        ax.set_title(title, fontsize=FONT + 1)
        ax.legend(fontsize=FONT, frameon=False)
    return _save(fig, path)


def _overlay(ax, image, mask=None, prob=None, color=(0.1, 0.85, 0.3), truth=None) -> None:
    """The image with a filled mask (or a probability heat map, alpha = probability) and the
    ground-truth outline (white) when given."""
    import numpy as np

    ax.imshow(image)
    layer = None
    if prob is not None:
        layer = np.zeros((*prob.shape, 4), np.float32)
        layer[..., :3] = color
        layer[..., 3] = 0.65 * np.clip(prob, 0, 1)
        if (prob > 0.5).any() and (prob <= 0.5).any():
            ax.contour(prob, levels=[0.5], colors=[color], linewidths=1)
    elif mask is not None:
        layer = np.zeros((*mask.shape, 4), np.float32)
        layer[..., :3] = color
        layer[..., 3] = 0.45 * mask
    if layer is not None:
        ax.imshow(layer)
    if truth is not None and truth.any() and not truth.all():
        ax.contour(truth.astype(float), levels=[0.5], colors="white", linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_qualitative(rows: list, path: Path) -> Path | None:
    """A grid, one row per `samfed.train.evaluation.PanelRow`: image | ground truth | teacher map
    | pseudo-label | final student mask (the last three outlined against the ground truth in
    white, each with its Dice); the teacher and pseudo-label columns only when the method has them."""
    if not rows:
        return None
    cols = [("image", None), ("ground truth", None)]
    if any(r.teacher is not None for r in rows):
        cols.append(("teacher map", "teacher"))
    if any(r.pseudo is not None for r in rows):
        cols.append(("pseudo-label", "pseudo"))
    cols.append(("final student", "student"))
    plt = _plt()
    fig, axes = plt.subplots(
        len(rows), len(cols), figsize=(1.75 * len(cols), 1.8 * len(rows) + 0.3), dpi=100, squeeze=False
    )
    colors = {"teacher": (1.0, 0.55, 0.1), "pseudo": (0.2, 0.5, 1.0), "student": (0.1, 0.85, 0.3)}
    for i, row in enumerate(rows):
        for j, (title, key) in enumerate(cols):
            ax = axes[i][j]
            if title == "image":
                _overlay(ax, row.image)
                ax.set_ylabel(row.id, fontsize=7)
            elif title == "ground truth":
                _overlay(ax, row.image, mask=row.truth, color=(1.0, 1.0, 1.0))
            elif key == "teacher":
                _overlay(ax, row.image, prob=row.teacher, color=colors[key], truth=row.truth)
            else:
                _overlay(ax, row.image, mask=getattr(row, key), color=colors[key], truth=row.truth)
            if key in row.dice:
                box = {"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0}
                ax.text(0.03, 0.04, f"Dice {row.dice[key]:.3f}", transform=ax.transAxes, fontsize=7,
                        color="white", bbox=box)  # fmt: skip
            if i == 0:
                ax.set_title(title, fontsize=FONT)
    return _save(fig, path)


def plot_bars(
    rows: list[dict], path: Path, key: str = "dice_mean", err: str = "dice_std", title: str = ""
) -> Path:
    """Horizontal bar chart of one metric per row label (benchmarks)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(rows) + 1.2), dpi=110)
    labels = [r["label"] for r in rows]
    vals = [r.get(key) or 0.0 for r in rows]
    errs = [r.get(err) or 0.0 for r in rows]
    ax.barh(labels, vals, xerr=errs, color="#4a7ab5", alpha=0.85)
    for i, v in enumerate(vals):
        ax.text(v + 0.005, i, f"{v:.3f}", va="center", fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(key)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
