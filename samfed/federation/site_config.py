"""The operational settings of `samfed serve` and `samfed node`, from a TOML file and flags.

Each setting is defined once, in `SERVER` or `NODE`: its name (the key in the file; the flag is
`--name` with dashes), type, default, help and what it accepts. The defaults of the server's round
settings are `ServerOptions`' own. Precedence: defaults < file (`--config`) < flags.

Both files are untrusted input: unknown keys (with the closest known name), wrong types and values
out of range are refused with one line naming the file and the key; paths must exist where the
setting reads them (checked after flags and file are combined, so a flag can fix a file's path).
Relative paths in a file are relative to the file's folder.

The server file may carry the method settings (RunConfig, as for `samfed train --config`) as a
`[method]` table or point at them with `method_config = "run.toml"`. A `serve --config` file that
holds only method settings (the meaning `--config` had before the server file existed) is read as
`--method-config`, with a deprecation warning. Torch-free.
"""

from __future__ import annotations

import difflib
import tomllib
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from samfed.config import CLI, Rule, RunConfig, _checked, registry
from samfed.errors import SamfedError
from samfed.federation.options import ServerOptions


class ConfigWarning(UserWarning):
    """A deprecated use of a settings file (the CLI prints it as one yellow line)."""


@dataclass(frozen=True)
class Setting:
    """One setting of `samfed serve` or `samfed node`."""

    name: str  # key in the file
    kind: type  # str | int | float | bool | Path
    default: Any
    help: str
    rule: Rule = field(default_factory=Rule)
    exists: str = ""  # a path that must exist: "file" | "dir" | "any" (file or folder)
    many: bool = False  # a list of paths (a file may give one string)
    required: bool = False
    flag: str = ""  # the command-line flag, when not --name
    old: str = ""  # the name before this release: still read from files and as a flag, with a warning

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def help_text(self) -> str:
        """The flag's help, with the default when there is one worth showing."""
        d = self.default
        if d is None or d is False or self.many:
            return self.help
        shown = f"{d:g}" if isinstance(d, float) else str(d)
        return f"{self.help.rstrip('.')} (default: {shown})."


def _table(*settings: Setting) -> dict[str, Setting]:
    return {s.name: s for s in settings}


def _round_default(name: str) -> Any:
    """The default of a ServerOptions field (the one definition of the round settings)."""
    return next(f.default for f in fields(ServerOptions) if f.name == name)


TEACHER_FORMATS = ("onnx", "torch")  # ServerOptions.teacher_runtime
TEACHER_VARIANTS = registry("edge.teacher_runtime", "CHOICES")  # read when a value is checked

# `nodes` is ServerOptions.num_nodes and `teacher_format` its teacher_runtime; every other round
# setting has ServerOptions' name
ROUND_SETTINGS = {
    "nodes": "num_nodes",
    **{
        n: n
        for n in (
            "min_clients",
            "connect_timeout",
            "round_timeout",
            "straggler_timeout",
            "outlier_factor",
            "max_update_ratio",
            "dp_clip",
            "dp_noise",
            "dp_delta",
        )
    },
    "teacher_format": "teacher_runtime",
}

