"""One configuration object per run: `RunConfig`, saved as TOML in the run directory.

Precedence: defaults < `--config FILE` (TOML, flat table of RunConfig fields) < command-line
flags. `None` fields are left out of the TOML file (TOML has no null) and come back as None.
Torch-free.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from samfed.errors import SamfedError


@dataclass
class RunConfig:
    """Every setting of a training run (see docs/METHOD.md for the method's defaults)."""

    # data and split
    data: str | None = None  # dataset folder; None -> built-in synthetic set
    synthetic_domain: str = "polyp"
    synthetic_n: int = 72
    clients: int = 3
    labeled_fraction: float = 0.15
    partition: str = "size"  # iid | dirichlet | size
    dirichlet_alpha: float = 0.5
    val_fraction: float = 0.15  # used only when the dataset has no val split
    test_fraction: float = 0.0
    split: str | None = None  # split file (e.g. from `samfed data split`); None -> made from the above
    image_size: int = 128
    # method
    method: str = "samfed"
    students: list[str] = field(default_factory=lambda: ["unet-s"])
    global_student: str | None = None  # architecture of the global model; default: students[0]
    norm: str = "batch"
    aggregation: str = "auto"  # auto (fedavg if homogeneous else distill) | fedavg | distill
    agreement: str = "override"  # override | weighted | ignore | vote | anneal | naive | teacher
    agreement_tau: float = 0.8
    agreement_rampup: float = 2.0  # rounds until the students get their full say
    lambda_sam: float = 1.0
    lambda_kd: float = 1.0
    rampup_rounds: float = 1.0  # sigmoid ramp-up of lambda_sam and lambda_kd
    kd_temperature: float = 2.0
    kd_gate: str = "teacher"  # teacher: KD only where the global model agrees with the teacher | none
    fixmatch_threshold: float = 0.95
    strong_aug: bool = True
    weak_aug: bool = True
    # teacher
    teacher: str = "litemedsam"
    teacher_checkpoint: str | None = None
    teacher_mode: str = "decoder"  # decoder | lora | none (pretrained, not fine-tuned)
    teacher_epochs: int = 10
    teacher_prompt: str | None = None  # none | full-box | global-box; None -> the teacher's default
    teacher_cache: str | None = None  # shared folder for teacher maps; None -> inside the run dir
    # schedule
    rounds: int = 4
    local_epochs: int = 1
    server_epochs: int = 20  # initial supervised training of the global model on D_p
    warmup_epochs: int = 10  # client warm-up on D_p (heterogeneous students only)
    distill_epochs: int = 5  # server ensemble distillation per round (heterogeneous)
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    precision: str = "fp32"  # "bf16": bfloat16 autocast + channels-last (2-3x faster on AMX CPUs)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto (CUDA when available)
    # run
    seed: int = 0
    threads: int | None = None
    out: str | None = None

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
        return "distill" if self.heterogeneous else "fedavg"

    def override(self, **kw: Any) -> RunConfig:
        """A copy with the non-None keyword values applied (command-line flags)."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def save(self, path: str | Path) -> None:
        import tomli_w

        clean = {k: v for k, v in self.to_dict().items() if v is not None}
        Path(path).write_text(tomli_w.dumps(clean))

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise SamfedError(f"Config file {path} does not exist.")
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SamfedError(f"Config file {path} is not valid TOML ({exc}).") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SamfedError(f"{source} has unknown setting(s) {', '.join(unknown)}.")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise SamfedError(f"{source} is not a valid run configuration ({exc}).") from None
