"""Choose the artefact a clinic should run: fastest INT8 only if it is faster and keeps accuracy.

INT8 is refused when it is not faster than FP32 on the same backend (some CPUs lack fast INT8
kernels) or when it loses more than `max_dice_loss` Dice (against ground truth when held-out masks
exist, else mask agreement with the FP32 artefact). Torch-free.
"""

from __future__ import annotations

MAX_DICE_LOSS = 0.01  # 1 Dice point


def _p50(art: dict, batch: int = 1) -> float:
    lat = art.get("latency", {}).get(str(batch)) or art.get("latency", {}).get(batch)
    return float(lat["p50_ms"]) if lat else float("inf")


def recommend(artefacts: dict[str, dict], max_dice_loss: float = MAX_DICE_LOSS) -> tuple[str, str, list[str]]:
    """artefacts: key -> {"backend", "precision", "parity": {...}, "latency": {"1": {...}}}.

    Returns (recommended key, one-line reason, warnings that must be shown loudly).
    """
    fp32 = {k: a for k, a in artefacts.items() if a["precision"] == "fp32"}
    int8 = {k: a for k, a in artefacts.items() if a["precision"] == "int8"}
    warnings: list[str] = []
    ok_int8: dict[str, dict] = {}
    for k, a in int8.items():
        ref_key = next((f for f, fa in fp32.items() if fa["backend"] == a["backend"]), None)
        if ref_key is None:
            ok_int8[k] = a
            continue
        ref = fp32[ref_key]
        if _p50(a) >= _p50(ref):
            warnings.append(
                f"{k} is NOT faster than {ref_key} on this CPU ({_p50(a):.2f} ms vs {_p50(ref):.2f} ms at "
                "batch 1): INT8 brings no benefit here."
            )
            continue
        gt_a, gt_r = a["parity"].get("dice_vs_gt"), ref["parity"].get("dice_vs_gt")
        if gt_a is not None and gt_r is not None:
            loss, what = gt_r - gt_a, "Dice vs ground truth"
        else:
            loss, what = 1.0 - a["parity"].get("dice_vs_fp32", a["parity"]["dice_mean"]), "mask agreement"
        if loss > max_dice_loss:
            warnings.append(
                f"{k} loses {100 * loss:.2f} Dice points vs {ref_key} ({what}), more than "
                f"{100 * max_dice_loss:.1f}: INT8 is not accurate enough for this model."
            )
            continue
        ok_int8[k] = a
    pool = {**fp32, **ok_int8}
    if not pool:
        raise ValueError("no artefacts to recommend")
    best = min(pool, key=lambda k: _p50(pool[k]))
    if ok_int8 and best not in int8:
        reason = "fastest artefact at batch 1 (an FP32 artefact beats every accepted INT8 one)"
    elif int8 and best not in int8:
        warnings.append(f"Recommending FP32 artefact {best}: no INT8 artefact is both faster and accurate.")
        reason = "fastest FP32 artefact; INT8 was rejected (see warnings)"
    elif best in int8:
        reason = "fastest artefact at batch 1; INT8 is faster than FP32 and within the Dice tolerance"
    else:
        reason = "fastest FP32 artefact at batch 1 (no INT8 exported)"
    return best, reason, warnings
