"""The resume state written after every round: global and client weights, the initial global
model, the RNG state and the thread count."""

from __future__ import annotations

import torch
from torch import nn

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.method.local_update import state_copy
from samfed.train.run_dir import RunDir

CHECKPOINT_FORMAT = 1


def round_state(
    round_: int, glob: nn.Module, clients: list[nn.Module], cfg: RunConfig, global_init: dict
) -> dict:
    return {
        "global_init": global_init,
        "format": torch.tensor(CHECKPOINT_FORMAT),
        "round": torch.tensor(round_),
        "seed": torch.tensor(cfg.seed),
        "global": state_copy(glob),
        "clients": [state_copy(m) for m in clients],
        "torch_rng": torch.get_rng_state(),
        "threads": torch.tensor(torch.get_num_threads()),
    }


def restore_clients(run: RunDir, clients: list[nn.Module], state: dict) -> None:
    """Client weights from the resume state, or, for a finished run whose state leaves them out,
    from clients/<k>/ (written with that state)."""
    if "clients" in state:
        for m, st in zip(clients, state["clients"], strict=True):
            m.load_state_dict(st)
        return
    from safetensors.torch import load_file

    for k, m in enumerate(clients):
        path = run.client_dir(k) / "student.safetensors"
        try:
            m.load_state_dict(load_file(str(path)))
        except Exception as exc:  # noqa: BLE001 - missing, torn or foreign file
            raise SamfedError(
                f"Cannot resume {run.root}: client {k}'s weights {path} are unreadable ({exc})."
            ) from None


def compact_finished_state(run: RunDir) -> None:
    """Drop the client models from a finished run's resume state: finish() has just written them
    to clients/<k>/, where a resume reads them (`restore_clients`)."""
    state = run.load_state()
    if state.pop("clients", None) is not None:
        run.save_state(state)
