"""Run an exported teacher (`samfed teacher export`) with ONNX Runtime or OpenVINO; torch-free.

An export folder holds one image encoder per variant and two prompt/mask decoder graphs, listed in
``teacher_onnx.json`` with the sha256 of every file:

- ``onnx-fp32``: ``teacher_encoder.onnx`` on ONNX Runtime;
- ``openvino-fp32``: ``teacher_encoder_fp32.xml`` (IR) on OpenVINO, f32 inference;
- ``openvino-bf16``: the same IR compiled with ``INFERENCE_PRECISION_HINT`` bf16 (CPUs with BF16);
- ``openvino-int8``: ``teacher_encoder_int8.xml`` (NNCF INT8; its float ops run in f32).

The decoders (``teacher_decoder_box.onnx`` / ``teacher_decoder_none.onnx``) run on the variant's
backend in f32. `OnnxTeacher` runs the manifest's recommended variant unless told otherwise; the
folder is untrusted input: every file it opens must stay inside the folder and match its sha256.

`predict_proba` comes from `samfed.teacher.predict.PredictMixin`, as for the torch
`samfed.teacher.Teacher`, so `samfed.teacher.cache.teacher_maps` works with it on a clinic
workstation without torch. A batch runs through OpenVINO's asynchronous infer requests (all of the
machine's threads by default); `stream_teacher_maps` decodes the next images on a thread pool while
the current ones are in inference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from edge.manifest import _companions, _parse_files, member_path, verify_files
from samfed.errors import SamfedError
from samfed.teacher.predict import PredictMixin
from samfed.teacher.prompts import check_prompt
from samfed.teacher.transforms import TeacherInput

MANIFEST = "teacher_onnx.json"
BACKENDS = ("onnxruntime", "openvino")
SUFFIX = {"onnxruntime": ".onnx", "openvino": ".xml"}


@dataclass(frozen=True)
class VariantSpec:
    """How one variant runs: the encoder file the exporter writes, its backend and the inference
    precision its graphs are compiled with (an INT8 IR's quantised ops run in int8 regardless)."""

    backend: str
    precision: str  # "f32" | "bf16"
    encoder: str


VARIANTS = {
    "onnx-fp32": VariantSpec("onnxruntime", "f32", "teacher_encoder.onnx"),
    "openvino-fp32": VariantSpec("openvino", "f32", "teacher_encoder_fp32.xml"),
    "openvino-bf16": VariantSpec("openvino", "bf16", "teacher_encoder_fp32.xml"),
    "openvino-int8": VariantSpec("openvino", "f32", "teacher_encoder_int8.xml"),
}
ALIASES = {"onnxruntime": "onnx-fp32", "openvino": "openvino-fp32"}  # the older backend names
CHOICES = ("auto", *VARIANTS, *ALIASES)


@cache
def cpu_supports_bf16() -> bool:
    """Whether OpenVINO reports BF16 among the CPU's optimisation capabilities."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def default_threads() -> int:
    from edge.session import default_threads as threads

    return threads()


class _OrtGraph:
    """One ONNX graph on ONNX Runtime; `run_many` runs feeds one after the other."""

    def __init__(self, path: Path, threads: int, precision: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # beside decode threads
        try:
            self.sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise SamfedError(f"ONNX Runtime cannot load {path}: {_first_line(exc)}") from None

    def run_many(self, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        return [self.sess.run(None, f)[0] for f in feeds]


class _OvGraph:
    """One graph (.xml IR or .onnx) on OpenVINO, throughput mode; `run_many` keeps all of the
    compiled model's optimal number of infer requests busy (AsyncInferQueue)."""

    def __init__(self, path: Path, threads: int, precision: str):
        import openvino as ov

        config = {
            "INFERENCE_PRECISION_HINT": precision,  # f32 explicitly: CPUs with BF16 default to bf16
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        try:
            self.model = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as exc:  # openvino raises RuntimeError with multi-line text
            raise SamfedError(f"OpenVINO cannot load {path}: {_first_line(exc)}") from None
        jobs = max(1, int(self.model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        self.queue = ov.AsyncInferQueue(self.model, jobs)

    def run_many(self, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(feeds)

        def done(request, i: int) -> None:
            out[i] = request.get_output_tensor(0).data.copy()

        self.queue.set_callback(done)
        try:
            for i, feed in enumerate(feeds):
                self.queue.start_async(feed, i)
            self.queue.wait_all()
        except RuntimeError as exc:
            raise SamfedError(f"OpenVINO failed to run a teacher graph: {_first_line(exc)}") from None
        if any(o is None for o in out):
            raise SamfedError("OpenVINO returned no output for some teacher inputs.")
        return out  # type: ignore[return-value]


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_manifest(folder: Path) -> dict:
    """The folder's teacher manifest (JSON object); SamfedError when there is none."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict):
        raise SamfedError(f"{folder} is not an exported teacher (no valid {MANIFEST}).")
    return manifest


def available_variants(folder: Path, manifest: dict) -> dict[str, str]:
    """{variant: encoder file name} the manifest lists (an export without ``variants`` has the
    ONNX encoder only); SamfedError for an unknown variant or a malformed entry."""
    variants = manifest.get("variants")
    if variants is None:
        return {"onnx-fp32": manifest.get("encoder")}  # type: ignore[dict-item]
    if not isinstance(variants, dict) or not variants:
        raise SamfedError(f"{folder}/{MANIFEST} must list its variants as an object.")
    out = {}
    for key, entry in variants.items():
        if key not in VARIANTS:
            raise SamfedError(
                f"{folder}/{MANIFEST} lists an unknown teacher variant {key!r}; known: {', '.join(VARIANTS)}."
            )
        if not isinstance(entry, dict):
            raise SamfedError(f"{folder}/{MANIFEST}: variant {key!r} must be an object naming its encoder.")
        out[key] = entry.get("encoder")
    return out


def choose_variant(folder: Path, manifest: dict, requested: str = "auto") -> str:
    """The variant to run: `requested`, or for ``auto`` the manifest's recommendation (else
    ``onnx-fp32``); a recommended bf16 variant becomes ``openvino-fp32`` on a CPU without BF16."""
    requested = ALIASES.get(requested, requested)
    if requested not in ("auto", *VARIANTS):
        raise SamfedError(f"Unknown teacher variant {requested!r}; choose one of: {', '.join(CHOICES)}.")
    have = available_variants(folder, manifest)
    if requested == "auto":
        rec = manifest.get("recommended")
        key = rec if isinstance(rec, str) and rec in have else "onnx-fp32" if "onnx-fp32" in have else None
        key = key or next(iter(have))
        if VARIANTS[key].precision == "bf16" and not cpu_supports_bf16() and "openvino-fp32" in have:
            key = "openvino-fp32"
        return key
    if requested not in have:
        raise SamfedError(
            f"The exported teacher in {folder} has no {requested} variant (it has: {', '.join(have)})."
        )
    if VARIANTS[requested].precision == "bf16" and not cpu_supports_bf16():
        raise SamfedError(
            "This CPU has no BF16 support (OpenVINO's OPTIMIZATION_CAPABILITIES lacks BF16); "
            "choose openvino-fp32 or auto."
        )
    return requested


def _graph_paths(folder: Path, encoder: object, decoders: object) -> dict[str, Path]:
    """{"encoder" | decoder key: path} of the teacher's graph files, each inside `folder` and present;
    SamfedError for a malformed list, a path leaving the folder or a missing file."""
    if not isinstance(decoders, dict) or not {"none", "box"} <= set(decoders):
        raise SamfedError(f"{folder}/{MANIFEST} must name the decoders 'none' and 'box'.")
    paths: dict[str, Path] = {}
    try:
        for key, name in {"encoder": encoder, "none": decoders["none"], "box": decoders["box"]}.items():
            paths[key] = member_path(folder, name, f"teacher {key} file")
            if not paths[key].is_file():
                raise SamfedError(f"Exported teacher {folder} lacks {name}.")
    except ValueError as exc:
        raise SamfedError(f"Exported teacher {folder} is not valid: {exc}.") from None
    return paths


def _needed_files(folder: Path, backend: str, paths: dict[str, Path]) -> list[str]:
    """Every file the runtimes open for `paths` (the graphs, an IR's .bin, ONNX external data),
    relative to `folder`; SamfedError when one of them lies outside it."""
    names: list[str] = []
    try:
        for key, path in paths.items():
            names.append(path.relative_to(folder).as_posix())
            # the decoders stay ONNX files whatever the backend: their companions are external data
            names += _companions(folder, backend if key == "encoder" else "onnxruntime", path)
    except ValueError as exc:
        raise SamfedError(f"Exported teacher {folder} is not valid: {exc}.") from None
    return list(dict.fromkeys(names))


def verify_teacher_files(folder: Path, manifest: dict, names: list[str]) -> None:
    """SamfedError unless every one of `names` has a sha256 in the manifest and matches it."""
    files: dict[str, str] = {}
    if manifest.get("files") is not None:
        try:
            files = _parse_files(folder, manifest["files"])
        except ValueError as exc:
            raise SamfedError(f"{folder}/{MANIFEST} has an invalid file list ({exc}).") from None
    unhashed = [n for n in names if n not in files]
    if unhashed:
        raise SamfedError(
            f"Exported teacher {folder} lists no sha256 for {', '.join(unhashed)}: every file a teacher "
            "runs must be hashed; re-export it with `samfed teacher export`."
        )
    verify_files(folder, {n: files[n] for n in names})


class OnnxTeacher(PredictMixin):
    """An exported teacher folder run on CPU.

    variant: ``auto`` (the manifest's recommendation), one of `VARIANTS`, or the older backend
    names ``onnxruntime`` / ``openvino`` (their FP32 variants). backend: the older name of
    `variant`, kept for callers that pass it. threads: CPU threads (default: all usable CPUs).
    """

    def __init__(
        self,
        folder: str | Path,
        variant: str = "auto",
        threads: int | None = None,
        backend: str | None = None,
    ):
        folder = Path(folder)
        self.folder = folder
        self.manifest = manifest = read_manifest(folder)
        try:
            self.input = TeacherInput.from_dict(manifest["input"])
            teacher_hash = str(manifest["teacher_hash"])
            self.prompt = check_prompt(manifest["prompt"])
        except (ValueError, KeyError, TypeError):
            raise SamfedError(f"{folder} is not an exported teacher (no valid {MANIFEST}).") from None
        self.variant = choose_variant(folder, manifest, backend or variant)
        spec = VARIANTS[self.variant]
        self.backend, self.precision = spec.backend, spec.precision
        encoder = available_variants(folder, manifest)[self.variant]
        paths = _graph_paths(folder, encoder, manifest.get("decoders"))
        if paths["encoder"].suffix.lower() != SUFFIX[spec.backend]:
            raise SamfedError(
                f"Exported teacher {folder}: variant {self.variant} needs a {SUFFIX[spec.backend]} encoder, "
                f"got {paths['encoder'].name}."
            )
        verify_teacher_files(folder, manifest, _needed_files(folder, spec.backend, paths))
        graph = _OrtGraph if spec.backend == "onnxruntime" else _OvGraph
        self.threads = threads or default_threads()
        self.encoder = graph(paths["encoder"], self.threads, spec.precision)
        self.decoders = {k: graph(paths[k], self.threads, "f32") for k in ("none", "box")}
        # maps of different variants never share cache entries (nor with the torch teacher)
        self.hash = hashlib.sha256(f"{teacher_hash}:{self.variant}".encode()).hexdigest()
        self.name = f"{manifest.get('backbone', 'teacher')} ({self.variant})"

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, 256, E, E) float32 (one image per request, requests in parallel)."""
        feeds = [{"image": np.ascontiguousarray(x[i : i + 1], np.float32)} for i in range(len(x))]
        return np.concatenate(self.encoder.run_many(feeds))

    def decode(self, embeddings: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        """(B, 256, E, E) + (B, 4) input-frame boxes or None -> (B, L, L) low-res logits."""
        feeds = []
        for i in range(len(embeddings)):
            feed = {"embeddings": np.ascontiguousarray(embeddings[i : i + 1], np.float32)}
            if boxes is not None:
                feed["box"] = np.ascontiguousarray(boxes[i : i + 1], np.float32)
            feeds.append(feed)
        graph = self.decoders["none" if boxes is None else "box"]
        return np.concatenate(graph.run_many(feeds))[:, 0]

    def _run(self, x: np.ndarray, boxes: np.ndarray | None) -> np.ndarray:
        return self.decode(self.encode(x), boxes)


def stream_teacher_maps(
    teacher,
    load: Callable[[int], np.ndarray],
    n: int,
    cache,
    out_size: int,
    prompt_masks: Sequence[np.ndarray] | None = None,
    batch_size: int = 8,
    workers: int = 2,
) -> np.ndarray:
    """`samfed.teacher.cache.teacher_maps` of images ``load(0) .. load(n - 1)`` ((H, W, 3) uint8),
    decoded on `workers` threads one batch ahead: while one batch is in inference the next is read.

    Returns (n, out_size, out_size) float32, equal to `teacher_maps` over all the images at once
    (same cache entries). prompt_masks: (n, h, w) bool masks for a ``global-box`` teacher."""
    from samfed.teacher.cache import teacher_maps

    out = np.zeros((n, out_size, out_size), np.float32)
    with ThreadPoolExecutor(max(1, workers)) as pool:

        def submit(start: int) -> list:
            return [pool.submit(load, i) for i in range(start, min(start + batch_size, n))]

        pending = submit(0)
        for start in range(0, n, batch_size):
            images = [f.result() for f in pending]
            pending = submit(start + batch_size)
            masks = None if prompt_masks is None else list(prompt_masks[start : start + len(images)])
            out[start : start + len(images)] = teacher_maps(
                teacher, images, cache, out_size, prompt_masks=masks, batch_size=batch_size
            )
    return out
