"""Teacher and round-0 global model on the built-in synthetic set, exactly as `samfed train` builds them.

    python benchmarks/synthetic_teacher.py [--seeds 0 1 2] [--domain polyp]
        [--out bench_out/synthetic_teacher] [--no-global] [--panels N]

For each seed: the default RunConfig (only `seed` and `synthetic_domain` changed) goes through the
runner's own functions: `prepare_dataset` writes the synthetic set and makes the split,
`prepare_teacher` fine-tunes the teacher on D_p, `compute_maps` + `map_dice` score its validation
maps (the "teacher validation Dice" `samfed train` prints), and `cached_init_global` trains the
global student on D_p (its validation Dice is round 0 of the run). Every seed starts from a fresh
folder <out>/seed<k>. Writes <out>/synthetic_teacher.json and, with --panels, PNG panels
(image | ground truth | teacher map) of the first N validation images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from samfed.config import RunConfig  # noqa: E402
from samfed.engine.checks import auto_threads  # noqa: E402
from samfed.engine.data import load_sets, prepare_dataset  # noqa: E402
from samfed.engine.models import cached_init_global, new_model  # noqa: E402
from samfed.engine.teacher import compute_maps, prepare_teacher  # noqa: E402
from samfed.preprocess import Preprocessing  # noqa: E402
from samfed.train.evaluation import evaluate_arrays, map_dice  # noqa: E402
from samfed.train.run_dir import RunDir  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def save_panels(sets, maps: np.ndarray, folder: Path, n: int) -> None:
    """PNG per validation image: image | ground truth | teacher map (probability > 0.5 outlined)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(min(n, len(sets.val))):
        img = sets.val.images[i]
        gt = np.repeat(sets.val.masks[i][..., None].astype(np.uint8) * 255, 3, axis=2)
        tm = np.repeat((maps[i][..., None] * 255).astype(np.uint8), 3, axis=2)
        Image.fromarray(np.concatenate([img, gt, tm], axis=1)).save(folder / f"{sets.val.ids[i]}.png")


def one_seed(cfg: RunConfig, root: Path, with_global: bool, panels: int) -> dict:
    """Teacher validation Dice (and round-0 global validation Dice) of one seed's default run."""
    if root.exists():
        shutil.rmtree(root)
    run = RunDir(root)
    run.root.mkdir(parents=True)
    t0 = time.perf_counter()
    dataset, split = prepare_dataset(cfg, run, log)
    sets = load_sets(dataset, split, cfg)
    row: dict = {
        "seed": cfg.seed,
        "server_labeled": len(split.server_labeled),
        "clients": [len(c) for c in split.clients],
        "val": len(split.val),
        "val_lesion_fraction": float(sets.val.masks.mean()),
        "synth_seconds": time.perf_counter() - t0,
    }
    teacher, info = prepare_teacher(cfg, run, dataset, split, log)
    maps = compute_maps(teacher, dataset, sets.val.ids, cfg)
    row.update(
        teacher_val_dice=map_dice(maps, sets.val.masks),
        teacher_holdout_dice=info.get("best_val_dice_holdout"),
        teacher_best_epoch=info.get("best_epoch"),
        teacher_map_fraction=float((maps > 0.5).mean()),
        teacher_seconds=time.perf_counter() - t0 - row["synth_seconds"],
    )
    if panels:
        save_panels(sets, maps, root / "panels", panels)
    if with_global:
        t1 = time.perf_counter()
        glob = new_model(cfg.global_arch, cfg, "global")
        cached_init_global(glob, sets.labeled, cfg)
        rows = evaluate_arrays(glob, sets.val, Preprocessing(size=cfg.image_size), with_hd95=False)
        row["global_round0_val_dice"] = float(np.mean([r["dice"] for r in rows]))
        row["global_seconds"] = time.perf_counter() - t1
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--domain", default="polyp")
    ap.add_argument("--out", default="bench_out/synthetic_teacher")
    ap.add_argument("--no-global", action="store_true", help="skip the round-0 global model")
    ap.add_argument("--panels", type=int, default=0, help="save panels of the first N val images")
    args = ap.parse_args()
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        cfg = RunConfig(seed=seed, synthetic_domain=args.domain).validate()
        torch.set_num_threads(auto_threads(cfg.threads))
        row = one_seed(cfg, out / f"seed{seed}", not args.no_global, args.panels)
        rows.append(row)
        log(json.dumps(row))
    keys = ("teacher_val_dice", "global_round0_val_dice")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys if all(k in r for r in rows)}
    (out / "synthetic_teacher.json").write_text(
        json.dumps({"domain": args.domain, "rows": rows, "mean": mean}, indent=1) + "\n"
    )
    print("| seed | teacher val Dice | round-0 global val Dice | teacher map / true lesion fraction |")
    print("|---|---|---|---|")
    for r in rows:
        g = r.get("global_round0_val_dice")
        print(
            f"| {r['seed']} | {r['teacher_val_dice']:.3f} | {'-' if g is None else f'{g:.3f}'} | "
            f"{r['teacher_map_fraction']:.3f} / {r['val_lesion_fraction']:.3f} |"
        )
    log(f"mean: {mean}")


if __name__ == "__main__":
    main()
