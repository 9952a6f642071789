"""The run's models: seeded students and the initial global model trained on D_p (memoised)."""

from __future__ import annotations

import functools
import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from torch import nn

from samfed.config import RunConfig
from samfed.engine.seeds import init_seed
from samfed.engine.teacher import cache_root
from samfed.method.arrays import SegArrays
from samfed.method.device import resolve_device
from samfed.method.local_update import state_copy
from samfed.method.server import init_global


def new_model(arch: str, cfg: RunConfig, *keys) -> nn.Module:
    """A freshly initialised student on the run's device (seeded by cfg.seed, arch and keys)."""
    torch.manual_seed(init_seed(cfg.seed, arch, *keys))
    from samfed.models import create_student

    return create_student(arch, norm=cfg.norm).to(resolve_device(cfg.device))


@functools.cache
def _code_digest() -> str:
    """sha256 of the sources that define a student's training (models, method, preprocessing): a
    cached initial model is used only with the code that made it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("models/*.py"), *root.glob("method/*.py"), root / "preprocess.py"]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def init_key(glob: nn.Module, labeled: SegArrays, cfg: RunConfig) -> str:
    """Content key of the initial global model: its random initial weights (architecture, norm,
    seed), the D_p images and masks, the training settings, the code and the machine settings
    that change the result (threads, device, precision)."""
    import samfed

    settings = [
        cfg.server_epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.image_size, cfg.weak_aug,
        cfg.precision, resolve_device(cfg.device).type, torch.get_num_threads(), cfg.seed,
        torch.__version__, samfed.__version__, _code_digest(),
    ]  # fmt: skip
    digest = hashlib.sha256(repr(settings).encode())
    for name, tensor in glob.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    digest.update(np.ascontiguousarray(labeled.images).tobytes())
    digest.update(np.ascontiguousarray(labeled.masks).tobytes())
    return digest.hexdigest()


def cached_init_global(glob: nn.Module, labeled: SegArrays, cfg: RunConfig) -> dict:
    """`init_global`, memoised in `cache_root(cfg)/global_init` under `init_key` (a pure speed-up:
    training is deterministic for a given thread count). A cache entry that cannot be read is
    trained again."""
    from samfed.train.run_dir import atomic_write_bytes

    path = cache_root(cfg) / "global_init" / f"{init_key(glob, labeled, cfg)[:32]}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            glob.load_state_dict(saved["state"])
            return {**saved["info"], "cached": True}
        except Exception:  # noqa: BLE001 - a torn or foreign file: train again and replace it
            pass
    with torch.random.fork_rng(devices=[]):  # a cache hit and a miss leave the same random state
        info = init_global(glob, labeled, cfg, cfg.seed)
    buf = io.BytesIO()
    torch.save({"state": state_copy(glob), "info": info}, buf)
    atomic_write_bytes(path, buf.getvalue())
    return info
