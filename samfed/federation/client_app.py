"""The clinic side of a SAM-Fed federation: a Flower ClientApp run by each site's SuperNode.

Node settings come from `flower-supernode --node-config` (what `samfed node` writes):

    data-path     the clinic's private image folder (required)
    partition-id  the client number agreed with the server, 0..N-1 (required; fixes the seeds)
    name          a display name for reports (default client-<partition-id>)
    split         optional split JSON: use only split.clients[partition-id] of data-path (trials
                  that share one dataset folder between simulated sites)
    work-dir      node cache and report folder (default ~/.cache/samfed/node-<partition-id>)
    threads       thread cap for torch / ONNX Runtime (default: all cores)
    memory-mb     training memory budget (default: half of the memory available at round start)
    teacher-backend  variant of an exported teacher: auto (default: the export's recommendation, the
                     fastest variant matching the torch teacher) | onnx-fp32 | openvino-fp32 |
                     openvino-bf16 | openvino-int8 (onnxruntime / openvino: their FP32 variants)
    teacher-cache    folder of the per-image teacher-map cache (default work-dir/cache)
    teacher-checkpoint  base SAM weights file, only for a torch sam-vit-* teacher

Each round the node loads its images once (cached as arrays in work-dir), computes the teacher
maps once (cached per image, `samfed.teacher.cache`), runs `samfed.method.local_update.client_update`
— the very function the in-process runner calls — and sends back only the weights and scalar
metrics (`protocol.reply_content`). Wall time and peak memory of every round are written to
work-dir/node-report.jsonl and sent as metrics.

Everything the server sends is checked before use (`protocol.train_request`, `check_public`,
`check_digest`): asset hashes name folders under work-dir/assets/ only as hex digests, and each
stored asset must hash to its name; weights must fit the architecture they are loaded into.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from edge.node import RoundMeter, append_report, cap_threads
from samfed.errors import SamfedError
from samfed.federation import protocol as P

app = ClientApp()
REPORT = "node-report.jsonl"


@dataclass(frozen=True)
class NodeSettings:
    """The node's own settings (they never leave the node, except partition-id and name)."""

    data_path: Path
    partition_id: int
    name: str
    work_dir: Path
    split: Path | None = None
    threads: int | None = None
    memory_mb: float | None = None
    teacher_backend: str = "auto"
    teacher_cache_dir: Path | None = None
    teacher_checkpoint: str | None = None

    @property
    def teacher_cache(self) -> Path:
        return self.teacher_cache_dir or self.work_dir / "cache"

    @classmethod
    def from_node_config(cls, cfg: dict[str, Any]) -> NodeSettings:
        if "data-path" not in cfg:
            raise SamfedError("The node config lacks data-path (the clinic's image folder).")
        if "partition-id" not in cfg:
            raise SamfedError(
                "The node config lacks partition-id (the client number agreed with the server)."
            )
        k = int(cfg["partition-id"])
        work = cfg.get("work-dir") or Path.home() / ".cache" / "samfed" / f"node-{k}"
        threads = int(cfg["threads"]) if cfg.get("threads") else None
        return cls(
            data_path=Path(str(cfg["data-path"])).expanduser(),
            partition_id=k,
            name=str(cfg.get("name") or f"client-{k}"),
            work_dir=Path(str(work)).expanduser(),
            split=Path(str(cfg["split"])).expanduser() if cfg.get("split") else None,
            threads=threads,
            memory_mb=float(cfg["memory-mb"]) if cfg.get("memory-mb") else None,
            teacher_backend=str(cfg.get("teacher-backend") or "auto"),
            teacher_cache_dir=Path(str(cfg["teacher-cache"])).expanduser()
            if cfg.get("teacher-cache")
            else None,
            teacher_checkpoint=str(cfg["teacher-checkpoint"]) if cfg.get("teacher-checkpoint") else None,
        )

    def identity(self) -> dict[str, Any]:
        return {"partition-id": self.partition_id, "name": self.name}


