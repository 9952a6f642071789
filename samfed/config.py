"""One configuration object per run: `RunConfig`, saved as TOML in the run directory.

Precedence: defaults < `--config FILE` (TOML, flat table of RunConfig fields) < command-line
flags. `None` fields are left out of the TOML file (TOML has no null) and come back as None.

Every field carries its own `Rule` (range, step, choices) next to its annotated type; `validate`
checks each field on its own plus a few relations between fields, and names the field and what it
accepts in one line. Choices come from the registries that define them (methods, students, norms,
agreements, ...), imported when checked; where a registry needs torch and torch is missing, that
choice is left to the code that uses it. Fields marked ``machine`` describe the computer a run
happens on, not the method: they may differ on resume. Torch-free.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import math
import tomllib
import typing
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from samfed.errors import SamfedError

Choices = Callable[[], Collection[str] | None] | tuple[str, ...]
CLI = "command line"


def registry(module: str, name: str, *extra: str) -> Callable[[], tuple[str, ...] | None]:
    """The names of registry `module.name` (a dict's keys or a sequence) plus `extra`, imported on
    first use; None when the module cannot be imported (an install without torch)."""

    def names() -> tuple[str, ...] | None:
        try:
            reg = getattr(importlib.import_module(module), name)
        except ImportError:
            return None
        return (*extra, *reg)

    return names


@dataclass(frozen=True)
class Rule:
    """What one setting accepts beyond its annotated type (bounds apply to numbers, choices to
    strings or to every element of a list)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    step: int | None = None  # the value must be a multiple of this
    choices: Choices | None = None
    machine: bool = False  # about the computer, not the method: may change on resume, stays local

    def names(self) -> Collection[str] | None:
        return self.choices() if callable(self.choices) else self.choices

    def bounds_ok(self, v: float) -> bool:
        return (
            (self.ge is None or v >= self.ge)
            and (self.gt is None or v > self.gt)
            and (self.le is None or v <= self.le)
            and (self.lt is None or v < self.lt)
            and (self.step is None or v % self.step == 0)
        )

    def text_ok(self, v: str) -> bool:
        names = self.names()
        return names is None or v in names

    def describe(self) -> str:
        """'>= 0 and < 1', 'a multiple of 16', 'one of: a, b', ... (empty when unconstrained)."""
        bounds = zip((">=", ">", "<=", "<"), (self.ge, self.gt, self.le, self.lt), strict=True)
        parts = [f"{op} {_num(b)}" for op, b in bounds if b is not None]
        if self.step:
            parts.append(f"a multiple of {self.step}")
        names = self.names()
        if names is not None:
            parts.append(f"one of: {', '.join(names)}")
        return " and ".join(parts)


def _num(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


def setting(default: Any, **rule: Any) -> Any:
    """A RunConfig field with its Rule in the field metadata (a list default gets a factory)."""
    meta = {"rule": Rule(**rule)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


STUDENT_NAMES = registry("samfed.models", "STUDENTS")


@dataclass
class RunConfig:
    """Every setting of a training run (docs/method.md gives each default and why)."""

    # data and split
    data: str | None = setting(None, machine=True)  # dataset folder; None -> built-in synthetic set
    synthetic_domain: str = setting("polyp", choices=registry("samfed.data.synth", "DOMAINS"))
    synthetic_n: int = setting(72, ge=8, le=100_000)
    clients: int = setting(3, ge=1, le=1000)
    labeled_fraction: float = setting(0.15, gt=0, lt=1)
    partition: str = setting("size", choices=registry("samfed.data.partition", "SCHEMES"))
    dirichlet_alpha: float = setting(0.5, gt=0)
    val_fraction: float = setting(0.15, ge=0, lt=1)  # used only when the dataset has no val split
    test_fraction: float = setting(0.0, ge=0, lt=1)
    # split file (`samfed data split`); None -> made from the above
    split: str | None = setting(None, machine=True)
    image_size: int = setting(128, ge=32, le=4096, step=16)
    # method
    method: str = setting("samfed", choices=registry("samfed.method.methods", "METHODS"))
    students: list[str] = setting(["unet-s"], choices=STUDENT_NAMES)
    global_student: str | None = setting(None, choices=STUDENT_NAMES)  # default: students[0]
    norm: str = setting("batch", choices=registry("samfed.models.layers", "NORMS"))
    # auto: fedavg if homogeneous else distill
    aggregation: str = setting("auto", choices=registry("samfed.method.aggregation", "AGGREGATORS", "auto"))
    agreement: str = setting("override", choices=registry("samfed.method.agreement", "AGREEMENTS"))
    agreement_tau: float = setting(0.8, ge=0, le=1)
    agreement_rampup: float = setting(2.0, ge=0, le=10_000)  # rounds until the students get their full say
    lambda_sam: float = setting(1.0, ge=0, le=100)
    lambda_kd: float = setting(1.0, ge=0, le=100)
    rampup_rounds: float = setting(1.0, ge=0, le=10_000)  # sigmoid ramp-up of lambda_sam and lambda_kd
    kd_temperature: float = setting(2.0, ge=0.1, le=100)
    # teacher: KD only where the global model agrees with the teacher | none
    kd_gate: str = setting("teacher", choices=("teacher", "none"))
    fixmatch_threshold: float = setting(0.95, ge=0.5, le=1)
    strong_aug: bool = setting(True)
    weak_aug: bool = setting(True)
    # teacher
    teacher: str = setting("litemedsam")  # backbone name or fine-tuned teacher folder
    teacher_checkpoint: str | None = setting(None, machine=True)
    # decoder | lora | none (pretrained, not fine-tuned)
    teacher_mode: str = setting("decoder", choices=registry("samfed.teacher.finetune", "MODES", "none"))
    # None -> the teacher's default
    teacher_prompt: str | None = setting(None, choices=registry("samfed.teacher.prompts", "PROMPT_MODES"))
    teacher_epochs: int = setting(10, ge=1, le=10_000)
    # what computes the teacher maps: auto (the recommended exported variant when an export of this
    # teacher is in the cache, else torch) | exported (export it once, then use it) | torch
    teacher_maps_runtime: str = setting("auto", choices=("auto", "exported", "torch"), machine=True)
    # folder of speed-up caches (embeddings, teacher maps, initial global model), shared by runs;
    # None -> $SAMFED_CACHE or ~/.cache/samfed (samfed.train.run_dir.cache_folder)
    cache: str | None = setting(None, machine=True)
    # older name of `cache`, still honoured when `cache` is not set (federation nodes, benchmarks)
    teacher_cache: str | None = setting(None, machine=True)
    # schedule
    rounds: int = setting(4, ge=0, le=10_000)
    local_epochs: int = setting(1, ge=1, le=10_000)
    server_epochs: int = setting(20, ge=0, le=10_000)  # initial supervised training on D_p
    warmup_epochs: int = setting(40, ge=0, le=10_000)  # client warm-up on D_p (heterogeneous students only)
    distill_epochs: int = setting(5, ge=1, le=10_000)
    # after each aggregation, re-estimate the global model's BatchNorm statistics on D_p (clean)
    bn_recalibration: bool = setting(False)  # server ensemble distillation per round
    batch_size: int = setting(8, ge=1, le=4096)
    # client-level differential privacy (aggregation dp-fedavg): update clip norm C (0: off), noise
    # multiplier sigma (noise std sigma * C on the sum), delta of the reported (epsilon, delta)
    dp_clip: float = setting(0.0, ge=0, le=1e6)
    dp_noise: float = setting(0.0, ge=0, le=1e6)
    dp_delta: float = setting(1e-5, gt=0, lt=1)
    lr: float = setting(1e-3, gt=0, le=1)
    # linear learning-rate warm-up over the first N steps of every optimiser (a fresh Adam per update)
    lr_warmup: int = setting(10, ge=0, le=100_000)
    weight_decay: float = setting(1e-4, ge=0, le=1)
    # "bf16": bfloat16 autocast + channels-last
    precision: str = setting("fp32", choices=registry("samfed.method.precision", "PRECISIONS"))
    # cpu | cuda | cuda:N | auto (CUDA when available); checked on the machine that runs
    device: str = setting("cpu", machine=True)
    # run
    seed: int = setting(0, ge=0, lt=2**63)
    threads: int | None = setting(None, ge=1, le=1024, machine=True)
    out: str | None = setting(None, machine=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def global_arch(self) -> str:
        return self.global_student or self.students[0]

    @property
    def heterogeneous(self) -> bool:
        return len(set(self.students)) > 1 or self.global_arch != self.students[0]

    def client_arch(self, k: int) -> str:
        """Students are assigned round-robin to clients."""
        return self.students[k % len(self.students)]

    @property
    def aggregation_rule(self) -> str:
        if self.aggregation != "auto":
            return self.aggregation
        if self.dp_clip > 0:
            return "dp-fedavg"
        return "distill" if self.heterogeneous else "fedavg"

    @property
    def clients_keep_weights(self) -> bool:
        """Whether clients keep their own weights between rounds (ensemble distillation), rather
        than starting every round from the global model (FedAvg, DP-FedAvg)."""
        return self.aggregation_rule == "distill"

    @classmethod
    def machine_settings(cls) -> tuple[str, ...]:
        """Fields about the computer a run happens on (data and split paths, caches, threads,
        device, out): they never leave it (`method_settings`)."""
        return tuple(f.name for f in fields(cls) if f.metadata["rule"].machine)

    def method_settings(self) -> dict[str, Any]:
        """The settings every participant must share (method, agreement, losses, schedule, image
        size, seed, ...), without machine settings and unset values: what travels to nodes."""
        machine = set(self.machine_settings())
        return {k: v for k, v in self.to_dict().items() if k not in machine and v is not None}

    def validate(self, source: str = "config", names: Iterable[str] | None = None) -> RunConfig:
        """Check the fields `names` (default: all) and the relations between fields; ints given for
        float fields become floats. Raises SamfedError naming the field and what it accepts."""
        hints = _hints()
        for f in fields(self):
            if names is None or f.name in names:
                value = _checked(f.name, getattr(self, f.name), hints[f.name], f.metadata["rule"], source)
                setattr(self, f.name, value)
        for ok, msg in _relations(self):
            if not ok:
                raise SamfedError(f"{source}: {msg}")
        return self

    def override(self, source: str = CLI, **kw: Any) -> RunConfig:
        """A copy with the non-None keyword values applied (command-line flags), validated."""
        kw = {k: v for k, v in kw.items() if v is not None}
        return replace(self, **kw).validate(source, kw)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml(), encoding="utf-8")

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise SamfedError(f"Config file {path} does not exist.")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SamfedError(f"Config file {path} is not valid TOML ({exc}).") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        """A validated RunConfig from a flat table (TOML file, server message)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SamfedError(f"{source} has unknown setting(s) {', '.join(unknown)}{hint}.")
        return replace(cls(), **raw).validate(source)


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}


@functools.cache
def _hints() -> dict[str, Any]:
    return typing.get_type_hints(RunConfig)


def _checked(name: str, value: Any, hint: Any, rule: Rule, source: str) -> Any:
    """`value` (an int for a float field converted) if it fits `hint` and `rule`, else SamfedError."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if value is None and optional:
        return None
    is_list = typing.get_origin(base) is list
    elem = typing.get_args(base)[0] if is_list else base
    if not is_list:
        fixed = _scalar(value, elem, rule)
        if fixed is not _BAD:
            return fixed
    elif isinstance(value, list) and value:
        items = [_scalar(v, elem, rule) for v in value]
        if all(v is not _BAD for v in items):
            return items
    names = rule.names()
    values = value if is_list and isinstance(value, list) else [value]
    unknown = [v for v in values if isinstance(v, str) and v.strip() and names is not None and v not in names]
    if elem is str and unknown:
        entry = " entry" if is_list else ""
        choose = ", ".join(names)
        raise SamfedError(f"{source}: unknown {name}{entry} {unknown[0]!r}; choose one of: {choose}.")
    label = f"--{name.replace('_', '-')}" if source == CLI else f"setting {name}"
    expected = _expected(elem, rule)
    if is_list:
        expected = f"a non-empty list of names, each {expected}"
    if optional:
        expected += " (or left out)"
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise SamfedError(f"{source}: {label} must be {expected}, got {shown}.")


_BAD = object()


def _expected(kind: type, rule: Rule) -> str:
    """'an integer >= 0', 'one of: a, b', ... for a scalar of type `kind` under `rule`."""
    detail = rule.describe()
    if kind is str and detail:
        return detail
    return f"{_TYPE_WORDS[kind]} {detail}".strip()


def _scalar(v: Any, kind: type, rule: Rule) -> Any:
    """v converted to `kind` when it is one and fits the rule; _BAD otherwise."""
    if kind is bool:
        return v if isinstance(v, bool) else _BAD
    if kind is str:
        return v if isinstance(v, str) and v.strip() and rule.text_ok(v) else _BAD
    if isinstance(v, bool) or not isinstance(v, int | float):
        return _BAD
    if kind is int and not isinstance(v, int):
        return _BAD
    v = kind(v)
    return v if math.isfinite(v) and rule.bounds_ok(v) else _BAD


def _relations(cfg: RunConfig) -> list[tuple[bool, str]]:
    """Checks that involve several fields: (holds, message)."""
    return [
        (
            cfg.val_fraction + cfg.test_fraction < 1,
            "val_fraction + test_fraction must be below 1 (images must remain for training).",
        ),
        (
            cfg.aggregation_rule != "fedavg" or not cfg.heterogeneous,
            "FedAvg needs one student architecture for all clients and the global model; "
            "use --aggregation distill.",
        ),
        (
            (cfg.dp_clip > 0) == (cfg.aggregation_rule == "dp-fedavg"),
            "dp-fedavg aggregation and dp_clip > 0 go together (dp_clip is the update clip norm).",
        ),
        (
            cfg.dp_clip == 0 or (cfg.norm == "group" and not cfg.heterogeneous),
            'Differential privacy (dp_clip > 0) needs GroupNorm students (norm = "group") of one '
            "architecture: BatchNorm running statistics would leave the node unclipped and un-noised.",
        ),
    ]


def changed_settings(before: RunConfig, after: RunConfig, ignore: Iterable[str] = ()) -> list[str]:
    """'name (old -> new)' for every field that differs between two configs, except `ignore`."""
    skip = set(ignore)
    a, b = before.to_dict(), after.to_dict()
    return [f"{k} ({a[k]!r} -> {b[k]!r})" for k in a if k not in skip and a[k] != b[k]]
