"""What the SAM-Fed server and nodes say to each other over Flower (record names, checks).

Server -> node
- query "hello":  config(protocol, asset hashes)           -> info(partition-id, name, num-samples,
                                                               protocol, assets)
- query "setup":  config + "public" (D_p at the working size, uint8) and "files" (an exported or
  saved teacher, when the node lacks it)                   -> info(ok)
- train:          config(round, seed, run-config TOML, arch, asset hashes, dp-clip),
                  "global" (global weights) and, for heterogeneous students, "local" (the
                  client's own weights from its last round)
                                                           -> "state" (weights), "metrics", "info"

Weights travel packed (`state_record`): one ArrayRecord of two uint8 arrays, a JSON layout of
[name, dtype, shape] and the tensors' bytes, so a message is a few objects, not one per tensor.

Node -> server replies may hold exactly the records of `REPLY_RECORDS`: a packed ArrayRecord whose
tensors are the model's state dict, a MetricRecord of scalars and a ConfigRecord of scalars (ids, names).
`check_reply` enforces that on the server (anything else is rejected); `reply_content` builds it
on the node and refuses non-scalar values, so images, masks and teacher maps cannot leave a node.

Each side treats what the other sends as untrusted input: the node accepts asset hashes only as
`asset_digest` hex strings (they name folders under its assets/), asset file names only as plain
names, and checks every config value it uses (`train_request`, `check_public`); the server checks
a node's hello (`read_hello`) and every reply (`check_reply`, `samfed.federation.validation`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from samfed.errors import SamfedError

PROTOCOL_VERSION = 2  # 2: weights travel packed (`state_record`)
CONFIG, INFO, METRICS, STATE = "config", "info", "metrics", "state"
GLOBAL, GLOBAL_INIT, LOCAL, PUBLIC, FILES = "global", "global-init", "local", "public", "files"
REPLY_RECORDS = {STATE: ArrayRecord, METRICS: MetricRecord, INFO: ConfigRecord}
SCALARS = (int, float, bool, str)
DIGEST_CHARS = 32  # hex characters of an `asset_digest`
MAX_SAMPLES = 10_000_000  # most images one site may announce
TEACHER_KINDS = ("onnx", "torch")
LAYOUT, PACKED = "layout", "packed"  # the two arrays of a packed state dict
STATE_DTYPES = {  # dtypes a state dict may carry -> bytes per element
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
}  # fmt: skip
MAX_LAYOUT_BYTES = 4 * 2**20
MAX_DIM = 2**31
_DIGEST = re.compile(f"[0-9a-f]{{{DIGEST_CHARS}}}")
_ASSET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_NODE_NAME = re.compile(r"\w[\w .@+-]{0,63}")


def asset_digest(*parts: bytes) -> str:
    """The name of an asset (D_p, a teacher folder): sha256 over the parts' sha256 digests, as
    `DIGEST_CHARS` lowercase hex characters."""
    h = hashlib.sha256()
    for p in parts:
        h.update(hashlib.sha256(p).digest())
    return h.hexdigest()[:DIGEST_CHARS]


def files_digest(files: Mapping[str, bytes]) -> str:
    """The asset digest of a flat folder (a teacher): over (name, bytes) in name order."""
    return asset_digest(*[n.encode() + b"\0" + files[n] for n in sorted(files)])


def public_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """The asset digest of the labeled set D_p: over its uint8 images and masks arrays."""
    return asset_digest(arrays["images"].tobytes(), arrays["masks"].tobytes())


def check_digest(value: object, key: str) -> str:
    """`value` if it is an `asset_digest` string (it becomes a folder name), else SamfedError."""
    if isinstance(value, str) and _DIGEST.fullmatch(value):
        return value
    raise SamfedError(
        f"The server sent an invalid {key} {str(value)[:80]!r}: expected {DIGEST_CHARS} lowercase hex "
        "characters (a content digest)."
    )


def check_asset_name(name: object) -> str:
    """`name` if it is a plain file name (letters, digits, `_.-`, no leading dot), else SamfedError."""
    if isinstance(name, str) and _ASSET_NAME.fullmatch(name) and ".." not in name:
        return name
    raise SamfedError(
        f"The server sent an asset file named {str(name)[:80]!r}: expected a plain file name "
        "(letters, digits, '_', '.', '-'; no folders, no leading dot)."
    )


def config_int(cfg: Mapping[str, Any], key: str, lo: int, hi: int) -> int:
    """cfg[key] as an int in lo..hi (bools and floats refused), else SamfedError."""
    v = cfg.get(key)
    if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
        return v
    raise SamfedError(f"The server sent {key} = {str(v)[:80]!r}: expected a whole number from {lo} to {hi}.")


def config_float(cfg: Mapping[str, Any], key: str, lo: float, hi: float = math.inf) -> float:
    """cfg[key] as a finite float in [lo, hi] (ints accepted), else SamfedError."""
    v = cfg.get(key)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and lo <= v <= hi:
        return float(v)
    raise SamfedError(
        f"The server sent {key} = {str(v)[:80]!r}: expected a finite number from {lo:g} to {hi:g}."
    )


def config_str(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...] | None = None) -> str:
    """cfg[key] as a str (one of `choices` when given), else SamfedError."""
    v = cfg.get(key)
    if isinstance(v, str) and (choices is None or v in choices):
        return v
    expected = "one of " + ", ".join(choices) if choices else "a string"
    raise SamfedError(f"The server sent {key} = {str(v)[:80]!r}: expected {expected}.")


@dataclass(frozen=True)
class TrainRequest:
    """The checked config record of a train message."""

    round: int
    seed: int
    run_config: str  # RunConfig as TOML
    arch: str
    public_hash: str
    dp_clip: float
    teacher_kind: str | None = None
    teacher_ref: str | None = None

    @property
    def teacher_spec(self) -> dict[str, str]:
        """{teacher-kind, teacher-ref} when the method uses a teacher, else {}."""
        if self.teacher_kind is None:
            return {}
        return {"teacher-kind": self.teacher_kind, "teacher-ref": str(self.teacher_ref)}


def train_request(cfg: Mapping[str, Any]) -> TrainRequest:
    """Check a train message's config record (types, ranges, digests) -> TrainRequest; SamfedError
    naming the first bad value. The teacher keys come both or neither."""
    has_teacher = "teacher-kind" in cfg or "teacher-ref" in cfg
    return TrainRequest(
        round=config_int(cfg, "round", 1, 10**6),
        seed=config_int(cfg, "seed", 0, 2**63 - 1),
        run_config=config_str(cfg, "run-config"),
        arch=config_str(cfg, "arch"),
        public_hash=check_digest(cfg.get("public-hash"), "public-hash"),
        dp_clip=config_float(cfg, "dp-clip", 0.0),
        teacher_kind=config_str(cfg, "teacher-kind", TEACHER_KINDS) if has_teacher else None,
        teacher_ref=check_digest(cfg.get("teacher-ref"), "teacher-ref") if has_teacher else None,
    )


def check_public(arrays: Mapping[str, np.ndarray], ids: object) -> list[str]:
    """Check the server's labeled set D_p as sent at setup -> its ids; SamfedError unless images are
    (N, S, S, 3) uint8, masks (N, S, S) of 0/1 and ids N distinct strings, N >= 1."""
    images, masks = arrays.get("images"), arrays.get("masks")
    if not isinstance(images, np.ndarray) or not isinstance(masks, np.ndarray):
        raise SamfedError("The server's labeled set lacks its images or masks array.")
    n = images.shape[0] if images.ndim == 4 else 0
    if n < 1 or images.dtype != np.uint8 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise SamfedError(
            f"The server's labeled images have shape {images.shape} ({images.dtype}): "
            "expected (N, S, S, 3) uint8."
        )
    if masks.shape != images.shape[:3] or masks.dtype != np.uint8 or int(masks.max(initial=0)) > 1:
        raise SamfedError(
            f"The server's labeled masks have shape {masks.shape} ({masks.dtype}): expected "
            f"{images.shape[:3]} uint8 of 0/1."
        )
    if not isinstance(ids, list | tuple) or not all(isinstance(i, str) for i in ids):
        raise SamfedError("The server's labeled-set ids (public-ids) must be a list of strings.")
    if len(ids) != n or len(set(ids)) != n:
        raise SamfedError(f"The server sent {len(ids)} labeled-set ids for {n} images (or duplicates).")
    return list(ids)


@dataclass(frozen=True)
class NodeIdentity:
    """What a node says about itself in its hello reply (checked by `read_hello`)."""

    k: int
    name: str
    num_samples: int


def read_hello(info: Mapping[str, Any], clients: int) -> NodeIdentity:
    """A hello reply's info record -> NodeIdentity; ValueError(reason) unless protocol is
    PROTOCOL_VERSION, partition-id an int in 0..clients-1, name a short plain name (no markup) and
    num-samples an int in 1..MAX_SAMPLES."""
    k, name, n = info.get("partition-id"), info.get("name"), info.get("num-samples")
    if type(info.get("protocol")) is not int or info.get("protocol") != PROTOCOL_VERSION:
        raise ValueError(
            f"it speaks samfed protocol {str(info.get('protocol'))[:20]}, this server speaks "
            f"{PROTOCOL_VERSION}: run the same samfed version on the server and the nodes"
        )
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < clients:
        raise ValueError(f"partition-id {str(k)[:40]!r} is not a client number 0..{clients - 1}")
    if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"name {str(name)[:40]!r} is not a plain name (1-64 letters, digits, spaces or _.@+-)"
        )
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"num-samples {str(n)[:40]!r} is not a whole number from 1 to {MAX_SAMPLES}")
    return NodeIdentity(k, name, n)


def state_record(state: Mapping[str, Any]) -> ArrayRecord:
    """A torch state dict as a packed ArrayRecord: `LAYOUT` (UTF-8 JSON list of [name, dtype,
    shape], uint8) and `PACKED` (every tensor's bytes in that order, uint8). Two objects travel
    instead of one per tensor; bit-exact, key order kept."""
    import torch

    layout, parts = [], []
    for name, value in state.items():
        t = value.detach().cpu().contiguous()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in STATE_DTYPES:
            raise ValueError(f"state[{name!r}] has dtype {dtype}, which the protocol does not carry")
        layout.append([name, dtype, list(t.shape)])
        parts.append(t.reshape(-1).view(torch.uint8))
    packed = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)
    text = json.dumps(layout, separators=(",", ":")).encode()
    return ArrayRecord({LAYOUT: Array(np.frombuffer(text, np.uint8).copy()), PACKED: Array(packed.numpy())})


def _layout(record: ArrayRecord) -> tuple[list[tuple[str, str, tuple[int, ...]]], np.ndarray]:
    """A packed record's checked layout and bytes; ValueError(reason) unless it holds exactly
    `LAYOUT` and `PACKED` as 1-D uint8, the layout is a list of distinct [name, dtype in
    `STATE_DTYPES`, shape of non-negative ints] and the sizes add up to the packed length."""
    if set(record.keys()) != {LAYOUT, PACKED}:
        raise ValueError("weights are not a packed state dict (expected exactly the arrays layout, packed)")
    try:
        raw, packed = record[LAYOUT].numpy(), record[PACKED].numpy()
    except (TypeError, ValueError, OSError, EOFError):
        raise ValueError("packed weights are not readable numpy arrays") from None
    if raw.dtype != np.uint8 or raw.ndim != 1 or packed.dtype != np.uint8 or packed.ndim != 1:
        raise ValueError("packed weights must be 1-D uint8 arrays")
    if raw.size > MAX_LAYOUT_BYTES:
        raise ValueError(f"the weights' layout is over {MAX_LAYOUT_BYTES} bytes")
    try:
        entries = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("the weights' layout is not JSON") from None
    if not isinstance(entries, list):
        raise ValueError("the weights' layout is not a list")
    layout, seen, total = [], set(), 0
    for e in entries:
        ok = isinstance(e, list) and len(e) == 3 and isinstance(e[0], str) and e[1] in STATE_DTYPES
        shape = e[2] if ok else None
        if not ok or not isinstance(shape, list) or len(shape) > 8 or e[0] in seen:
            raise ValueError(f"bad entry in the weights' layout: {str(e)[:80]}")
        if not all(type(d) is int and 0 <= d <= MAX_DIM for d in shape):
            raise ValueError(f"bad shape in the weights' layout: {str(e)[:80]}")
        seen.add(e[0])
        total += math.prod(shape) * STATE_DTYPES[e[1]]
        layout.append((e[0], e[1], tuple(shape)))
    if total != packed.size:
        raise ValueError(f"the weights' layout describes {total} bytes, {packed.size} were sent")
    return layout, packed


def state_layout(record: ArrayRecord) -> dict[str, tuple[str, tuple[int, ...]]]:
    """A packed record's {name: (dtype, shape)}; ValueError(reason) if it is malformed."""
    return {name: (dtype, shape) for name, dtype, shape in _layout(record)[0]}


def record_state(record: ArrayRecord) -> dict[str, Any]:
    """Packed ArrayRecord -> torch state dict (CPU tensors that own their memory, dtypes kept);
    ValueError(reason) if the record is malformed (see `_layout`)."""
    import torch

    layout, packed = _layout(record)
    flat = torch.from_numpy(packed)
    out, offset = {}, 0
    for name, dtype, shape in layout:
        n = math.prod(shape) * STATE_DTYPES[dtype]
        out[name] = flat[offset : offset + n].clone().view(getattr(torch, dtype)).reshape(shape)
        offset += n
    return out


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
    """JSON-able summary of a message's content: per record its type and keys (+ shapes, dtypes;
    a packed state dict is described by the tensors it holds)."""
    out: dict[str, Any] = {}
    for name, rec in content.items():
        if isinstance(rec, ArrayRecord):
            try:
                arrays = {k: {"shape": list(s), "dtype": d} for k, (d, s) in state_layout(rec).items()}
            except ValueError:
                arrays = {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in rec.items()}
            out[name] = {"type": "ArrayRecord", "arrays": arrays}
        elif isinstance(rec, MetricRecord):
            out[name] = {"type": "MetricRecord", "values": {k: type(v).__name__ for k, v in rec.items()}}
        else:
            out[name] = {"type": type(rec).__name__, "values": {k: type(v).__name__ for k, v in rec.items()}}
    return out


def check_reply(content: RecordDict, expected: Mapping[str, tuple[int, ...]] | None) -> str | None:
    """None if the reply holds only allowed records: a packed state dict whose tensors are named and
    shaped like `expected` (None: no weights allowed), scalar metrics and scalar info; else the
    reason."""
    for name, rec in content.items():
        kind = REPLY_RECORDS.get(name)
        if kind is None or not isinstance(rec, kind):
            return f"unexpected record {name!r} ({type(rec).__name__})"
        if isinstance(rec, ArrayRecord):
            if expected is None:
                return "unexpected weights in the reply"
            try:
                layout = state_layout(rec)
            except ValueError as exc:
                return str(exc)
            if set(layout) != set(expected):
                return "reply arrays do not match the model's state dict keys"
            for k, (_, shape) in layout.items():
                if shape != tuple(expected[k]):
                    return f"reply array {k} has shape {shape}, expected {tuple(expected[k])}"
        else:
            for k, v in rec.items():
                if not isinstance(v, SCALARS):
                    return f"non-scalar value {name}[{k!r}] ({type(v).__name__})"
    if expected is not None and STATE not in content:
        return "reply has no weights"
    return None
