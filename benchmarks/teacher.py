"""Teacher benchmark on Kvasir-SEG: zero-shot LiteMedSAM per prompt mode, decoder-only and LoRA
fine-tuning on the server's 10% labeled set, and encoder speed in torch / ONNX Runtime / OpenVINO.

    python benchmarks/teacher.py [--data ../shared/data/kvasir-seg] [--out bench_out/teacher]

Protocol: D_p = `samfed.data.partition.make_split(..., labeled_fraction=0.1, seed=0,
test_fraction=0).server_labeled`
(70 of the 700 train ids, the D_p federation runs use); 20% of D_p is held out for early
stopping; scoring on the 101 val ids at 256x256 (Dice, HD95 from `samfed.metrics`, prediction
= teacher probability > 0.5 in the stretched 256x256 frame). Frozen-encoder embeddings of all 171
images are computed ONCE into <out>/embeddings and reused by every row (and by reruns);
fine-tuned teachers are saved under <out>/teachers/<row> and reused on rerun.

Rows: zero-shot none / full-box / oracle-box (ground-truth box: an upper bound, not realistic);
decoder-only fine-tuning for each prompt; global-box with a realistic proxy of the global model
(the box around the decoder-fine-tuned none-mode teacher's own mask); LoRA + decoder for the best
realistic prompt (warm-started from that decoder-only teacher). Writes teacher.json + teacher.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from samfed.data.partition import make_split  # noqa: E402
from samfed.data.readers import load_dataset  # noqa: E402
from samfed.metrics import evaluate_pair, summarize  # noqa: E402
from samfed.teacher import finetune_teacher, load_teacher, save_teacher  # noqa: E402
from samfed.teacher.data import holdout, load_pairs  # noqa: E402
from samfed.teacher.embeddings import embed_images  # noqa: E402
from samfed.teacher.state import is_teacher_dir  # noqa: E402
from samfed.teacher.transforms import full_box, lowres_to_prob, mask_box_to_input  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def embed(teacher, images, cache: Path, label: str) -> torch.Tensor:
    """Embeddings in chunks (progress goes to the log), cached on disk."""
    out, t0 = [], time.time()
    for s in range(0, len(images), 16):
        out.append(embed_images(teacher, images[s : s + 16], cache, batch_size=4))
        log(f"  {label}: {min(s + 16, len(images))}/{len(images)} embedded ({time.time() - t0:.0f} s)")
    return torch.cat(out)


@torch.no_grad()
def predict(teacher, emb: torch.Tensor, boxes: np.ndarray | None) -> np.ndarray:
    """(N, 256, 256) bool masks from cached embeddings (probability > 0.5 at 256x256)."""
    teacher.eval()
    masks = []
    for i in range(0, len(emb), 8):
        b = None if boxes is None else torch.from_numpy(boxes[i : i + 8])
        logits = teacher.decode(emb[i : i + 8].float(), b)[:, 0].numpy()
        masks += [lowres_to_prob(lg, (256, 256), teacher.input, 256) > 0.5 for lg in logits]
    return np.stack(masks)


def score(pred: np.ndarray, gt: list[np.ndarray]) -> dict:
    s = summarize([evaluate_pair(p, g) for p, g in zip(pred, gt, strict=True)])
    return {
        "dice": s["dice"]["mean"],
        "dice_std": s["dice"]["std"],
        "hd95": s["hd95"]["mean"],
        "hd95_std": s["hd95"]["std"],
    }


def boxes_for(prompt: str, spec, masks) -> np.ndarray | None:
    """Input-frame boxes: None (no prompt), full boxes, or boxes around `masks` (full box if empty)."""
    if prompt == "none":
        return None
    if prompt == "full-box":
        return np.stack([full_box(spec, (256, 256)) for _ in masks])
    return np.stack([mask_box_to_input(m, (256, 256), spec) for m in masks])


def finetuned(base, name: str, out: Path, train, hold, emb_dir: Path, **kw):
    """Fine-tune a copy of `base` (or reload it from <out>/teachers/<name>)."""
    folder = out / "teachers" / name
    if is_teacher_dir(folder):
        log(f"{name}: reusing {folder}")
        return load_teacher(folder), json.loads((folder / "finetune.json").read_text())
    teacher = copy.deepcopy(base)
    log(f"{name}: fine-tuning ({kw})")
    result = finetune_teacher(
        teacher, *train, *hold, embedding_cache=emb_dir, progress=False, log=lambda m: log(f"  {m}"), **kw
    )
    save_teacher(teacher, folder)
    (folder / "finetune.json").write_text(json.dumps(result.to_dict(), indent=2))
    return teacher, result.to_dict()


def encoder_speed(teacher, onnx_dir: Path, images, threads: int) -> dict:
    """Seconds per image of the image encoder alone (batch 1), torch vs ONNX Runtime vs OpenVINO."""
    from edge.teacher_runtime import OnnxTeacher
    from samfed.teacher.transforms import to_input_batch

    x = to_input_batch(images, teacher.input)
    out = {}
    with torch.no_grad():
        teacher.encode(torch.from_numpy(x[:1]))  # warm-up
        t0 = time.perf_counter()
        for i in range(len(x)):
            teacher.encode(torch.from_numpy(x[i : i + 1]))
        out["torch"] = (time.perf_counter() - t0) / len(x)
    for backend in ("onnxruntime", "openvino"):
        rt = OnnxTeacher(onnx_dir, backend=backend, threads=threads)
        rt.encode(x[:1])
        t0 = time.perf_counter()
        rt.encode(x)
        out[backend] = (time.perf_counter() - t0) / len(x)
    return out


def markdown(report: dict) -> str:
    lines = [
        "| teacher | prompt at inference | Dice (val) | HD95 px (val) | realistic | best / run epochs |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['row']} | {r['prompt']} | {r['dice']:.4f} ± {r['dice_std']:.3f} | "
            f"{r['hd95']:.1f} ± {r['hd95_std']:.1f} | {'yes' if r['realistic'] else 'no (upper bound)'} | "
            f"{r.get('best_epoch', '-')} / {r.get('epochs_run', '-')} |"
        )
    sp = report.get("speed")
    if sp:
        lines += [
            "",
            f"| encoder runtime | s / image (batch 1, threads {report['threads']}) |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v:.3f} |" for k, v in sp["encoder_s_per_image"].items()]
        par = sp.get("parity", {})
        for k in ("onnxruntime", "openvino"):
            if k in par:
                lines.append(
                    f"\nParity {k} vs torch on {par['images']} val images ({par['prompt']}): mask Dice "
                    f"mean {par[k]['dice_mean']:.4f}, min {par[k]['dice_min']:.4f}, "
                    f"max |dp| {par[k]['max_abs_prob_diff']:.1e}"
                )
    lines += [
        "",
        "best epoch 0 = fine-tuning never beat its starting point on the early-stopping holdout, "
        "so the starting weights were kept.",
        "",
        report["notes"],
        "",
        f"Recommended default prompt: **{report.get('recommended_prompt')}**",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared/data/kvasir-seg")
    ap.add_argument("--out", type=Path, default=REPO / "bench_out/teacher")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labeled-fraction", type=float, default=0.1)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--decoder-epochs", type=int, default=12)
    ap.add_argument("--lora-epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lora-lr", type=float, default=3e-4)
    ap.add_argument("--lr-lora-decoder", type=float, default=5e-5, help="decoder lr in the LoRA stage")
    ap.add_argument("--patience", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed-images", type=int, default=8)
    ap.add_argument("--skip-lora", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    emb_dir = out / "embeddings"

    dataset = load_dataset(args.data)
    split = make_split(
        dataset, clients=4, labeled_fraction=args.labeled_fraction, seed=args.seed, test_fraction=0.0
    )  # the pool is all 700 train ids (no test carved out of it): 70 labeled
    train_ids, hold_ids = holdout(split.server_labeled, args.holdout, args.seed)
    log(f"D_p {len(split.server_labeled)} ids ({len(train_ids)} train + {len(hold_ids)} early-stopping), "
        f"val {len(split.val)} ids")  # fmt: skip
    base = load_teacher("litemedsam")
    spec = base.input
    train, hold = load_pairs(dataset, train_ids, spec), load_pairs(dataset, hold_ids, spec)
    val_images, val_masks = load_pairs(dataset, split.val, spec)
    embed(base, train[0] + hold[0], emb_dir, "D_p")
    val_emb = embed(base, val_images, emb_dir, "val")

    report = {
        "data": str(args.data), "seed": args.seed, "labeled": len(split.server_labeled),
        "train": len(train_ids),
        "early_stopping": len(hold_ids), "val": len(split.val), "threads": args.threads,
        "decoder_epochs": args.decoder_epochs, "lora_epochs": args.lora_epochs, "lr": args.lr,
        "lora_lr": args.lora_lr, "lora_decoder_lr": args.lr_lora_decoder, "patience": args.patience,
        "rows": [],
    }  # fmt: skip

    def add(row: str, prompt: str, pred, realistic: bool, extra=None) -> None:
        r = {"row": row, "prompt": prompt, "realistic": realistic, **score(pred, val_masks), **(extra or {})}
        report["rows"].append(r)
        log(f"{row:<40} {prompt:<28} Dice {r['dice']:.4f}  HD95 {r['hd95']:.1f}")
        (out / "teacher.json").write_text(json.dumps(report, indent=2))

    gt_boxes = boxes_for("global-box", spec, val_masks)
    add("zero-shot LiteMedSAM", "none", predict(base, val_emb, None), True)
    add(
        "zero-shot LiteMedSAM",
        "full-box",
        predict(base, val_emb, boxes_for("full-box", spec, val_images)),
        True,
    )
    add("zero-shot LiteMedSAM", "oracle-box (GT box)", predict(base, val_emb, gt_boxes), False)

    ft = {}
    common = dict(
        epochs=args.decoder_epochs, lr=args.lr, patience=args.patience, seed=args.seed, batch_size=4
    )
    for prompt in ("none", "full-box", "global-box"):
        t, res = finetuned(
            base, f"decoder-{prompt}", out, train, hold, emb_dir, mode="decoder", prompt=prompt, **common
        )
        ft[prompt] = t
        extra = {
            "best_epoch": res["best_epoch"],
            "epochs_run": res["epochs_run"],
            "finetune_s": res["seconds"],
        }
        if prompt == "global-box":
            add("decoder-ft", "oracle-box (GT box)", predict(t, val_emb, gt_boxes), False, extra)
        else:
            add("decoder-ft", prompt, predict(t, val_emb, boxes_for(prompt, spec, val_images)), True, extra)
    proxy_masks = predict(ft["none"], val_emb, None)  # realistic stand-in for the global model's masks
    proxy_boxes = boxes_for("global-box", spec, proxy_masks)
    add("decoder-ft", "global-box (proxy M_G)", predict(ft["global-box"], val_emb, proxy_boxes), True)
    realistic = [r for r in report["rows"] if r["realistic"] and r["row"] == "decoder-ft"]
    best = max(realistic, key=lambda r: r["dice"])
    best_prompt = "global-box" if best["prompt"].startswith("global-box") else best["prompt"]
    report["recommended_prompt"] = best_prompt
    final = ft[best_prompt]

    if not args.skip_lora:
        t, res = finetuned(
            ft[best_prompt], f"lora-{best_prompt}-lr{args.lr_lora_decoder}-{args.lora_lr}", out, train, hold,
            emb_dir, mode="lora", prompt=best_prompt, epochs=args.lora_epochs, lr=args.lr_lora_decoder,
            lora_lr=args.lora_lr, patience=args.patience, seed=args.seed, batch_size=2,
        )  # fmt: skip
        # best epoch 0: the LoRA factors are still zero, the encoder is unchanged
        lora_emb = val_emb if res["best_epoch"] == 0 else embed(t, val_images, emb_dir, "val (LoRA encoder)")
        boxes = boxes_for(best_prompt, spec, proxy_masks if best_prompt == "global-box" else val_images)
        extra = {"best_epoch": res["best_epoch"], "epochs_run": res["epochs_run"],
                 "finetune_s": res["seconds"], "warm_start": f"decoder-{best_prompt}"}  # fmt: skip
        label = "global-box (proxy M_G)" if best_prompt == "global-box" else best_prompt
        add("LoRA r4 q,v + decoder", label, predict(t, lora_emb, boxes), True, extra)
        final = t

    from samfed.teacher import export_teacher

    log("exporting the final teacher to ONNX; parity and encoder speed")
    n = args.speed_images
    parity_imgs = val_images[:n]
    manifest = export_teacher(final, out / "onnx", parity_images=parity_imgs, openvino=True)
    report["speed"] = {
        "encoder_s_per_image": encoder_speed(final, out / "onnx", parity_imgs, args.threads),
        "parity": manifest.get("parity", {}),
    }
    report["notes"] = " ".join(
        [
            f"Kvasir-SEG, D_p = {len(split.server_labeled)} train ids (10%, make_split seed {args.seed});",
            f"{len(train_ids)} fine-tune + {len(hold_ids)} early-stopping; scored on",
            f"{len(split.val)} val ids",
            f"at 256x256. Decoder-only: <= {args.decoder_epochs} epochs (lr {args.lr}, patience",
            f"{args.patience}) on cached frozen-encoder embeddings; LoRA: rank 4 on q,v of all 10 TinyViT",
            f"attention blocks + decoder, {args.lora_epochs} epochs (lr {args.lr_lora_decoder} decoder /",
            f"{args.lora_lr} LoRA, flips), warm-started from the decoder-only teacher.",
            "oracle-box = the ground-truth box (upper bound, not available on clients);",
            "global-box (proxy M_G) = box around the decoder-ft",
            "none-mode teacher's own mask (a stand-in for the global student's mask). Speed: image encoder",
            f"only, batch 1, {args.threads} thread(s), shared CPU.",
        ]
    )
    (out / "teacher.json").write_text(json.dumps(report, indent=2))
    (out / "teacher.md").write_text(markdown(report))
    log(f"wrote {out / 'teacher.json'} and {out / 'teacher.md'}")
    print(markdown(report))


if __name__ == "__main__":
    main()
