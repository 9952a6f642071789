"""`samfed evaluate`: score a run's global and client students on a dataset at original resolution.

Each student predicts at its working size; the probability map is resized back to the image's
original size (`samfed.preprocess.prob_to_original`), thresholded, and scored against the
original mask with `samfed.metrics` (Dice, IoU, HD95 in original pixels, its convention chosen
by `hd95_convention`; HD95 of an empty prediction = the image diagonal). Writes per_image.csv,
summary.json, summary.md and, for the global model, side-by-side overlays (ground truth |
prediction) of the worst cases by Dice.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from samfed.errors import SamfedError


@dataclass
class EvalResult:
    out_dir: Path
    summary: dict
    rows: list[dict]


def resolve_ids(run_root: Path, dataset, ids_file: Path | None) -> tuple[list[str], str]:
    """Ids to score and where they came from.

    ids_file: a text file (one id per line) or a split JSON (its test ids, else val). Default: the
    run's split.json test ids, else its val ids, when they are in `dataset`; else every sample.
    """
    from samfed.data.partition import Split
    from samfed.data.readers import read_id_list

    def from_split(path: Path) -> tuple[list[str], str] | None:
        s = Split.load(path)
        ids, part = (s.test, "test") if s.test else (s.val, "val")
        return (ids, f"{path.name}:{part}") if ids and all(i in dataset for i in ids) else None

    if ids_file is not None:
        if not ids_file.is_file():
            raise SamfedError(f"Ids file {ids_file} does not exist.")
        if ids_file.suffix == ".json":
            got = from_split(ids_file)
            if got is None:
                raise SamfedError(f"The split {ids_file} does not match the dataset at {dataset.root}.")
            return got
        ids = read_id_list(ids_file)
        if not ids:
            raise SamfedError(f"Ids file {ids_file} lists no ids.")
        for i in ids:
            dataset[i]  # raises SamfedError for unknown ids
        return ids, str(ids_file)
    split_file = run_root / "split.json"
    if split_file.is_file():
        got = from_split(split_file)
        if got is not None:
            return got
    return dataset.ids, "all samples"


def run_models(run_root: Path) -> list[tuple[str, Path]]:
    """(name, checkpoint dir) for global/ and every clients/<k>/ holding a student."""
    from export.checkpoint import META

    out = []
    if (run_root / "global" / META).is_file():
        out.append(("global", run_root / "global"))
    clients = run_root / "clients"
    if clients.is_dir():
        dirs = sorted(
            (d for d in clients.iterdir() if (d / META).is_file()), key=lambda d: (len(d.name), d.name)
        )
        out += [(f"client {d.name}", d) for d in dirs]
    if not out:
        raise SamfedError(
            f"{run_root} holds no student checkpoint (global/student.json); is it a samfed run?"
        )
    return out


def evaluate_run(
    run_root: str | Path,
    data: str | Path,
    ids_file: Path | None = None,
    out_dir: Path | None = None,
    worst: int = 6,
    batch_size: int = 8,
    hd95_convention: str = "pooled",
) -> EvalResult:
    import torch

    from export.checkpoint import load_student_checkpoint
    from samfed.data.io import read_pair
    from samfed.data.readers import load_dataset
    from samfed.metrics import evaluate_pair
    from samfed.preprocess import prob_to_original, to_input

    run_root = Path(run_root)
    if not run_root.is_dir():
        raise SamfedError(f"Run directory {run_root} does not exist.")
    models = run_models(run_root)
    dataset = load_dataset(data)
    ids, source = resolve_ids(run_root, dataset, ids_file)
    samples = dataset.select(ids)
    if any(s.mask is None for s in samples):
        raise SamfedError("Evaluation needs a mask for every image; some of the selected images have none.")
    pairs = [read_pair(s.image, s.mask) for s in samples]  # refuses non-binary masks and size mismatches
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    out_dir = out_dir or run_root / "eval" / Path(data).resolve().name
    out_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    preds_global: list[np.ndarray] = []
    for name, ckpt in models:
        model, meta = load_student_checkpoint(ckpt)
        prep = meta["prep"]
        for start in range(0, len(samples), batch_size):
            chunk = range(start, min(start + batch_size, len(samples)))
            x = torch.from_numpy(np.stack([to_input(images[i], prep) for i in chunk]))
            with torch.no_grad():
                probs = torch.sigmoid(model(x))[:, 0].numpy()
            for i, p in zip(chunk, probs, strict=True):
                pred = prob_to_original(p, masks[i].shape) > meta["threshold"]
                scores = evaluate_pair(pred, masks[i], hd95_convention)
                rows.append({"model": name, "arch": meta["arch"], "id": ids[i], **scores})
                if name == "global":
                    preds_global.append(pred)

    summary = write_tables(out_dir, rows, [name for name, _ in models], hd95_convention)
    summary = {"run": str(run_root), "data": str(data), "ids": source, "n_images": len(ids), **summary}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(
        f"Evaluation of {run_root} on {data} ({source}, {len(ids)} images)\n\n"
        + summary_table(summary)
        + "\n"
    )
    if preds_global and worst > 0:
        g = [r for r in rows if r["model"] == "global"]
        write_worst(out_dir / "overlays", images, masks, preds_global, ids, [r["dice"] for r in g], worst)
    return EvalResult(out_dir, summary, rows)


def write_tables(out_dir: Path, rows: list[dict], names: list[str], hd95_convention: str) -> dict:
    """per_image.csv of `rows` -> the summary's conventions and per-model statistics."""
    from samfed.metrics import conventions, summarize

    with open(out_dir / "per_image.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["model", "arch", "id", "dice", "iou", "hd95"])
        w.writeheader()
        w.writerows({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    summary: dict = {"conventions": conventions(hd95_convention), "models": {}}
    for name in names:
        mine = [r for r in rows if r["model"] == name]
        summary["models"][name] = {"arch": mine[0]["arch"], **summarize(mine)}
    return summary


def summary_table(summary: dict) -> str:
    """The per-model Markdown table of an evaluation summary."""
    lines = [
        "| model | arch | Dice mean | Dice std | IoU mean | HD95 mean (px) | HD95 median | n |",
        "|---" * 8 + "|",
    ]
    for name, s in summary["models"].items():
        lines.append(
            f"| {name} | {s['arch']} | {s['dice']['mean']:.4f} | {s['dice']['std']:.4f} "
            f"| {s['iou']['mean']:.4f} | {s['hd95']['mean']:.2f} | {s['hd95']['median']:.2f} "
            f"| {s['dice']['n']} |"
        )
    return "\n".join(lines)


def write_worst(folder: Path, images, masks, preds, ids: list[str], dice: list[float], worst: int) -> None:
    """Ground truth | prediction overlays of the `worst` lowest-Dice images, ranked."""
    from edge.evaluate_out import overlay_name, side_by_side
    from edge.png import write_png

    folder.mkdir(exist_ok=True)
    for rank, i in enumerate(np.argsort(dice, kind="stable")[:worst], start=1):
        write_png(
            folder / overlay_name(rank, ids[i], dice[i]), side_by_side(images[i], masks[i], preds[i], 0)
        )
