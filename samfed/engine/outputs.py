"""A finished run's outputs: checkpoints, final scores, plots, report, summary and manifest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from samfed.config import RunConfig
from samfed.engine.data import Sets
from samfed.engine.state import compact_finished_state
from samfed.method.arrays import SegArrays
from samfed.method.methods import method_spec
from samfed.train.compare import round0_dice, teacher_warning
from samfed.train.evaluation import evaluate_arrays
from samfed.train.run_dir import RunDir

if TYPE_CHECKING:
    from samfed.engine.engine import Engine

INIT_STAGES = ("server init", "teacher fine-tune", "teacher maps", "client warm-up")


def comparison_line(summary: dict) -> str:
    """'global validation Dice 0.712 (round 0: 0.650; supervised: 0.661)' from a summary."""
    c = summary.get("comparison") or {}
    line = f"global validation Dice {summary['val_dice']:.3f}"
    extra = []
    if c.get("round0_val_dice") is not None:
        extra.append(f"round 0: {c['round0_val_dice']:.3f}")
    if c.get("supervised_val_dice") is not None:
        extra.append(f"supervised: {c['supervised_val_dice']:.3f}")
    return line + (f" ({'; '.join(extra)})" if extra else "")


def _score(model, arch: str, name: str, split_name: str, data: SegArrays, prep) -> dict:
    from samfed.metrics import summarize

    s = summarize(evaluate_arrays(model, data, prep))
    return {
        "model": name,
        "arch": arch,
        "split": split_name,
        "dice_mean": s["dice"]["mean"],
        "dice_std": s["dice"]["std"],
        "hd95_mean": s["hd95"]["mean"],
        "iou_mean": s["iou"]["mean"],
        "n": s["dice"]["n"],
    }


def tail_mean(records: list[dict], key: str, k: int) -> float | None:
    """Mean of `key` over the last k rounds >= 1 of the round records: the global model's score
    moves by a few points from round to round under FedAvg, so comparisons of runs are steadier on
    this than on the last round alone."""
    vals = [r[key] for r in records if r.get("event") == "round" and r["round"] >= 1 and key in r]
    return float(np.mean(vals[-k:])) if vals else None


def finish(engine: Engine, seconds: float, baseline: nn.Module | None = None) -> dict:
    """Checkpoints, final scores, plots, report, summary.json and manifest.json of `engine`'s run
    (`seconds` long); the client models leave the resume state once written to clients/<k>/ (a
    resume reads them there). baseline: the `supervised` baseline's final model (its per-round
    records are in the metrics)."""
    cfg, run, split, sets = engine.cfg, engine.run, engine.split, engine.sets
    glob, clients, prep, teacher_info = engine.glob, engine.clients, engine.prep, engine.teacher_info
    from samfed.train.provenance import provenance
    from samfed.train.report import write_report

    save_checkpoints(cfg, run, glob, clients, prep)
    compact_finished_state(run)
    models = final_scores(cfg, sets, glob, clients, prep, baseline)
    records = run.read_metrics()
    r0 = round0_dice(records)
    summary = {
        "config": cfg.to_dict(),
        "data": cfg.data or "built-in synthetic",
        "split_sizes": {
            "server_labeled": len(split.server_labeled),
            "clients": [len(c) for c in split.clients],
            "val": len(split.val),
            "test": len(split.test),
        },
        "aggregation": cfg.aggregation_rule if method_spec(cfg.method).kind == "federated" else "-",
        "teacher": teacher_info,
        "models": models,
        "val_dice": models[0]["dice_mean"],
        "val_hd95": models[0]["hd95_mean"],
        "val_dice_last5": tail_mean(records, "val_dice", 5),
        "comparison": comparison(cfg, models, r0),
        "warnings": [w for w in [teacher_warning(teacher_info.get("val_dice"), r0)] if w],
        "stages": stage_seconds(records, engine.stages),
        "seconds": seconds,
        **provenance(),
    }
    run.log(
        {
            "event": "final",
            "round": cfg.rounds,
            "val_dice": summary["val_dice"],
            "val_hd95": summary["val_hd95"],
            "seconds": seconds,
        }
    )
    records = run.read_metrics()
    plots = make_plots(engine, records, summary)
    run.write_json(run.summary, summary)
    write_report(run.root, summary, records, plots)
    run.write_manifest()
    return summary


def save_checkpoints(cfg: RunConfig, run: RunDir, glob: nn.Module, clients: list[nn.Module], prep) -> None:
    """global/ and clients/<k>/ student checkpoints, with the run they came from."""
    from export.checkpoint import save_student_checkpoint

    data_path = str(run.data.resolve()) if cfg.data is None else str(Path(cfg.data).resolve())
    meta = {
        "source_run": str(run.root.resolve()),
        "data_path": data_path,
        "split": "split.json",
        "method": cfg.method,
        "rounds": cfg.rounds,
        "seed": cfg.seed,
    }
    save_student_checkpoint(glob, cfg.global_arch, cfg.norm, prep, run.global_dir, role="global", **meta)
    for k, m in enumerate(clients):
        save_student_checkpoint(
            m, cfg.client_arch(k), cfg.norm, prep, run.client_dir(k), role=f"client {k}", **meta
        )


def final_scores(cfg: RunConfig, sets: Sets, glob, clients, prep, baseline=None) -> list[dict]:
    """Score rows: the global model on val (first) and test, every client on val, the
    `supervised` baseline on val and test."""
    models = [_score(glob, cfg.global_arch, "global", "val", sets.val, prep)]
    if sets.test is not None:
        models.append(_score(glob, cfg.global_arch, "global", "test", sets.test, prep))
    models += [
        _score(m, cfg.client_arch(k), f"client {k}", "val", sets.val, prep) for k, m in enumerate(clients)
    ]
    if baseline is not None:
        models.append(_score(baseline, cfg.global_arch, "supervised", "val", sets.val, prep))
        if sets.test is not None:
            models.append(_score(baseline, cfg.global_arch, "supervised", "test", sets.test, prep))
    return models


def comparison(cfg: RunConfig, models: list[dict], round0: float | None) -> dict:
    """The lead numbers of the report: the method's global model at round 0 and at the end, and
    the `supervised` baseline's end (None for methods without one)."""

    def pick(name: str, split_name: str, key: str):
        row = next((m for m in models if m["model"] == name and m["split"] == split_name), None)
        return None if row is None else row[key]

    return {
        "method": cfg.method,
        "round0_val_dice": round0,
        "val_dice": pick("global", "val", "dice_mean"),
        "val_hd95": pick("global", "val", "hd95_mean"),
        "test_dice": pick("global", "test", "dice_mean"),
        "supervised_val_dice": pick("supervised", "val", "dice_mean"),
        "supervised_val_hd95": pick("supervised", "val", "hd95_mean"),
        "supervised_test_dice": pick("supervised", "test", "dice_mean"),
    }


