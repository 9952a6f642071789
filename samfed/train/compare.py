"""The comparison every federated run reports: the `supervised` baseline on the same split, and a
plain warning when the teacher starts below the global model.

`supervised` (samfed.method.methods) is the global model trained on D_p only: the same server
initialisation as the federated run (round 0 is shared, not trained twice), then, every round, as
many D_p steps as an average client update (`samfed.method.server.baseline_round`). It therefore
trains a little more than round 0, and ends exactly where `samfed train --method supervised` with
the same settings ends.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from samfed.config import RunConfig
from samfed.engine.seeds import baseline_seed
from samfed.method.server import baseline_round
from samfed.train.evaluation import evaluate_arrays

BASELINE = "supervised"


def mean_client_size(sizes: list[int]) -> int:
    """The steps budget of one `supervised` round: the mean number of client images."""
    return int(round(np.mean(sizes))) if sizes else 0


def supervised_rounds(model: nn.Module, sets, mean_client: int, cfg: RunConfig, prep, on_round) -> float:
    """Train `model` (holding the server initialisation) as the `supervised` method's rounds
    1..cfg.rounds (`mean_client` images' steps each), in place; `on_round(r, record)` gets each
    round's validation record. The global random state is left as it was. Returns the seconds."""
    t_all = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        for r in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            met = baseline_round(
                model, BASELINE, sets.labeled, None, mean_client, cfg, baseline_seed(cfg.seed, r)
            )
            rows = evaluate_arrays(model, sets.val, prep)
            on_round(
                r,
                {
                    "event": "baseline",
                    "method": BASELINE,
                    "round": r,
                    "val_dice": float(np.mean([x["dice"] for x in rows])),
                    "val_hd95": float(np.mean([x["hd95"] for x in rows])),
                    "loss": met["loss"],
                    "seconds": time.perf_counter() - t0,
                },
            )
    return time.perf_counter() - t_all


def round0_dice(records: list[dict]) -> float | None:
    """The global model's validation Dice after server initialisation (round 0)."""
    return next((r["val_dice"] for r in records if r.get("event") == "round" and r.get("round") == 0), None)


def teacher_warning(teacher_dice: float | None, global_dice: float | None) -> str | None:
    """One plain line when the teacher's validation Dice is below the round-0 global model's."""
    if teacher_dice is None or global_dice is None or not teacher_dice < global_dice:
        return None
    return (
        f"The teacher is worse than the global model at round 0 (teacher validation Dice "
        f"{teacher_dice:.3f} < {global_dice:.3f}), so its pseudo-labels may pull the students down: "
        "try more --teacher-epochs, another --teacher-prompt, --teacher-mode lora, or check that the "
        "masks match the images."
    )
