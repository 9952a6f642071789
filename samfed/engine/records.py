"""The per-round records of metrics.jsonl and the console line of each round."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from samfed.train.evaluation import evaluate_arrays

if TYPE_CHECKING:
    from samfed.engine.engine import Engine


def log_round(engine: Engine, r: int, agg: dict, client_metrics: dict, seconds: float) -> None:
    """Validate the global model and every client model (with FedAvg a client model is the
    pre-aggregation copy; at round 0 the warm-up model); log one record per client and the round
    record (`seconds`: the round's time; for round 0 the server initialisation's)."""
    run, glob, clients, sets, prep = engine.run, engine.glob, engine.clients, engine.sets, engine.prep
    say = engine.say
    rows = evaluate_arrays(glob, sets.val, prep)
    dice = float(np.mean([x["dice"] for x in rows]))
    hd = float(np.mean([x["hd95"] for x in rows]))
    client_dice = []
    for k, m in enumerate(clients):
        cd = float(np.mean([x["dice"] for x in evaluate_arrays(m, sets.val, prep, with_hd95=False)]))
        client_dice.append(cd)
        run.log({"event": "client", "round": r, "client": k, **client_metrics.get(k, {}), "val_dice": cd})
    run.log(
        {
            "event": "round",
            "round": r,
            "val_dice": dice,
            "val_hd95": hd,
            "seconds": seconds,
            "client_val_dice": client_dice,
            **agg,
        }
    )
    extra = ""
    source = "teacher" if any(m is not None for m in sets.teacher_maps) else "source"
    recs = list(client_metrics.values())
    agree = [x["agreement_rate"] for x in recs if x.get("agreement_rate") is not None]
    pl = [x for x in recs if x.get("pl_dice") is not None]
    if agree:
        extra += f", agreement {np.mean(agree):.3f}"
    if pl:
        extra += (
            f", pseudo-label Dice {np.mean([x['pl_dice'] for x in pl]):.3f} "
            f"({source} {np.mean([x['teacher_dice'] for x in pl]):.3f})"
        )
    cl = f" (clients {', '.join(f'{d:.3f}' for d in client_dice)})" if client_dice else ""
    say(f"round {r}: global val Dice {dice:.3f}, HD95 {hd:.1f}{cl}{extra}, {seconds:.1f} s")
