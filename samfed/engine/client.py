"""One client's update of a round, exactly as it leaves the client (in-process and on a node)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from samfed.config import RunConfig
from samfed.method.arrays import SegArrays
from samfed.method.dp import clip_update
from samfed.method.local_update import client_update, state_copy


def client_round(
    global_model: nn.Module,
    local_model: nn.Module,
    data: SegArrays,
    maps: np.ndarray | None,
    labeled: SegArrays,
    cfg: RunConfig,
    r: int,
    seed: int,
) -> tuple[dict[str, torch.Tensor], int, dict[str, float]]:
    """`client_update` of round r seeded by `seed` (`seeds.client_seed`) -> (state, sample count,
    metrics); with DP (cfg.dp_clip > 0) the update w_local - w_global is clipped to norm dp_clip
    before it leaves the client (metric dp_update_norm: its norm before clipping)."""
    reference = state_copy(global_model) if cfg.dp_clip > 0 else None
    torch.manual_seed(seed % (2**63))
    state, n, metrics = client_update(global_model, local_model, data, maps, labeled, cfg, round=r, seed=seed)
    if reference is not None:
        state, norm = clip_update(state, reference, cfg.dp_clip)
        metrics["dp_update_norm"] = norm
    return state, n, metrics
