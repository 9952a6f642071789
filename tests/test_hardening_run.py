"""Hardening of configuration, run state, export sanity and CLI-level errors (issue: bad input).

Every case ends in one line naming what is wrong, a non-zero exit, no traceback, and nothing on
disk changed that the user did not ask to replace. One tiny finished run is shared by the module.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import TINY, one_error_line, run_cli, tiny

from samfed.config import RunConfig
from samfed.engine.checks import auto_threads
from samfed.errors import SamfedError
from samfed.train.run_dir import RunDir
from samfed.train.runner import train

torch.set_num_threads(1)


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def run_main(capsys, *args: str) -> tuple[int, str]:
    """`samfed ARGS` in this process: (exit code, stderr + stdout)."""
    code, out, err = run_cli(capsys, *args)
    return code, err + out


def cli_subprocess(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).resolve().parents[1],
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-round tiny run (FedAvg, fixmatch); copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(), out, progress=False)
    return out


def copy_run(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return dst


# ---- 1. typed validation of the whole RunConfig ------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "field", "expected"),
    [
        ('rounds = "abc"', "rounds", "an integer >= 0"),
        ('labeled_fraction = "x"', "labeled_fraction", "a number > 0 and < 1"),
        ("lr = -1", "lr", "a number > 0"),
        ("lr = nan", "lr", "a number > 0"),
        ("kd_temperature = 0", "kd_temperature", "a number >= 0.1"),
        ("image_size = 100", "image_size", "a multiple of 16"),
        ("students = []", "students", "a non-empty list of names"),
        ('students = "unet-s"', "students", "a non-empty list of names"),
        ("strong_aug = 1", "strong_aug", "true or false"),
        ("threads = 0", "threads", "an integer >= 1"),
        ("seed = -3", "seed", "an integer >= 0"),
        ('data = ""', "data", "a non-empty string"),
        ("rounds = 2.5", "rounds", "an integer"),
        ('method = "nope"', "method", "samfed, samfed-no-agreement"),
        ('agreement = "nope"', "agreement", "override"),
        ('partition = "nope"', "partition", "dirichlet"),
        ('precision = "fp16"', "precision", "bf16"),
        ('norm = "layer"', "norm", "group"),
        ('aggregation = "mean"', "aggregation", "fedavg"),
        ('students = ["unet-s", "nope"]', "students", "unet-s"),
        ('kd_gate = "x"', "kd_gate", "teacher"),
        ('teacher_mode = "full"', "teacher_mode", "lora"),
        ("roundz = 3", "roundz", "unknown setting"),
        ("val_fraction = 0.6\ntest_fraction = 0.5", "val_fraction + test_fraction", "below 1"),
    ],
)
def test_config_file_with_a_bad_setting_is_one_line(tmp_path, toml, field, expected):
    path = tmp_path / "c.toml"
    path.write_text(toml + "\n")
    with pytest.raises(SamfedError) as info:
        RunConfig.load(path)
    msg = str(info.value)
    assert field in msg and expected in msg and str(path) in msg and "\n" not in msg


def test_config_keeps_valid_values_and_converts_ints_to_floats(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('lr = 1\nstudents = ["unet-s", "mobile-unet"]\ndevice = "cpu"\n')
    cfg = RunConfig.load(path)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.students == ["unet-s", "mobile-unet"]
    assert RunConfig().validate() == RunConfig()  # the defaults are valid


def test_override_validates_flags_and_programmatic_configs_are_checked_before_training(tmp_path):
    with pytest.raises(SamfedError, match="--students must be a non-empty list"):
        RunConfig().override(students=[])
    with pytest.raises(SamfedError, match="--rounds must be an integer >= 0"):
        RunConfig().override(rounds=-1)
    with pytest.raises(SamfedError, match="kd_temperature"):
        train(tiny(kd_temperature=0.0), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_config_validation_is_torch_free(tmp_path):
    """On an install without torch the types and ranges are still checked (choices that need torch
    are left to the code that uses them)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    code = (
        "import sys\n"
        "from samfed.config import RunConfig\n"
        "from samfed.errors import SamfedError\n"
        "try:\n"
        "    RunConfig.from_dict({'rounds': 'abc'}, source='x.toml')\n"
        "except SamfedError as e:\n"
        "    print(e)\n"
        "RunConfig.from_dict({'method': 'fixmatch', 'partition': 'iid'})\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{Path(__file__).resolve().parents[1]}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "x.toml: setting rounds must be an integer >= 0 and <= 10000, got 'abc'.",
        "False",
    ]