SERVER = _table(
    Setting("out", Path, None, "Server run directory (config, checkpoints, metrics, report).", required=True),
    Setting(
        "data", Path, None, "Folder of the server's labeled images D_p (val.txt optional).", exists="dir"
    ),
    Setting(
        "method_config",
        Path,
        None,
        "RunConfig TOML with the method settings (as for `samfed train --config`).",
        exists="file",
    ),
    Setting(
        "split", Path, None, "Optional split JSON (server_labeled/val/test ids) to use as is.", exists="file"
    ),
    Setting("clients", int, None, "Number of sites (client ids 0..N-1)."),
    Setting("rounds", int, None, "Number of rounds."),
    Setting(
        "host",
        str,
        "0.0.0.0",
        "Address the sites connect to (0.0.0.0: every interface); Flower's control stays on loopback.",
    ),
    Setting(
        "port",
        int,
        9092,
        "Port the sites connect to (Fleet API only, through samfed's gateway).",
        Rule(ge=1, le=65535),
    ),
    Setting(
        "tls_certs",
        Path,
        None,
        "Folder with ca.pem, server.pem, server.key (TLS, `samfed certs init`); the cert lists 127.0.0.1.",
        exists="dir",
        old="certs",
    ),
    Setting("insecure", bool, False, "Run without TLS (trials on a trusted network only)."),
    Setting(
        "node_keys",
        Path,
        None,
        "Public key (.pub, OpenSSH ECDSA P-384) of an allowed node, or a folder of them (e.g. "
        "CERTS/nodes); repeat; enables node auth.",
        exists="any",
        many=True,
        flag="--node-key",
    ),
    Setting(
        "nodes",
        int,
        _round_default("num_nodes"),
        "Nodes to wait for before round 1 (0: the number of clients).",
        Rule(ge=0),
    ),
    Setting(
        "min_clients",
        int,
        _round_default("min_clients"),
        "Fewest valid updates that close a round.",
        Rule(ge=1),
    ),
    Setting(
        "connect_timeout",
        float,
        _round_default("connect_timeout"),
        "Seconds to wait for the nodes.",
        Rule(gt=0),
    ),
    Setting(
        "round_timeout",
        float,
        _round_default("round_timeout"),
        "Seconds a round may take at most.",
        Rule(gt=0),
    ),
    Setting(
        "straggler_timeout",
        float,
        _round_default("straggler_timeout"),
        "Seconds to wait for the rest once min-clients answered.",
        Rule(ge=0),
    ),
    Setting(
        "outlier_factor",
        float,
        _round_default("outlier_factor"),
        "Reject updates whose norm ratio exceeds this x the round median.",
        Rule(ge=0),
    ),
    Setting(
        "max_update_ratio",
        float,
        _round_default("max_update_ratio"),
        "Reject updates whose norm ratio ||w_new - w_sent|| / ||w_sent|| exceeds this (0: off).",
        Rule(ge=0),
    ),
    Setting(
        "teacher_format",
        str,
        _round_default("teacher_runtime"),
        "What teacher the nodes get: onnx (exported variants, run torch-free) or torch (the checkpoint).",
        Rule(choices=TEACHER_FORMATS),
        old="teacher_runtime",
    ),
    Setting(
        "dp_clip",
        float,
        _round_default("dp_clip"),
        "Client-level DP: clip norm of each update (0: off; GroupNorm only).",
        Rule(ge=0),
    ),
    Setting("dp_noise", float, _round_default("dp_noise"), "Client-level DP: noise multiplier.", Rule(ge=0)),
    Setting(
        "dp_delta",
        float,
        _round_default("dp_delta"),
        "Client-level DP: delta of the reported (epsilon, delta).",
        Rule(gt=0, lt=1),
    ),
    Setting(
        "auto_resume",
        bool,
        False,
        "Continue the run in --out if it has one, else start it; a finished run exits 0 at once "
        "(for service managers that restart samfed).",
    ),
)