def _sha(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def node_ids(node: NodeSettings) -> list[str]:
    """The ids of this node's images: the whole folder, or its part of a split file."""
    from samfed.data.readers import load_dataset

    ds = load_dataset(node.data_path)
    if node.split is None:
        return ds.ids
    from samfed.data.partition import Split

    split = Split.load(node.split)
    if not 0 <= node.partition_id < len(split.clients):
        raise SamfedError(f"partition-id {node.partition_id} is not a client of split {node.split}.")
    return list(split.clients[node.partition_id])


def node_data(node: NodeSettings, size: int):
    """This node's images at the working size (masks too when the folder has them: logging only),
    decoded exactly as the in-process runner does and cached in work-dir for later rounds."""
    from samfed.data.readers import load_dataset
    from samfed.engine.data import split_arrays
    from samfed.method.arrays import SegArrays

    ids = node_ids(node)
    cache = node.work_dir / "data" / f"{_sha(str(node.data_path.resolve()), ids, size)}.npz"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            masks = z["masks"] if "masks" in z.files else None
            return SegArrays(z["images"], masks, [str(i) for i in z["ids"]])
    data = split_arrays(load_dataset(node.data_path), ids, size, need_masks=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    extra = {"masks": data.masks} if data.masks is not None else {}
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, images=data.images, ids=np.asarray(ids), **extra)
    tmp.replace(cache)
    return data


def asset_dir(node: NodeSettings, digest: str, key: str = "asset hash") -> Path:
    """work-dir/assets/<digest>; SamfedError unless `digest` is a `protocol.asset_digest` string
    (a server-sent value never names anything else)."""
    return node.work_dir / "assets" / P.check_digest(digest, key)


def has_asset(node: NodeSettings, digest: str, key: str = "asset hash") -> bool:
    """Whether asset `digest` is stored complete; "" (no such asset) is False."""
    return bool(digest) and (asset_dir(node, digest, key) / ".complete").is_file()


def _check_content(digest: str, actual: str, what: str) -> None:
    if actual != digest:
        raise SamfedError(f"The server's {what} does not match its hash {digest} (it hashes to {actual}).")


def store_files(node: NodeSettings, digest: str, files: dict[str, bytes]) -> None:
    """Write a shipped folder (teacher) into work-dir/assets/<digest>/ (marked complete last).

    SamfedError, before anything is written, unless every name is a plain file name and the files
    hash to `digest`."""
    folder = asset_dir(node, digest, "teacher-hash")
    for name in files:
        P.check_asset_name(name)
    _check_content(digest, P.files_digest(files), "teacher files")
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / ".complete").write_text(digest)


def store_public(node: NodeSettings, digest: str, arrays: dict[str, np.ndarray], ids: list[str]) -> None:
    """Keep the server's labeled set D_p (public by design) in work-dir/assets/<digest>/; SamfedError,
    before anything is written, unless it is well-formed (`protocol.check_public`) and hashes to `digest`."""
    folder = asset_dir(node, digest, "public-hash")
    ids = P.check_public(arrays, ids)
    _check_content(digest, P.public_digest(arrays), "labeled set")
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "public.npz", images=arrays["images"], masks=arrays["masks"], ids=np.asarray(ids))
    (folder / ".complete").write_text(digest)


def load_public(node: NodeSettings, digest: str):
    """The server's labeled set D_p (SegArrays) stored at setup."""
    from samfed.method.arrays import SegArrays

    path = asset_dir(node, digest, "public-hash") / "public.npz"
    if not has_asset(node, digest, "public-hash"):
        raise SamfedError(
            f"The node has no copy of the server's labeled set {digest}; the setup step failed."
        )
    with np.load(path, allow_pickle=False) as z:
        return SegArrays(z["images"], z["masks"].astype(bool), [str(i) for i in z["ids"]])


class MapsMissing(Exception):
    """A teacher map is not in the cache: the real teacher has to be loaded."""


class CachedMapsTeacher:
    """A saved torch teacher's hash, prompt and input convention (from its teacher.json) without its
    weights: enough to read cached maps; asked to predict, it raises `MapsMissing`."""

    def __init__(self, folder: Path):
        from samfed.teacher.backbones import get_backbone
        from samfed.teacher.state import CONFIG_FILE

        meta = json.loads((folder / CONFIG_FILE).read_text())
        self.hash, self.prompt = str(meta["hash"]), str(meta["config"]["prompt"])
        self.name = str(meta["config"]["backbone"])
        self.input = get_backbone(self.name).input

    def predict_proba(self, *args, **kw):
        raise MapsMissing


def load_node_teacher(node: NodeSettings, spec: dict[str, Any], threads: int | None):
    """The teacher the server shipped at setup: an exported folder (run in the variant
    node.teacher_backend names; auto: the one the export recommends) or a saved torch teacher."""
    kind, ref = str(spec["teacher-kind"]), str(spec["teacher-ref"])
    folder = asset_dir(node, ref, "teacher-ref")
    if not has_asset(node, ref, "teacher-ref"):
        raise SamfedError(f"The node has no copy of teacher {ref}; the setup step failed.")
    if kind == "torch":
        from samfed.teacher import load_teacher

        return load_teacher(folder, node.teacher_checkpoint)
    if kind == "onnx":
        from edge.teacher_runtime import OnnxTeacher

        return OnnxTeacher(folder, variant=node.teacher_backend, threads=threads)
    raise SamfedError(f"Unknown teacher kind {kind!r} from the server.")


