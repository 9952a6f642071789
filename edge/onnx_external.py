"""Find the external-data files an ONNX model refers to, without the `onnx` package. Torch-free.

An ONNX tensor may keep its bytes in another file (`TensorProto.external_data`, key `location`,
relative to the model's folder). ONNX Runtime opens those files itself, so an export folder's
trust check must know them. This walks the protobuf wire format along the only message fields
that can hold tensors (graphs, nodes, attributes, functions, training info, sparse tensors) and
skips every other field by its length, so it reads a model of any size in one pass.
"""

from __future__ import annotations

from pathlib import Path

from samfed.errors import SamfedError

# message name -> {field number: message name of that (length-delimited) field}
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
_MAX_DEPTH = 64  # nested subgraphs (If/Loop bodies); deeper is not a model samfed writes


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview, start: int, end: int):
    """Yield (field number, start, end) of every length-delimited field in buf[start:end]."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        wire = key & 7
        if wire == 0:
            _, i = _varint(buf, i, end)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise _Malformed
            yield key >> 3, i, i + n
            i += n
        else:  # groups (3, 4) and invalid wire types
            raise _Malformed
    if i != end:
        raise _Malformed


def _entry(buf: memoryview, start: int, end: int) -> tuple[str, str]:
    kv = {f: bytes(buf[s:e]).decode("utf-8") for f, s, e in _fields(buf, start, end) if f in (1, 2)}
    return kv.get(1, ""), kv.get(2, "")


def _walk(buf: memoryview, start: int, end: int, kind: str, depth: int, out: set[str]) -> None:
    if depth > _MAX_DEPTH:
        raise _Malformed
    schema = _SCHEMA[kind]
    for field, s, e in _fields(buf, start, end):
        child = schema.get(field)
        if child == "entry":
            key, value = _entry(buf, s, e)
            if key == "location":
                out.add(value)
        elif child is not None:
            _walk(buf, s, e, child, depth + 1, out)


def external_data_locations(path: str | Path) -> set[str]:
    """The `location` strings of every external-data tensor in the ONNX model at `path`."""
    try:
        data = memoryview(Path(path).read_bytes())
    except OSError as exc:
        raise SamfedError(f"Cannot read model file {path} ({exc.strerror}).") from None
    out: set[str] = set()
    try:
        _walk(data, 0, len(data), "model", 0, out)
    except (_Malformed, UnicodeDecodeError):
        raise SamfedError(
            f"{path} is not a valid ONNX model file (its protobuf encoding is corrupt)."
        ) from None
    return out