NODE = _table(
    Setting(
        "data",
        Path,
        None,
        "The clinic's private image folder (images never leave this machine).",
        exists="dir",
        required=True,
    ),
    Setting("superlink", str, None, "Server address HOST:PORT.", required=True),
    Setting(
        "client_id",
        int,
        None,
        "This site's client number, agreed with the server (0..N-1).",
        Rule(ge=0),
        required=True,
    ),
    Setting("name", str, None, "Display name in the server's reports (default client-K)."),
    Setting(
        "split",
        Path,
        None,
        "Use only split.clients[client-id] of --data (trials sharing a folder).",
        exists="file",
    ),
    Setting("work_dir", Path, None, "Cache and report folder (default ~/.cache/samfed/node-K)."),
    Setting("threads", int, None, "Thread cap for training and the teacher.", Rule(ge=1, le=1024)),
    Setting(
        "memory_mb", float, None, "Training memory budget in MB (default: half the free memory).", Rule(gt=0)
    ),
    Setting(
        "tls_ca",
        Path,
        None,
        "CA certificate (PEM) that signed the server's TLS certificate.",
        exists="file",
        old="ca",
    ),
    Setting("insecure", bool, False, "Connect without TLS (trials on a trusted network only)."),
    Setting(
        "auth_key",
        Path,
        None,
        "This node's private key (OpenSSH ECDSA P-384), if the server checks nodes.",
        exists="file",
    ),
    Setting(
        "teacher_variant",
        str,
        "auto",
        "Runtime and precision of the exported teacher here: auto (the export's recommendation), "
        "onnx-fp32, openvino-fp32, openvino-bf16 or openvino-int8 (onnxruntime / openvino: their FP32).",
        Rule(choices=TEACHER_VARIANTS),
        old="teacher_backend",
    ),
    Setting(
        "teacher_cache", Path, None, "Folder of teacher maps kept between runs (default: inside --work-dir)."
    ),
    Setting(
        "connect_timeout",
        float,
        120.0,
        "Seconds to wait for an unreachable server (at start and after a lost connection).",
        Rule(gt=0),
    ),
)


def helps(settings: dict[str, Setting]) -> dict[str, str]:
    """{name: help text with its default} for the command's flags."""
    return {name: s.help_text for name, s in settings.items()}


def renamed_flags(settings: dict[str, Setting]) -> dict[str, str]:
    """{old flag: new flag} of the settings renamed in this release."""
    return {"--" + s.old.replace("_", "-"): s.option for s in settings.values() if s.old}


# ---- files ---------------------------------------------------------------------------------------


@dataclass
class SettingsFile:
    """A parsed, type-checked settings file (paths made absolute against its folder)."""

    path: Path
    values: dict[str, Any]
    method: RunConfig | None = None  # the server file's [method] table, or a legacy method file
    legacy: bool = False  # a method-settings file given as `serve --config` (deprecated)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The table of TOML file `path`; SamfedError (one line) when missing or not TOML."""
    if not path.is_file():
        raise SamfedError(f"The {what} {path} does not exist.")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SamfedError(f"The {what} {path} is not valid TOML ({exc}).") from None
    except OSError as exc:
        raise SamfedError(f"Cannot read the {what} {path} ({exc.strerror or exc}).") from None


def current_keys(raw: dict[str, Any], settings: dict[str, Setting], path: Path) -> dict[str, Any]:
    """Table `raw` with each setting's old key under its new name (a ConfigWarning each);
    SamfedError when a file gives both."""
    out = dict(raw)
    for s in settings.values():
        if s.old and s.old in out:
            if s.name in out:
                raise SamfedError(f"{path} has both {s.old} and {s.name} (its new name); keep {s.name}.")
            warnings.warn(
                f"{path}: setting {s.old} is deprecated; use {s.name} (removed in the next release).",
                ConfigWarning,
                stacklevel=3,
            )
            out[s.name] = out.pop(s.old)
    return out


