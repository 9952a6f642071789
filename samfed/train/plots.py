"""PNG plots of a run from its metrics records (matplotlib, Agg backend, no display needed)."""

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


def plot_val_dice(records: list[dict], path: Path, title: str = "") -> Path | None:
    """Validation Dice of the global model (and of each client model) per round."""
    series = _by_round(records, "round", "val_dice")
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    rounds, vals = series[None]
    ax.plot(rounds, vals, "o-", lw=2, color="black", label="global")
    for client, (cr, cv) in sorted(_by_round(records, "client", "val_dice", "client").items()):
        ax.plot(cr, cv, ".--", lw=1, alpha=0.8, label=f"client {client}")
    ax.set_xlabel("round (0 = after server initialisation)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("validation Dice")
    ax.set_title(title or "Validation Dice per round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_agreement(records: list[dict], path: Path) -> Path | None:
    """Per round and client, two panels: pixel rates (teacher/local agreement, pseudo-label and
    teacher accuracy) and per-image Dice of the pseudo-labels and of the teacher (vs ground truth)."""
    panels = [
        (
            "fraction of unlabeled pixels",
            [
                ("agreement_rate", "agreement rate", "-"),
                ("pl_acc", "pseudo-label acc.", "--"),
                ("teacher_acc", "teacher acc.", ":"),
            ],
        ),
        (
            "mean Dice per image",
            [("pl_dice", "pseudo-label Dice", "--"), ("teacher_dice", "teacher Dice", ":")],
        ),
    ]
    data = {k: _by_round(records, "client", k, "client") for _, keys in panels for k, _, _ in keys}
    panels = [(y, keys) for y, keys in panels if any(data[k] for k, _, _ in keys)]
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), dpi=110, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (ylabel, keys) in zip(axes[0], panels, strict=True):
        for key, label, style in keys:
            for client, (r, v) in sorted(data[key].items()):
                ax.plot(
                    r,
                    v,
                    style,
                    marker=".",
                    color=colors[int(client) % len(colors)],
                    label=f"{label} c{client}",
                )
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Agreement and pseudo-label quality (vs ground truth)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


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
