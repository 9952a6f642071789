"""The `training` block of an export manifest: how the exported student was trained, in a few
scalars the viewer's model card shows (edge.viewer.card). Torch-free.

Read from the source run's summary.json when there is one, else from the checkpoint's own
student.json (method, rounds); None when neither records anything.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath


def _summary(run_dir: Path | None) -> dict:
    """The run's summary.json as a dict ({} when absent or unreadable)."""
    path = run_dir / "summary.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def training_block(meta: dict, run_dir: Path | None) -> dict | None:
    """{method, rounds, data, labeled_images, clients, client_images, val_images, val_dice}, the
    keys a source records (None values dropped); None when nothing is recorded."""
    s = _summary(run_dir)
    cfg = s.get("config") if isinstance(s.get("config"), dict) else {}
    sizes = s.get("split_sizes") if isinstance(s.get("split_sizes"), dict) else {}
    clients = sizes.get("clients") if isinstance(sizes.get("clients"), list) else None
    data = s.get("data")
    block = {
        "method": cfg.get("method", meta.get("method")),
        "rounds": cfg.get("rounds", meta.get("rounds")),
        "data": PurePath(data).name if isinstance(data, str) and ("/" in data or "\\" in data) else data,
        "labeled_images": sizes.get("server_labeled"),
        "clients": len(clients) if clients is not None else None,
        "client_images": sum(clients) if clients and all(isinstance(c, int) for c in clients) else None,
        "val_images": sizes.get("val"),
        "val_dice": round(s["val_dice"], 4) if isinstance(s.get("val_dice"), int | float) else None,
    }
    block = {k: v for k, v in block.items() if v is not None}
    return block or None