def test_cli_students_empty_is_one_line_and_writes_nothing(tmp_path, capsys):
    code, text = run_main(capsys, "train", "--students", "", "--out", str(tmp_path / "r"), "--quiet")
    assert code == 1 and "--students must be a non-empty list" in one_error_line(text)
    assert not (tmp_path / "r").exists()


def test_cli_bad_config_file_is_one_line(tmp_path, capsys):
    (tmp_path / "c.toml").write_text('labeled_fraction = "x"\n')
    code, text = run_main(capsys, "train", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r"))
    assert code == 1 and "setting labeled_fraction must be a number" in one_error_line(text)
    assert not (tmp_path / "r").exists()


# ---- 2. non-finite loss or weights stop the run -------------------------------------------------


def test_non_finite_weights_stop_the_run_naming_round_and_client(finished_run, tmp_path):
    """A global model with a NaN weight (here: planted in the resume state) makes client 0's loss
    NaN in the next round: the run stops with one line, the saved round stays as it was."""
    run = RunDir(copy_run(finished_run, tmp_path))
    state = run.load_state()
    name = next(k for k, v in state["global"].items() if v.is_floating_point())
    state["global"][name].view(-1)[0] = float("nan")
    run.save_state(state)
    before = run.checkpoint.read_bytes()
    with pytest.raises(SamfedError, match=r"diverged in round 3, client 0: the loss is nan") as info:
        train(RunConfig.load(run.config).override(rounds=3), run.root, resume=True, progress=False)
    assert "rounds up to 2 stay saved" in str(info.value)
    assert run.checkpoint.read_bytes() == before


def test_require_finite_names_the_weight():
    from samfed.engine.checks import require_finite

    model = torch.nn.Conv2d(1, 1, 1)
    require_finite(model, RunDir("x"), "round 1, client 0", 0.5, 1)
    with torch.no_grad():
        model.bias.fill_(float("inf"))
    with pytest.raises(SamfedError, match="round 1, client 0: weight bias is not finite"):
        require_finite(model, RunDir("x"), "round 1, client 0", 0.5, 1)


# ---- 3. resume: rounds, changed settings, torn metrics line, Ctrl-C ------------------------------


def test_resume_with_fewer_rounds_than_done_is_refused(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = tree_digest(run)
    code, text = run_main(capsys, "train", "--out", str(run), "--resume", "--rounds", "1", "--quiet")
    assert code == 1 and "has finished 2 rounds" in one_error_line(text) and "--rounds 1" in text
    assert tree_digest(run) == before


@pytest.mark.parametrize(("key", "value"), [("seed", "5"), ("lr", "0.01"), ("agreement", '"vote"')])
def test_resume_after_editing_a_method_setting_is_refused(finished_run, tmp_path, capsys, key, value):
    run = copy_run(finished_run, tmp_path)
    cfg = RunDir(run).config
    lines = [ln for ln in cfg.read_text().splitlines() if not ln.startswith(f"{key} =")]
    cfg.write_text("\n".join([*lines, f"{key} = {value}"]) + "\n")
    before = tree_digest(run)
    code, text = run_main(capsys, "train", "--out", str(run), "--resume", "--rounds", "3", "--quiet")
    line = one_error_line(text)
    assert code == 1 and "changed since the run started" in line and f"{key} (" in line
    assert tree_digest(run) == before


def test_resume_tolerates_a_torn_metrics_line_and_machine_settings_may_change(finished_run, tmp_path, capsys):
    """SIGKILL during an append leaves half a JSON line: --resume drops it. threads (a machine
    setting) edited in config.toml and --threads on the command line are accepted."""
    run = RunDir(copy_run(finished_run, tmp_path))
    with open(run.metrics, "a", encoding="utf-8") as f:
        f.write('{"event": "client", "round": 3, "loss": 0.4')
    kept = [ln for ln in run.config.read_text().splitlines() if not ln.startswith("threads =")]
    run.config.write_text("\n".join([*kept, "threads = 2"]) + "\n")
    code, text = run_main(
        capsys, "train", "--out", str(run.root), "--resume", "--rounds", "3", "--threads", "1", "--quiet"
    )
    assert code == 0, text
    records = run.read_metrics()  # every line parses again
    assert [r["round"] for r in records if r["event"] == "round"] == [0, 1, 2, 3]
    assert all(json.loads(line) for line in run.metrics.read_text().splitlines())


def test_resume_of_a_run_stopped_before_its_first_round_starts_it_again(tmp_path):
    """Killed before round 0 was saved: config.toml exists but no checkpoint; --resume starts over
    (a rerun without --resume would be refused as 'already holds a run')."""
    cfg = tiny(rounds=1)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    cfg.save(run.config)
    run.metrics.write_text('{"event": "init", "round": 0}\n{"event": "rou')
    result = train(cfg, run.root, resume=True, progress=False)
    assert result.summary["config"]["rounds"] == 1
    assert [r["event"] for r in run.read_metrics()].count("init") == 1


def test_a_corrupt_metrics_line_before_the_last_is_one_line(tmp_path):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"round": 0}\nnot json\n{"round": 1}\n')
    with pytest.raises(SamfedError, match="line 2 is not a metrics record"):
        run.read_metrics()


def test_ctrl_c_during_training_prints_the_resume_hint(tmp_path):
    """A real SIGINT to `samfed train`: exit 130 with the --resume line, no traceback; the run then
    resumes from the saved round."""
    (tmp_path / "c.toml").write_text(
        "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**TINY, "rounds": 500}.items())
    )
    run = RunDir(tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "train", "--config", str(tmp_path / "c.toml"), "--out", str(run.root)]
        + ["--quiet", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        deadline = time.monotonic() + 240
        while not run.checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.checkpoint.is_file(), "training did not reach round 0"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "rerun with --resume" in err and "Traceback" not in err + out
    done = int(run.load_state()["round"])
    resumed = cli_subprocess("train", "--out", str(run.root), "--resume", "--rounds", str(done), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert run.summary.is_file()


# ---- 2b. export refuses non-finite models; 4. artefact kinds ------------------------------------


@pytest.fixture(scope="module")
def exported(finished_run, tmp_path_factory) -> Path:
    """An ONNX FP32 export of the finished run."""
    from export.build import export_student

    out = tmp_path_factory.mktemp("exported") / "export"
    opts = dict(int8=False, backend="onnx", n_calib=4, n_heldout=4, latency_iters=2)
    export_student(finished_run, out, **opts, log=lambda m: None)
    return out


@pytest.fixture
def signing_key(tmp_path, monkeypatch) -> Path:
    """Keep `samfed export`'s signing key out of the user's config folder."""
    key = tmp_path / "keys" / "signing_key.pem"
    monkeypatch.setenv("SAMFED_SIGNING_KEY", str(key))
    return key


def checkpoint_copy(run: Path, tmp_path: Path, change=None) -> Path:
    """A copy of the run's global checkpoint; change(state) edits its tensors in place."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "ckpt"
    shutil.copytree(run / "global", dst)
    if change is not None:
        state = load_file(str(dst / "student.safetensors"))
        change(state)
        save_file(state, str(dst / "student.safetensors"))
    return dst


def test_export_into_a_run_folder_is_refused(finished_run, tmp_path, capsys, signing_key):
    run = copy_run(finished_run, tmp_path)
    before = tree_digest(run)
    code, text = run_main(capsys, "export", str(run), "--out", str(run), "--backend", "onnx")
    line = one_error_line(text)
    assert code == 1 and "holds a samfed-run/1 artefact" in line and "not an export" in line
    assert tree_digest(run) == before


def test_train_into_an_export_folder_is_refused(exported, capsys):
    before = tree_digest(exported)
    code, text = run_main(capsys, "train", "--out", str(exported), "--quiet")
    assert code == 1 and "holds a samfed-export/1 artefact" in one_error_line(text)
    assert tree_digest(exported) == before


def test_export_folder_checks(tmp_path):
    from export.build import _check_out

    leftovers = tmp_path / "interrupted"
    leftovers.mkdir()
    (leftovers / "model_fp32.onnx").write_bytes(b"half")
    _check_out(leftovers)  # what an interrupted export left may be replaced
    (leftovers / "notes.txt").write_text("mine")
    with pytest.raises(SamfedError, match="holds no previous export"):
        _check_out(leftovers)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SamfedError, match="is a file"):
        _check_out(tmp_path / "file")


def test_export_refuses_non_finite_weights(finished_run, tmp_path):
    from export.build import export_student

    def poison(state):
        next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")

    ckpt = checkpoint_copy(finished_run, tmp_path, poison)
    with pytest.raises(SamfedError, match="are not finite"):
        export_student(ckpt, tmp_path / "out", int8=False, backend="onnx", log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_export_refuses_non_finite_outputs(finished_run, tmp_path):
    """Finite weights whose outputs overflow float32 (inf logits): parity would compare empty masks
    with empty masks and report 1.0; the export is refused before anything is written."""
    from export.build import export_student

    def overflow(state):
        for v in state.values():
            if v.is_floating_point() and v.shape[0] == 1 and v.ndim in (1, 4):  # the 1-channel output conv
                v.fill_(torch.finfo(torch.float32).max)

    ckpt = checkpoint_copy(finished_run, tmp_path, overflow)
    with pytest.raises(SamfedError, match="gives non-finite outputs"):
        export_student(ckpt, tmp_path / "out", int8=False, backend="onnx", n_heldout=4, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_nonfinite_images_counts_images():
    import numpy as np

    from export.parity import nonfinite_images

    x = np.zeros((3, 1, 4, 4), np.float32)
    x[1, 0, 2, 2], x[2, 0, 0, 0] = np.nan, np.inf
    assert nonfinite_images(x) == 2 and nonfinite_images(x[:1]) == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m["preprocessing"].update(size=0), "preprocessing size must be"),
        (lambda m: m["preprocessing"].update(size=72), "a multiple of 16"),
        (lambda m: m.update(threshold=5.0), "threshold must lie strictly between 0 and 1"),
    ],
)
def test_export_of_a_checkpoint_with_bad_preprocessing_is_one_line(
    finished_run, tmp_path, capsys, signing_key, change, expected
):
    ckpt = checkpoint_copy(finished_run, tmp_path)
    meta = json.loads((ckpt / "student.json").read_text())
    change(meta)
    (ckpt / "student.json").write_text(json.dumps(meta))
    code, text = run_main(capsys, "export", str(ckpt), "--out", str(tmp_path / "out"), "--backend", "onnx")
    assert code == 1 and expected in one_error_line(text)
    assert not (tmp_path / "out").exists()


def test_export_with_a_corrupt_split_file_in_the_run_is_one_line(finished_run, tmp_path, capsys, signing_key):
    run = copy_run(finished_run, tmp_path)
    (run / "split.json").write_text('{"server_labeled": [')
    code, text = run_main(capsys, "export", str(run), "--out", str(tmp_path / "out"), "--backend", "onnx")
    assert code == 1 and "is not a samfed split" in one_error_line(text)
    assert not (tmp_path / "out").exists()


def test_bench_and_evaluate_out_an_existing_file_is_one_line(finished_run, exported, tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, text = run_main(capsys, "bench", str(exported), "--out", str(target), "--iters", "1")
    assert code == 1 and "is a file" in one_error_line(text)
    code, text = run_main(
        capsys, "evaluate", str(finished_run), "--data", str(finished_run / "data"), "--out", str(target)
    )
    assert code == 1 and "is a file" in one_error_line(text)
    assert target.read_text() == "keep me"


# ---- 5. low: output paths, Windows, missing torch, permissions -----------------------------------


def test_train_out_an_existing_file_is_one_line(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    code, text = run_main(capsys, "train", "--out", str(target), "--quiet")
    assert code == 1 and "is a file" in one_error_line(text)
    assert target.read_text() == "keep me"


def test_train_refuses_a_non_empty_foreign_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SamfedError, match="not empty and holds no run"):
        train(tiny(), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_auto_threads_without_getloadavg(monkeypatch):
    """Windows has no os.getloadavg."""
    monkeypatch.delattr(os, "getloadavg", raising=False)
    assert auto_threads(None) >= 1
    assert auto_threads(3) == 3


@pytest.mark.parametrize(
    "args",
    [
        ["models"],
        ["train", "--out", "{tmp}/run", "--quiet"],
        ["export", "{tmp}/run"],
        ["evaluate", "{tmp}/trained", "--data", "{tmp}"],  # a run directory: its checkpoints need torch
        ["teacher", "info"],
    ],
)
def test_verbs_without_torch_say_what_to_install(tmp_path, args):
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")
    repo = Path(__file__).resolve().parents[1]
    env = {
        "PYTHONPATH": f"{block}{os.pathsep}{repo}",
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "SAMFED_SIGNING_KEY": str(tmp_path / "config" / "key.pem"),
    }
    (tmp_path / "trained" / "global").mkdir(parents=True)
    (tmp_path / "trained" / "global" / "student.json").write_text("{}")
    out = cli_subprocess(*[a.format(tmp=tmp_path) for a in args], env=env)
    line = one_error_line(out.stderr)
    assert out.returncode == 1 and "needs torch" in line and "pip install samfed[train]" in line
    assert not (tmp_path / "run").exists()


def test_unwritable_output_folder_is_one_line_naming_it(tmp_path):
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses even root
        if not Path("/sys").is_dir():
            pytest.skip("needs a folder the user may not write to")
        target = Path("/sys/samfed-hardening-test/run")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        target = locked / "run"
    out = cli_subprocess("train", "--out", str(target), "--quiet", "--rounds", "0")
    line = one_error_line(out.stderr)
    assert out.returncode == 1 and "permission denied" in line and str(target.parent) in line
