"""Offline comparison of the agreement rules on a finished run's real maps.

    python benchmarks/agreement.py RUN_DIR [--ramp 1.0] [--tau 0.8]

For every client image of the run (ground truth needed): teacher maps s (from the run's cache),
global model g (RUN/global) and the client's own model l (RUN/clients/<k>), all at the working
size and without augmentation. For each rule it reports the pseudo-label Dice and pixel accuracy
against ground truth, the per-image Dice weighted by each image's mean weight (does a rule's
weight find the better labels?), the accuracy weighted by the rule's weights, and the mean weight; the
teacher-only rule is the reference the default must not fall below. Writes
RUN/agreement_rules.md and .json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("--ramp", type=float, default=1.0, help="the students' say (1 = after the ramp-up)")
    p.add_argument("--tau", type=float, default=None, help="default: the run's agreement_tau")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from export.checkpoint import load_student_checkpoint
    from samfed.config import RunConfig
    from samfed.data.partition import Split
    from samfed.data.readers import load_dataset
    from samfed.engine.data import split_arrays
    from samfed.engine.teacher import compute_maps
    from samfed.method.agreement import AGREEMENTS, agreement
    from samfed.method.arrays import predict_proba
    from samfed.metrics import dice_batch
    from samfed.preprocess import Preprocessing
    from samfed.teacher import load_teacher
    from samfed.train.run_dir import RunDir

    torch.set_num_threads(args.threads)
    run = RunDir(args.run)
    cfg = RunConfig.load(run.config)
    tau = cfg.agreement_tau if args.tau is None else args.tau
    dataset = load_dataset(cfg.data or run.data)
    split = Split.load(run.split)
    teacher = load_teacher(run.teacher)
    prep = Preprocessing(size=cfg.image_size)
    glob, _ = load_student_checkpoint(run.global_dir)
    sums = {
        v: {"inter": 0.0, "total": 0.0, "correct": 0.0, "wcorrect": 0.0, "w": 0.0, "px": 0.0}
        for v in AGREEMENTS
    }
    per_image_dice = {v: [] for v in AGREEMENTS}
    per_image_weight = {v: [] for v in AGREEMENTS}
    for k, ids in enumerate(split.clients):
        data = split_arrays(dataset, ids, cfg.image_size, True)
        s = torch.from_numpy(compute_maps(teacher, dataset, ids, cfg))[:, None]
        g = torch.from_numpy(predict_proba(glob, data, prep))[:, None]
        local, _ = load_student_checkpoint(run.client_dir(k))
        loc = torch.from_numpy(predict_proba(local, data, prep))[:, None]
        gt = torch.from_numpy(data.masks)[:, None]
        for v in AGREEMENTS:
            label, w = agreement(s, g, loc, v, ramp=args.ramp, tau=tau)
            lab = label > 0.5
            c = (lab == gt).float()
            st = sums[v]
            st["inter"] += float((lab & gt).sum())
            st["total"] += float(lab.sum() + gt.sum())
            st["correct"] += float(c.sum())
            st["wcorrect"] += float((c * w).sum())
            st["w"] += float(w.sum())
            st["px"] += float(c.numel())
            per_image_dice[v] += dice_batch(lab[:, 0].numpy(), gt[:, 0].numpy()).tolist()
            per_image_weight[v] += w.flatten(1).mean(1).tolist()
    rows = []
    for v in AGREEMENTS:
        st = sums[v]
        rows.append(
            {
                "rule": v,
                "pseudo_label_dice_mean": float(np.mean(per_image_dice[v])),
                "image_weighted_dice": float(
                    np.average(per_image_dice[v], weights=np.maximum(per_image_weight[v], 1e-9))
                ),
                "pooled_dice": 2 * st["inter"] / max(st["total"], 1),
                "accuracy": st["correct"] / st["px"],
                "weighted_accuracy": st["wcorrect"] / max(st["w"], 1e-9),
                "mean_weight": st["w"] / st["px"],
            }
        )
    lines = [
        f"Agreement rules on {run.root} (ramp {args.ramp}, tau {tau}); client images vs ground truth",
        "",
        "| rule | pseudo-label Dice (per image) | image-weighted Dice | pooled Dice | accuracy "
        "| weighted acc. | mean weight |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['pseudo_label_dice_mean']:.4f} | {r['image_weighted_dice']:.4f} "
            f"| {r['pooled_dice']:.4f} "
            f"| {r['accuracy']:.4f} | {r['weighted_accuracy']:.4f} | {r['mean_weight']:.3f} |"
        )
    (run.root / "agreement_rules.md").write_text("\n".join(lines) + "\n")
    (run.root / "agreement_rules.json").write_text(
        json.dumps({"ramp": args.ramp, "tau": tau, "rows": rows}, indent=2)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
