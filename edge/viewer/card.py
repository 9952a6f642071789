"""The model card the viewer shows, built from a verified export manifest (untrusted JSON).

Only strings, finite numbers and booleans of known fields are passed on, so the page never has to
interpret manifest values; the page inserts them as text.
"""

from __future__ import annotations

import math
from pathlib import PurePath

from edge.predictor import Predictor

NOTICE = (
    "Not a medical device; research use only. The outline is a model's estimate and must not be "
    "used for diagnosis or treatment decisions."
)


def _num(value: object) -> float | None:
    """A finite JSON number as float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: object, limit: int = 300) -> str | None:
    """A string of at most `limit` characters, else None."""
    return value[:limit] if isinstance(value, str) else None


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _data_set(value: object) -> dict | None:
    """A calibration/held-out description {n, source, has_masks} with checked types, None if absent."""
    d = _dict(value)
    if not d:
        return None
    return {"n": _num(d.get("n")), "source": _text(d.get("source")), "has_masks": d.get("has_masks") is True}


def _artefact_row(key: str, a: dict) -> dict:
    """One artefact's measured quality and speed, as the manifest records them."""
    parity, latency = _dict(a.get("parity")), _dict(_dict(a.get("latency")).get("1"))
    return {
        "key": key,
        "backend": _text(a.get("backend")),
        "precision": _text(a.get("precision")),
        "dice_vs_gt": _num(parity.get("dice_vs_gt")),
        "dice_vs_torch": _num(parity.get("dice_mean")),
        "dice_vs_fp32": _num(parity.get("dice_vs_fp32")),
        "p50_ms": _num(latency.get("p50_ms")),
    }


def _training(data: dict) -> dict:
    """What the export says about the data the model was trained and checked on."""
    training = {k: _text(v) or _num(v) for k, v in _dict(data.get("training")).items() if isinstance(k, str)}
    run = _text(data.get("source_run"))
    return {
        "source_run": PurePath(run).name if run else None,
        "training": {k: v for k, v in training.items() if v is not None} or None,
        "calibration": _data_set(data.get("calibration")),
        "heldout": _data_set(data.get("heldout")),
        "torch_dice_vs_gt": _num(_dict(data.get("torch_reference")).get("dice_vs_gt")),
    }


def model_card(predictor: Predictor) -> dict:
    """JSON-able card: model, data, measured Dice/latency per artefact, what runs now, the notice."""
    session, man = predictor.session, predictor.manifest
    in_use = {
        "artefact": predictor.artefact,
        "backend": session.backend,
        "precision": man.artefacts[predictor.artefact].precision if man is not None else None,
        "threads": session.threads,
        "input_size": predictor.prep.size,
        "threshold": predictor.threshold,
    }
    card = {"notice": NOTICE, "in_use": in_use, "verified": man is not None}
    if man is None:
        return card | {"model": {"file": session.path.name}, "artefacts": []}
    data = man.data
    cpu = _dict(data.get("cpu"))
    card["model"] = {
        "arch": _text(data.get("arch")),
        "norm": _text(data.get("norm")),
        "created": _text(data.get("created")),
        "samfed_version": _text(data.get("samfed_version")),
        "signer": man.signer,
        "recommended": man.recommended,
        "recommendation_reason": _text(data.get("recommendation_reason"), 500),
        "measured_on": _text(cpu.get("model")),
        "measured_threads": _num(data.get("threads")),
    }
    card["data"] = _training(data)
    arts = _dict(data.get("artefacts"))
    card["artefacts"] = [_artefact_row(k, _dict(arts.get(k))) for k in man.artefacts]
    return card
