"""Student checkpoints: the contract between training (writer) and export (reader).

A student checkpoint is a directory holding two files::

    student.safetensors   the model's state dict (CPU tensors, safetensors format)
    student.json          {"arch": "unet-s", "norm": "batch" | "group",
                           "preprocessing": Preprocessing.to_dict(), "threshold": 0.5,
                           "source_run": "<run dir or id>",
                           # optional, lets `samfed export` find calibration / held-out images:
                           "data_path": "<dataset folder, absolute or relative to the run dir>",
                           "split": "<split.json path relative to the run dir>" | {split dict},
                           ...any other metadata}

A run directory holds the global student in ``global/`` (and, for heterogeneous runs, one per
client in ``clients/<k>/``); it may hold ``split.json`` (``samfed.data.partition.Split.save``:
``server_labeled``, ``clients``, ``val``, ``test`` id lists). `resolve_checkpoint` accepts a run
directory (-> ``global/``), a checkpoint directory, or the ``student.safetensors`` file next to its
``student.json``. Training writes with `save_student_checkpoint`; export reads with
`load_student_checkpoint`. Missing or wrong files (bad preprocessing or threshold, weights that
do not fit or are not finite) raise `SamfedError` with one sentence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from edge.manifest import check_threshold, parse_preprocessing
from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing

WEIGHTS = "student.safetensors"
META = "student.json"


def save_student_checkpoint(
    model, arch: str, norm: str, prep: Preprocessing, out_dir: str | Path, **meta
) -> Path:
    """Write `out_dir/student.safetensors` + `out_dir/student.json`; returns `out_dir`.

    `meta` is merged into student.json (e.g. threshold=0.5, source_run=..., data_path=..., split=...).
    """
    from safetensors.torch import save_file

    from samfed.models import build_options

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    info = {
        "arch": arch,
        "norm": norm,
        **build_options(model),
        "preprocessing": prep.to_dict(),
        "threshold": 0.5,
        "source_run": None,
    }
    info.update(meta)
    (out / META).write_text(json.dumps(info, indent=2, default=str))
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """Run dir, checkpoint dir or .safetensors file -> the checkpoint directory."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".safetensors":
            raise SamfedError(f"{p} is not a student checkpoint: expected a run directory or {WEIGHTS}.")
        d = p.parent
    elif p.is_dir():
        d = p / "global" if (p / "global" / META).is_file() else p
    else:
        raise SamfedError(
            f"Checkpoint {p} does not exist; pass a run directory, a checkpoint folder or {WEIGHTS}."
        )
    for name in (META, WEIGHTS):
        if not (d / name).is_file():
            raise SamfedError(
                f"No {name} in {d}: pass a run directory (with global/) or a student checkpoint."
            )
    return d


@dataclass
class CheckpointInfo:
    """Parsed student.json of checkpoint directory `dir`."""

    dir: Path
    arch: str
    norm: str
    prep: Preprocessing
    threshold: float
    meta: dict

    @property
    def run_dir(self) -> Path | None:
        """The run directory this checkpoint belongs to (parent of global/ or clients/<k>/)."""
        if self.dir.name == "global":
            return self.dir.parent
        if self.dir.parent.name == "clients":
            return self.dir.parent.parent
        return None


def _student_size(size: int) -> None:
    """ValueError unless a student runs at `size` px (the rule of RunConfig.image_size)."""
    rule = next(f for f in fields(RunConfig) if f.name == "image_size").metadata["rule"]
    if not rule.bounds_ok(size):
        raise ValueError(f"preprocessing size must be {rule.describe()} for a student, got {size}")


def read_checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Parse and check student.json (preprocessing, threshold) without touching torch."""
    d = resolve_checkpoint(path)
    try:
        meta = json.loads((d / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        prep = parse_preprocessing(meta["preprocessing"])
        _student_size(prep.size)
        return CheckpointInfo(
            d,
            str(meta["arch"]),
            str(meta.get("norm", "batch")),
            prep,
            check_threshold(meta.get("threshold", 0.5)),
            meta,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise SamfedError(f"{d / META} is not a valid student description ({exc}).") from None


def check_finite_weights(state: dict, path: Path) -> None:
    """SamfedError when a floating-point tensor of `state` holds NaN or inf (a diverged run)."""
    from samfed.method.local_update import first_nonfinite

    bad = first_nonfinite(state)
    if bad is not None:
        raise SamfedError(
            f"Weights in {path} are not finite (tensor {bad} holds NaN or inf): the run that wrote them "
            "diverged; use a checkpoint of a run that trained normally."
        )


def load_student_checkpoint(path: str | Path):
    """Checkpoint -> (model in eval mode, meta dict with `dir`, `arch`, `norm`, `prep`, `threshold`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from samfed.models import create_student

    info = read_checkpoint_info(path)
    model = create_student(info.arch, norm=info.norm, pretrained=False)  # the state dict below has it all
    try:
        state = load_file(str(info.dir / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise SamfedError(f"Cannot read weights {info.dir / WEIGHTS}: {exc}.") from None
    check_finite_weights(state, info.dir / WEIGHTS)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise SamfedError(
            f"Weights in {info.dir / WEIGHTS} do not fit student {info.arch!r} (norm {info.norm!r})."
        ) from None
    model.eval()
    meta = dict(info.meta, dir=info.dir, prep=info.prep, threshold=info.threshold)
    return model, meta
