"""`samfed teacher ...`: fine-tune, inspect and export the SAM teacher."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from samfed.commands.choices import names_of
from samfed.commands.renamed import Renamed
from samfed.config import RunConfig
from samfed.errors import SamfedError

app = typer.Typer(help="Fine-tune, inspect and export the SAM teacher.", no_args_is_help=True)

_DEFAULTS = RunConfig()  # teacher fine-tuning defaults shared with `samfed train`


MODES = names_of("samfed.teacher.finetune", "MODES")
PROMPTS = names_of("samfed.teacher.prompts", "PROMPT_MODES")
EXPORT_RENAMED = Renamed(flags={"--latency-iters": "--iters"})


def _blocks(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise SamfedError(
            f"--lora-blocks must be comma-separated block indices like 0,1,2, got {text!r}."
        ) from None


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@app.command()
def finetune(
    data: Path = typer.Option(..., "--data", help="Labeled dataset folder (Kvasir, ISIC or generic layout)."),
    out: Path = typer.Option(..., "--out", help="Folder to write the fine-tuned teacher into."),
    split: Path | None = typer.Option(
        None, "--split", help="split.json from `samfed data split`: its server_labeled ids are used."
    ),
    labeled_fraction: float = typer.Option(
        _DEFAULTS.labeled_fraction,
        help="Without --split: fraction of the training pool that is server-labeled (samfed's make_split).",
    ),
    mode: str = typer.Option(
        _DEFAULTS.teacher_mode,
        help="decoder: mask decoder only; lora: LoRA on q,v + mask decoder (as `samfed train`).",
        click_type=MODES,
    ),
    prompt: str | None = typer.Option(
        None, help="Prompt mode to train for (default: the teacher's).", click_type=PROMPTS
    ),
    backbone: str = typer.Option("litemedsam", help="litemedsam | sam-vit-b|l|h | a saved teacher folder."),
    checkpoint: Path | None = typer.Option(None, help="Base weights file (required for sam-vit-*)."),
    epochs: int = typer.Option(
        _DEFAULTS.teacher_epochs, min=1, help="Epochs of the main stage (LoRA stage for --mode lora)."
    ),
    decoder_epochs: int = typer.Option(
        10, min=0, help="--mode lora: epochs of a cheap decoder-only warm-up on cached embeddings first."
    ),
    lr: float = typer.Option(2e-4, help="Learning rate of the mask decoder."),
    lora_lr: float = typer.Option(3e-4, help="Learning rate of the LoRA factors."),
    lora_rank: int = typer.Option(4, min=1, help="LoRA rank."),
    lora_blocks: str | None = typer.Option(
        None, help="Comma-separated attention block indices (default: all)."
    ),
    patience: int = typer.Option(5, min=1, help="Early stopping: epochs without validation Dice gain."),
    batch_size: int = typer.Option(4, min=1, help="Images per step."),
    holdout: float = typer.Option(
        0.2, min=0.0, max=0.9, help="Fraction of the labeled set held out for early stopping."
    ),
    seed: int = typer.Option(0, help="Seed of the labeled subset, holdout, shuffling and LoRA init."),
    threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's choice)."),
) -> None:
    """Fine-tune the SAM teacher (LoRA + mask decoder) on the server's labeled set."""
    from rich.console import Console

    from samfed.data.partition import Split, make_split
    from samfed.data.readers import load_dataset
    from samfed.teacher import LoraConfig, finetune_teacher, load_teacher, save_teacher
    from samfed.teacher.data import holdout as split_holdout
    from samfed.teacher.data import load_pairs

    console = Console()
    _threads(threads)
    dataset = load_dataset(data)
    if split is not None:
        s = Split.load(split)
        s.validate(dataset)
    else:
        s = make_split(dataset, clients=1, labeled_fraction=labeled_fraction, seed=seed)
    train_ids, val_ids = split_holdout(s.server_labeled, holdout, seed)
    if not train_ids:
        raise SamfedError("The server-labeled set is empty; raise --labeled-fraction or check the split.")
    teacher = load_teacher(backbone, checkpoint)
    console.print(
        f"teacher [bold]{teacher.name}[/]: {len(train_ids)} training + {len(val_ids)} early-stopping images "
        f"(of {len(s.server_labeled)} server-labeled)"
    )
    images, masks = load_pairs(dataset, train_ids, teacher.input)
    val_images, val_masks = load_pairs(dataset, val_ids, teacher.input)
    try:
        lora = LoraConfig(rank=lora_rank, blocks=_blocks(lora_blocks))
        result = finetune_teacher(
            teacher, images, masks, val_images, val_masks, mode=mode, prompt=prompt, epochs=epochs, lr=lr,
            lora_lr=lora_lr, patience=patience, seed=seed, batch_size=batch_size, lora=lora,
            decoder_warmup_epochs=decoder_epochs if mode == "lora" else 0, log=console.print,
        )  # fmt: skip
    except ValueError as exc:
        raise SamfedError(f"Cannot fine-tune the teacher: {exc}.") from None
    teacher.config.finetune.update(
        {"data": str(data), "train_ids": train_ids, "val_ids": val_ids, "seed": seed}
    )
    digest = save_teacher(teacher, out)
    (Path(out) / "finetune.json").write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    console.print(
        f"[green]saved[/] {out}: best val Dice {result.best_val_dice:.4f} at epoch {result.best_epoch}, "
        f"prompt {result.prompt}, hash {digest[:12]}"
    )