def node_teacher_maps(node: NodeSettings, data, spec: dict[str, Any], cfg, global_init: dict | None, threads):
    """(N, S, S) float32 teacher maps of the node's images through the runner's `compute_maps`
    (per-image cache under teacher-cache), kept as one array for later rounds.

    global_init: the initial global weights, whose masks prompt a ``global-box`` teacher."""
    import dataclasses

    from samfed.data.readers import load_dataset
    from samfed.engine.teacher import compute_maps, prompt_masks

    init_key = "" if global_init is None else _sha(*(v.numpy().tobytes() for v in global_init.values()))
    key = _sha(
        spec["teacher-kind"], spec["teacher-ref"], node.teacher_backend, cfg.image_size, data.ids, init_key
    )
    whole = node.work_dir / "maps" / f"{key}.npy"
    if whole.is_file():
        return np.load(whole)
    dataset = load_dataset(node.data_path)
    node_cfg = dataclasses.replace(cfg, teacher_cache=str(node.teacher_cache))
    masks = None
    if global_init is not None:  # the global-box prompt: boxes from the initial M_G's masks
        from samfed.models import create_student
        from samfed.preprocess import Preprocessing

        model = create_student(cfg.global_arch, norm=cfg.norm)
        model.load_state_dict(global_init)
        masks = prompt_masks("global-box", model, data, Preprocessing(size=cfg.image_size))
    try:  # all maps cached (a later run): the teacher's weights are never loaded
        if spec["teacher-kind"] != "torch" or not has_asset(node, str(spec["teacher-ref"]), "teacher-ref"):
            raise MapsMissing
        teacher = CachedMapsTeacher(asset_dir(node, str(spec["teacher-ref"]), "teacher-ref"))
        maps = compute_maps(teacher, dataset, data.ids, node_cfg, masks)
    except MapsMissing:
        teacher = load_node_teacher(node, spec, threads)
        maps = compute_maps(teacher, dataset, data.ids, node_cfg, masks)
    whole.parent.mkdir(parents=True, exist_ok=True)
    np.save(whole, maps)
    return maps


def _settings(context: Context) -> NodeSettings:
    """The node's settings from its node config; a virtual node of Flower's simulation runtime
    (partition-id only) gets the rest from this machine's simulation nodes file, never from the
    server (`simulation.simulated_node_config`)."""
    from samfed.federation.simulation import simulated_node_config

    return NodeSettings.from_node_config(simulated_node_config(dict(context.node_config)))


def _config(msg: Message):
    """The message's config record; SamfedError when it has none."""
    from flwr.app import ConfigRecord

    cfg = msg.content.get(P.CONFIG)
    if not isinstance(cfg, ConfigRecord):
        raise SamfedError("The server's message has no config record.")
    return cfg


def node_run_config(text: str):
    """The server's method settings (TOML text) checked as a local config.toml would be ->
    RunConfig; machine settings (paths, threads, device) are the node's own and refused."""
    from samfed.config import RunConfig
    from samfed.engine.checks import validate_config

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SamfedError(f"The server's run config is not valid TOML ({exc}).") from None
    foreign = sorted(set(raw) & set(RunConfig.machine_settings()))
    if foreign:
        raise SamfedError(
            f"The server sent machine settings ({', '.join(foreign)}); a node uses its own: "
            "update the server to this samfed version."
        )
    cfg = RunConfig.from_dict(raw, source="server run config")
    validate_config(dataclasses.replace(cfg, device="cpu"))  # the node trains on its CPU
    return cfg


def checked_state(record, model, what: str) -> dict:
    """Weights from the server (ArrayRecord) that fit `model` (keys, shapes, dtypes, finite values)."""
    from samfed.federation.validation import check_state

    if not isinstance(record, ArrayRecord):
        raise SamfedError(f"The server's train message lacks the {what}.")
    try:
        state = P.record_state(record)
    except ValueError as exc:
        raise SamfedError(f"The server's {what} are malformed: {exc}.") from None
    reason = check_state(state, model.state_dict())
    if reason is not None:
        raise SamfedError(f"The server's {what} do not fit the model: {reason}.")
    return state