def stage_seconds(records: list[dict], here: dict[str, float]) -> dict[str, float]:
    """Seconds per stage of the whole run: the initialisation stages as the run's init record has
    them (its first process), every round's time from the round records, then this process's
    later stages (supervised baseline)."""
    init = next((r.get("stages") for r in records if r.get("event") == "init"), None) or {}
    found = {k: float(v) for k, v in init.items() if isinstance(v, int | float)}
    rounds = [r["seconds"] for r in records if r.get("event") == "round" and r.get("round", 0) >= 1]
    found["rounds"] = float(sum(rounds))
    found.update({k: v for k, v in here.items() if k not in found and k not in INIT_STAGES})
    order = ("data", *INIT_STAGES, "rounds")
    return {k: found[k] for k in sorted(found, key=lambda k: order.index(k) if k in order else len(order))}


def make_plots(engine: Engine, records: list[dict], summary: dict) -> list[Path]:
    """The report's PNGs: validation Dice per round (method, clients, supervised, teacher), loss,
    agreement, and the qualitative panel of a few validation images."""
    from samfed.train.evaluation import panel_rows
    from samfed.train.plots import plot_agreement, plot_loss, plot_qualitative, plot_val_dice

    cfg, run = engine.cfg, engine.run
    teacher_dice = (summary.get("teacher") or {}).get("val_dice")
    spec = method_spec(cfg.method)
    panel = panel_rows(cfg, engine.sets, engine.glob, engine.clients, engine.prep)
    made = [
        plot_val_dice(records, run.plots / "val_dice.png", cfg.method, teacher_dice),
        plot_loss(records, run.plots / "loss.png"),
        plot_agreement(records, run.plots / "agreement.png", "teacher" if spec.needs_teacher else "source"),
        plot_qualitative(panel, run.plots / "qualitative.png"),
    ]
    return [p for p in made if p is not None]
