"""The accuracy benchmark's table: per-seed summaries -> mean ± std rows, Markdown + JSON + plot."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

from samfed.engine.outputs import tail_mean

ROOT = Path(__file__).resolve().parents[1]


def _accuracy_module():
    spec = importlib.util.spec_from_file_location("accuracy_bench", ROOT / "benchmarks" / "accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _records(dice: list[float]) -> list[dict]:
    return [{"event": "round", "round": r, "val_dice": d} for r, d in enumerate(dice)] + [
        {"event": "client", "round": 1, "val_dice": 9.0}
    ]


def test_tail_mean_skips_round_zero_and_other_events():
    recs = _records([0.1, 0.5, 0.6, 0.7])
    assert tail_mean(recs, "val_dice", 2) == pytest.approx(0.65)
    assert tail_mean(recs, "val_dice", 5) == pytest.approx(0.6)  # rounds 1-3 only: round 0 is the init
    assert tail_mean(_records([0.3]), "val_dice", 5) is None


def _summary(seed: int, dice: float, last5: float | None) -> dict:
    return {
        "config": {"seed": seed},
        "val_dice": dice,
        "val_dice_last5": last5,
        "val_hd95": 10.0 + seed,
        "seconds": 100.0,
        "teacher": {"val_dice": 0.75},
        "models": [{"model": "global", "dice_mean": dice}, {"model": "client 0", "dice_mean": dice - 0.1}],
    }


def test_rows_mean_std_and_table(tmp_path):
    acc = _accuracy_module()
    rows = acc.aggregate_rows({"samfed": [_summary(0, 0.6, 0.62), _summary(1, 0.8, 0.78)]})
    (r,) = rows
    assert r["dice_mean"] == pytest.approx(0.7) and r["dice_std"] == pytest.approx(0.1)
    assert r["dice_last5_mean"] == pytest.approx(0.7) and r["dice_last5_std"] == pytest.approx(0.08)
    assert r["client_dice"] == pytest.approx([0.6]) and r["per_seed_dice"] == [0.6, 0.8]
    # summaries written before the last-5 score existed still aggregate
    (old,) = acc.aggregate_rows({"sam-only": [_summary(0, 0.5, None)]})
    assert old["dice_last5_mean"] is None

    args = argparse.Namespace(
        out=tmp_path, schedule="reduced", data="DATA", partition="size", clients=4, labeled_fraction=0.1,
        image_size=128, students="unet-s", rounds=16, split=None,
    )  # fmt: skip
    acc.write_outputs(args, rows + [old], "test machine", "python benchmarks/accuracy.py ...")
    md = (tmp_path / "accuracy.md").read_text()
    assert "| samfed | 0.7000 ± 0.1000 | 0.7000 ± 0.0800 |" in md
    assert "| sam-only | 0.5000 ± 0.0000 | - | 10.0 ± 0.0 |" in md
    assert json.loads((tmp_path / "accuracy.json").read_text())["rows"][0]["label"] == "samfed"
    assert (tmp_path / "accuracy.png").stat().st_size > 0