@app.command(cls=EXPORT_RENAMED.command())
def export(
    teacher_name: str = typer.Argument(
        "litemedsam", metavar="DIR_OR_NAME", help="A fine-tuned teacher folder or a backbone name."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for the exported variants and teacher_onnx.json."),
    checkpoint: Path | None = typer.Option(None, help="Base weights file (sam-vit-*)."),
    prompt: str | None = typer.Option(
        None, help="Prompt mode recorded for the runtime (default: teacher's).", click_type=PROMPTS
    ),
    data: Path | None = typer.Option(
        None,
        help="Labeled dataset for INT8 calibration and parity (default: the data the teacher was "
        "fine-tuned on, else synthetic polyp images).",
    ),
    split: Path | None = typer.Option(
        None, help="split.json: calibrate on its server_labeled ids, check parity on its val ids."
    ),
    calib_images: int = typer.Option(32, min=1, help="Labeled images calibrating the INT8 variant."),
    parity_images: int = typer.Option(16, min=1, help="Images for the torch vs variant parity check."),
    openvino: bool = typer.Option(True, help="Also the OpenVINO variants (FP32, bf16, INT8)."),
    int8: bool = typer.Option(True, help="Also the OpenVINO INT8 variant (NNCF)."),
    iters: int = typer.Option(3, "--iters", min=1, help="Interleaved timing rounds per variant."),
    threads: int | None = typer.Option(None, min=1, help="CPU threads (torch and the runtimes)."),
) -> None:
    """Export the (LoRA-merged) teacher in every variant, check each against torch, recommend one."""
    from rich.console import Console

    from samfed.teacher import export_teacher, load_teacher
    from samfed.teacher.export import check_out_dir

    console = Console()
    check_out_dir(out)
    _threads(threads)
    teacher = load_teacher(teacher_name, checkpoint, prompt)
    sets, source = export_images(teacher, data, split, calib_images, parity_images)
    console.print(f"calibration: {len(sets.calib)} images, parity: {len(sets.parity)} images ({source})")
    manifest = export_teacher(
        teacher, out, parity_images=sets.parity, openvino=openvino, calib_images=sets.calib, int8=int8,
        parity_masks=sets.masks, threads=threads, latency_iters=iters, log=console.print,
    )  # fmt: skip
    console.print(parity_table(manifest))
    for note in manifest.get("warnings", []):
        console.print(f"[bold yellow]warning:[/] {note}")
    rec = manifest.get("recommended")
    if rec:
        console.print(f"recommended: [bold]{rec}[/] ({manifest['recommendation_reason']})")
    else:
        console.print(
            f"[bold yellow]warning:[/] no variant recommended: {manifest['recommendation_reason']}."
        )
    console.print(f"[green]exported[/] {out}")


def parity_table(manifest: dict):
    """A rich table: per variant its agreement with torch, Dice vs ground truth and speed."""
    from rich.table import Table

    parity = manifest["parity"]
    torch_s = parity["torch"]["s_per_image"]
    table = Table(title=f"Teacher variants vs torch ({parity['images']} images, prompt {parity['prompt']})")
    for col in (
        "variant",
        "mask Dice mean",
        "mask Dice min",
        "max |dp|",
        "Dice vs GT",
        "s / image",
        "speed-up",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    gt = parity.get("dice_vs_gt")
    table.add_row("torch-fp32", "-", "-", "-", "-" if gt is None else f"{gt:.4f}", f"{torch_s:.3f}", "1.0x")
    for key, v in manifest["variants"].items():
        p = v.get("parity")
        if p is None:
            continue
        mark = " *" if key == manifest.get("recommended") else ""
        table.add_row(
            key + mark, f"{p['dice_mean']:.4f}", f"{p['dice_min']:.4f}", f"{p['max_abs_prob_diff']:.1e}",
            "-" if p.get("dice_vs_gt") is None else f"{p['dice_vs_gt']:.4f}", f"{v['s_per_image']:.3f}",
            f"{torch_s / v['s_per_image']:.1f}x",
        )  # fmt: skip
    return table


def export_images(teacher, data: Path | None, split: Path | None, n_calib: int, n_parity: int) -> tuple:
    """(`samfed.teacher.export.LabeledImages`, where they come from): --split's server_labeled / val
    ids of --data; else the ids the teacher was fine-tuned / early-stopped on (its fine-tune
    record); else the first images of --data; else synthetic polyp images."""
    from samfed.data.readers import load_dataset

    ft = teacher.config.finetune or {}
    if data is None and split is None and ft.get("train_ids") and Path(str(ft.get("data"))).is_dir():
        data = Path(ft["data"])
    if data is None:
        if split is not None:
            raise SamfedError("--split needs --data (the dataset folder the split refers to).")
        return _synthetic_images(n_calib, n_parity)
    dataset = load_dataset(data)
    if split is not None:
        from samfed.data.partition import Split

        s = Split.load(split)
        s.validate(dataset)
        calib_ids, parity_ids, source = s.server_labeled, s.val, f"{split}: server_labeled / val"
    elif ft.get("train_ids") and Path(str(ft.get("data"))).resolve() == data.resolve():
        calib_ids, parity_ids = list(ft["train_ids"]), list(ft.get("val_ids") or ft["train_ids"])
        source = f"{data}: the teacher's fine-tuning / early-stopping ids"
    else:
        ids = dataset.ids
        calib_ids, parity_ids = ids[:n_calib], ids[n_calib : n_calib + n_parity] or ids[:n_parity]
        source = f"{data}: first images"
    if not calib_ids or not parity_ids:
        raise SamfedError(f"No images to calibrate and check the export with in {data}.")
    from samfed.teacher.export import LabeledImages

    calib, _ = _load(dataset, calib_ids[:n_calib], teacher.input)
    parity, masks = _load(dataset, parity_ids[:n_parity], teacher.input)
    return LabeledImages(calib, parity, masks), source


def _load(dataset, ids: list[str], spec) -> tuple[list, list | None]:
    """Images (and masks, when every sample has one) of `ids`, as the teacher sees them."""
    from samfed.teacher.data import load_pairs

    if all(s.mask is not None for s in dataset.select(ids)):
        return load_pairs(dataset, ids, spec)
    from samfed.data.io import read_image
    from samfed.preprocess import resize_image

    images = [read_image(s.image) for s in dataset.select(ids)]
    if spec.convention == "stretch-unit":
        images = [resize_image(im, spec.size) for im in images]
    return images, None


def _synthetic_images(n_calib: int, n_parity: int):
    from samfed.data.synth import generate
    from samfed.teacher.export import LabeledImages

    pairs = [generate("polyp", seed=0, index=i, size=256) for i in range(n_calib + n_parity)]
    images, masks = [p[0] for p in pairs], [p[1] for p in pairs]
    sets = LabeledImages(images[:n_calib], images[n_calib:], masks[n_calib:])
    return sets, "synthetic polyp images (no --data)"


@app.command()
def info(
    teacher_name: str = typer.Argument(
        "litemedsam", metavar="DIR_OR_NAME", help="A fine-tuned teacher folder or a backbone name."
    ),
    checkpoint: Path | None = typer.Option(None, help="Base weights file (sam-vit-*)."),
    mode: str = typer.Option(
        "lora", help="Count trainable parameters as this fine-tuning mode would.", click_type=MODES
    ),
    lora_rank: int = typer.Option(4, min=1, help="LoRA rank (when the teacher has no LoRA yet)."),
) -> None:
    """Show the teacher's trainable vs frozen parameter counts, prompt mode and hash."""
    from rich.console import Console

    from samfed.teacher import LoraConfig, add_lora, load_teacher, parameter_counts, print_parameter_counts
    from samfed.teacher.finetune import set_trainable
    from samfed.teacher.lora import has_lora

    teacher = load_teacher(teacher_name, checkpoint)
    console = Console()
    console.print(
        f"teacher {teacher.name}: input {teacher.input.size} px {teacher.input.convention}, "
        f"prompt {teacher.prompt}, hash {teacher.hash[:12]}"
    )
    ft = teacher.config.finetune
    if ft:
        console.print(
            f"fine-tuned ({ft.get('mode')}): best val Dice {ft.get('best_val_dice', float('nan')):.4f}"
        )
    if mode == "lora" and not has_lora(teacher.sam):
        add_lora(teacher.sam.image_encoder, LoraConfig(rank=lora_rank))
    set_trainable(teacher, mode)
    print_parameter_counts(parameter_counts(teacher.sam), title=f"{teacher.name} parameters ({mode} mode)")
