"""Helpers for the export/edge tests: tiny students whose masks are not trivially empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.checkpoint import save_student_checkpoint
from samfed.data import load_dataset, read_image
from samfed.models import create_student
from samfed.preprocess import Preprocessing, to_input

SIZE = 64


def inputs(data_dir: Path, prep: Preprocessing, n: int = 8) -> np.ndarray:
    """(n, 3, S, S) float32 student inputs from the first n images of a dataset folder."""
    ds = load_dataset(data_dir)
    return np.stack([to_input(read_image(s.image), prep) for s in ds.samples[:n]])


def tiny_student(name: str, norm: str, x: np.ndarray) -> nn.Module:
    """Random-init student with data-calibrated BatchNorm statistics and logits rescaled to
    median 0 / std 2 on `x`, so masks cover about half the image and depend on the input
    (a stand-in for a trained model that costs no training time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 OpenMP threads on a busy 2-core machine are ~20x slower
    try:
        return _tiny_student(name, norm, x)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _tiny_student(name: str, norm: str, x: np.ndarray) -> nn.Module:
    torch.manual_seed(0)
    model = create_student(name, norm=norm)
    xt = torch.from_numpy(x)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: exact statistics after one pass
    model.train()
    model(xt)
    model.eval()
    for m in model.modules():  # no extreme per-channel gains (trained nets rarely have them)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.clamp_(min=float(m.running_var.median()))
    head = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 1][-1]
    logits = model(xt)
    scale = 2.0 / float(logits.std())
    head.weight.mul_(scale)
    if head.bias is None:
        head.bias = nn.Parameter(torch.zeros(1))
    head.bias.mul_(scale).sub_(float(logits.median()) * scale)
    return model


def tiny_checkpoint(name: str, norm: str, data_dir: Path, out: Path, **meta) -> Path:
    """Write a tiny-student checkpoint (SIZE px) recording `data_dir` as the run's data."""
    prep = Preprocessing(size=SIZE)
    model = tiny_student(name, norm, inputs(data_dir, prep))
    return save_student_checkpoint(model, name, norm, prep, out, data_path=str(data_dir), **meta)