@app.query("hello")
def hello(msg: Message, context: Context) -> Message:
    """Identify this node: client number, name, sample count and which assets it already holds."""
    node = _settings(context)
    cfg = _config(msg)
    public = P.check_digest(cfg.get("public-hash"), "public-hash")
    teacher = cfg.get("teacher-hash", "")
    info = {
        **node.identity(),
        "num-samples": len(node_ids(node)),
        "protocol": P.PROTOCOL_VERSION,
        "has-public": has_asset(node, public, "public-hash"),
        "has-teacher": has_asset(node, teacher, "teacher-hash") if teacher != "" else True,
    }
    return Message(P.reply_content(None, {}, info), reply_to=msg)


@app.query("setup")
def setup(msg: Message, context: Context) -> Message:
    """Store what the server sent once per node: D_p (public, labeled) and the teacher files."""
    node = _settings(context)
    cfg = _config(msg)
    if P.PUBLIC in msg.content:
        if not isinstance(msg.content[P.PUBLIC], ArrayRecord):
            raise SamfedError("The server's labeled set must be an array record.")
        arrays = P.record_arrays(msg.content[P.PUBLIC])
        store_public(node, cfg.get("public-hash"), arrays, cfg.get("public-ids"))
    if P.FILES in msg.content:
        files = msg.content[P.FILES]
        if not all(isinstance(v, bytes) for v in files.values()):
            raise SamfedError("The server's teacher files must all be byte strings.")
        store_files(node, cfg.get("teacher-hash"), {k: bytes(v) for k, v in files.items()})
    return Message(P.reply_content(None, {}, {**node.identity(), "ok": True}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One SAM-Fed local update on this node's private images."""
    import psutil

    # seconds from the ClientApp process start to this handler: Flower's per-message start-up
    startup = time.time() - psutil.Process().create_time()
    node = _settings(context)
    cfg_rec = msg.content[P.CONFIG]
    state, metrics = local_round(node, cfg_rec, msg.content, startup)
    return Message(P.reply_content(state, metrics, node.identity()), reply_to=msg)


def local_round(
    node: NodeSettings, cfg_rec, content, startup_s: float = 0.0
) -> tuple[dict, dict[str, float]]:
    """Everything a node does in one round -> (weights to send, scalar metrics)."""

    from edge.node import fit_batch_size, memory_budget, training_bytes_per_sample
    from samfed.engine.client import client_round
    from samfed.models import create_student

    req = P.train_request(cfg_rec)
    rnd, seed = req.round, req.seed
    cfg = node_run_config(req.run_config)
    threads = cap_threads(node.threads)
    with RoundMeter() as meter:
        labeled = load_public(node, req.public_hash)
        if labeled.images.shape[1] != cfg.image_size:
            raise SamfedError(
                f"The server's image size {cfg.image_size} differs from its labeled set's "
                f"{labeled.images.shape[1]} px."
            )
        global_model = create_student(cfg.global_arch, norm=cfg.norm)
        global_state = checked_state(content.get(P.GLOBAL), global_model, "global weights")
        global_model.load_state_dict(global_state)
        local_model = create_student(req.arch, norm=cfg.norm)
        if P.LOCAL in content:
            local_model.load_state_dict(checked_state(content[P.LOCAL], local_model, "local weights"))
        init = None
        if P.GLOBAL_INIT in content:
            init = checked_state(content[P.GLOBAL_INIT], global_model, "initial global weights")
        data = node_data(node, cfg.image_size)
        spec = req.teacher_spec
        maps = node_teacher_maps(node, data, spec, cfg, init, threads) if spec else None
        per_sample, fixed = training_bytes_per_sample(local_model, cfg.image_size)
        batch = fit_batch_size(cfg.batch_size, per_sample, fixed, memory_budget(node.memory_mb))
        run_cfg = cfg if batch == cfg.batch_size else cfg.override(batch_size=batch)
        state, n, metrics = client_round(global_model, local_model, data, maps, labeled, run_cfg, rnd, seed)
    report = meter.report(rnd, threads, batch)
    record = {**report.__dict__, "process_startup_s": startup_s, "name": node.name, "num_samples": n}
    append_report(node.work_dir / REPORT, record)
    metrics.update(
        num_samples=n,
        wall_s=report.wall_s,
        cpu_s=report.cpu_s,
        rss_start_mb=report.rss_start_mb,
        peak_rss_mb=report.peak_rss_mb,
        threads=threads,
        batch_size=batch,
        process_startup_s=startup_s,
    )
    if cfg.precision == "bf16":  # the server warns when this node emulates it
        import torch

        from samfed.method.precision import native_bf16

        metrics["bf16_native"] = float(native_bf16(torch.device("cpu")))
    return state, metrics
