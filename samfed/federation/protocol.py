"""What the SAM-Fed server and nodes say to each other over Flower (record names, checks).

Server -> node
- query "hello":  config(kind, versions)                    -> info(partition-id, name, num-samples, assets)
- query "setup":  config + "public" (D_p at the working size, uint8) and "files" (an exported or
  saved teacher, when the node lacks it)                   -> info(ok)
- train:          config(round, seed, run-config TOML, arch, asset hashes, dp-clip),
                  "global" (global weights) and, for heterogeneous students, "local" (the
                  client's own weights from its last round)
                                                           -> "state" (weights), "metrics", "info"

Node -> server replies may hold exactly the records of `REPLY_RECORDS`: an ArrayRecord whose keys
are the model's state dict, a MetricRecord of scalars and a ConfigRecord of scalars (ids, names).
`check_reply` enforces that on the server (anything else is rejected); `reply_content` builds it
on the node and refuses non-scalar values, so images, masks and teacher maps cannot leave a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

PROTOCOL_VERSION = 1
CONFIG, INFO, METRICS, STATE = "config", "info", "metrics", "state"
GLOBAL, GLOBAL_INIT, LOCAL, PUBLIC, FILES = "global", "global-init", "local", "public", "files"
REPLY_RECORDS = {STATE: ArrayRecord, METRICS: MetricRecord, INFO: ConfigRecord}
SCALARS = (int, float, bool, str)


def state_record(state: Mapping[str, Any]) -> ArrayRecord:
    """A torch state dict as an ArrayRecord (bit-exact; key order kept)."""
    return ArrayRecord(torch_state_dict=dict(state))


def record_state(record: ArrayRecord) -> dict[str, Any]:
    """ArrayRecord -> torch state dict (CPU tensors, dtypes kept)."""
    return dict(record.to_torch_state_dict())


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays (server -> node payloads such as D_p)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def scalar_metrics(metrics: Mapping[str, Any]) -> MetricRecord:
    """Only finite int/float values (bools as 0/1); anything else is dropped, not sent."""
    out: dict[str, int | float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, int | float | np.integer | np.floating) and np.isfinite(v):
            out[k] = v.item() if isinstance(v, np.generic) else v
    return MetricRecord(out)


def scalar_info(info: Mapping[str, Any]) -> ConfigRecord:
    """A ConfigRecord of scalars only (ValueError for anything else: bytes, lists, arrays)."""
    for k, v in info.items():
        if not isinstance(v, SCALARS):
            raise ValueError(f"info[{k!r}] must be a scalar, got {type(v).__name__}")
    return ConfigRecord(dict(info))


def reply_content(
    state: Mapping[str, Any] | None, metrics: Mapping[str, Any], info: Mapping[str, Any]
) -> RecordDict:
    """The only shape a node's reply takes: weights (optional), scalar metrics, scalar info."""
    content = RecordDict({METRICS: scalar_metrics(metrics), INFO: scalar_info(info)})
    if state is not None:
        content[STATE] = state_record(state)
    return content


def describe(content: RecordDict) -> dict[str, Any]:
    """JSON-able summary of a message's content: per record its type and keys (+ shapes, dtypes)."""
    out: dict[str, Any] = {}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            out[name] = {
                "type": "ArrayRecord",
                "arrays": {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()},
            }
        elif isinstance(rec, MetricRecord):
            out[name] = {"type": "MetricRecord", "values": {k: type(v).__name__ for k, v in rec.items()}}
        else:
            out[name] = {"type": type(rec).__name__, "values": {k: type(v).__name__ for k, v in rec.items()}}
    return out


def check_reply(content: RecordDict, expected: Mapping[str, tuple[int, ...]] | None) -> str | None:
    """None if the reply holds only allowed records: state arrays named and shaped like `expected`
    (None: no arrays allowed), scalar metrics and scalar info; else the reason."""
    for name, rec in content.items():
        kind = REPLY_RECORDS.get(name)
        if kind is None or not isinstance(rec, kind):
            return f"unexpected record {name!r} ({type(rec).__name__})"
        if isinstance(rec, ArrayRecord):
            if expected is None:
                return "unexpected weights in the reply"
            keys = list(rec.keys())
            if set(keys) != set(expected):
                return "reply arrays do not match the model's state dict keys"
            for k in keys:
                if tuple(rec[k].shape) != tuple(expected[k]):
                    return f"reply array {k} has shape {tuple(rec[k].shape)}, expected {tuple(expected[k])}"
        else:
            for k, v in rec.items():
                if not isinstance(v, SCALARS):
                    return f"non-scalar value {name}[{k!r}] ({type(v).__name__})"
    if expected is not None and STATE not in content:
        return "reply has no weights"
    return None