def _unknown(keys: list[str], known: list[str], path: Path, what: str) -> None:
    if keys:
        close = difflib.get_close_matches(keys[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SamfedError(f"{path} has unknown {what} setting(s) {', '.join(sorted(keys))}{hint}.")


def _file_value(s: Setting, value: Any, path: Path) -> Any:
    """A file's value for `s`, type-checked by RunConfig's rules; paths absolute."""
    source = str(path)
    if s.kind is not Path:
        return _checked(s.name, value, s.kind, s.rule, source)
    if s.many and isinstance(value, str):
        value = [value]
    checked = _checked(s.name, value, list[str] if s.many else str, s.rule, source)
    items = [Path(v).expanduser() for v in (checked if s.many else [checked])]
    items = [p if p.is_absolute() else path.parent / p for p in items]
    return items if s.many else items[0]


def parse_settings(
    raw: dict[str, Any], settings: dict[str, Setting], path: Path, what: str
) -> dict[str, Any]:
    """The values of table `raw` for `settings`, each type-checked; SamfedError names key and file."""
    _unknown([k for k in raw if k not in settings], list(settings), path, what)
    return {k: _file_value(settings[k], v, path) for k, v in raw.items()}


def load_node_file(path: Path) -> SettingsFile:
    """The node file `path` (see docs/node.example.toml), checked."""
    path = Path(path).expanduser()
    raw = current_keys(read_toml(path, "node file"), NODE, path)
    return SettingsFile(path, parse_settings(raw, NODE, path, "node"))


def load_server_file(path: Path) -> SettingsFile:
    """The server file `path` (see docs/server.example.toml), checked: operational settings at the
    top, method settings in [method] (RunConfig's validation) or in the method_config file. A file
    of method settings only is the deprecated `serve --config` meaning and comes back `legacy`."""
    path = Path(path).expanduser()
    raw = current_keys(read_toml(path, "server file"), SERVER, path)
    table = raw.pop("method", None)
    run_fields = {f.name for f in fields(RunConfig)}
    if table is not None and not isinstance(table, dict):  # `method = "fixmatch"`: RunConfig's field
        raw["method"] = table
        table = None
    method_only = sorted(k for k in raw if k in run_fields and k not in SERVER)
    if method_only and table is None:
        if not any(k in SERVER and k not in run_fields for k in raw):
            warnings.warn(
                f"{path} holds method settings only: read as --method-config {path} (deprecated: "
                "`serve --config` now takes the server file, see docs/server.example.toml).",
                ConfigWarning,
                stacklevel=2,
            )
            return SettingsFile(path, {}, RunConfig.load(path), legacy=True)
        raise SamfedError(
            f"{path}: {method_only[0]} is a method setting; put it under [method] (or in the "
            "method_config file)."
        )
    values = parse_settings(raw, SERVER, path, "server")
    method = None
    if table is not None:
        if "method_config" in values:
            raise SamfedError(f"{path} has both a [method] table and method_config; keep one of them.")
        method = RunConfig.from_dict(table, source=f"{path} [method]")
    return SettingsFile(path, values, method)


# ---- flags + file --------------------------------------------------------------------------------


@dataclass
class Resolved:
    """The settings of one command after defaults < file < flags, with where each value came from."""

    values: dict[str, Any]
    origin: dict[str, str]  # name -> "--port", "FILE setting port" or "default"

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


def resolve(
    settings: dict[str, Setting],
    flags: dict[str, Any],
    file: SettingsFile | None,
    file_flag: str = "--config",
) -> Resolved:
    """Combine defaults, `file` and `flags` (None or an empty list: not given), check the flags'
    values by the same rules as the file's and that paths exist. SamfedError names the source."""
    values, origin = {}, {}
    for name, s in settings.items():
        flag = flags.get(name)
        if flag is not None and flag != [] and flag != ():
            values[name] = _flag_value(s, flag)
            origin[name] = s.option
        elif file is not None and name in file.values:
            values[name] = file.values[name]
            origin[name] = f"{file.path} setting {name}"
        else:
            values[name] = s.default
            origin[name] = "default"
        if values[name] is None and s.required:
            where = f" (or set {name} in the {file_flag} file)" if file_flag else ""
            raise SamfedError(f"Pass {s.option}{where}.")
        _check_exists(s, values[name], origin[name])
    return Resolved(values, origin)


def _flag_value(s: Setting, value: Any) -> Any:
    if s.kind is Path:
        return [Path(v).expanduser() for v in value] if s.many else Path(value).expanduser()
    return _checked(s.option[2:].replace("-", "_"), value, s.kind, s.rule, CLI)


_KINDS = {"file": ("is_file", "a file"), "dir": ("is_dir", "a folder"), "any": ("exists", "a file or folder")}


def _check_exists(s: Setting, value: Any, origin: str) -> None:
    if not s.exists or value is None:
        return
    test, expected = _KINDS[s.exists]
    for p in value if s.many else [value]:
        if not getattr(p, test)():
            problem = "does not exist" if not p.exists() else f"is not {expected}"
            raise SamfedError(f"{origin}: {p} {problem} (expected {expected}).")
