"""The in-process runner, run directory, `samfed train` and `samfed evaluate` on tiny synthetic data."""

import json
import subprocess
import sys

import pytest
import torch
from run_helpers import same, tiny, weights

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.train.run_dir import RunDir, verify_manifest
from samfed.train.runner import train

torch.set_num_threads(1)  # the CI machine is shared; one thread is faster under contention


def test_config_toml_roundtrip_and_override(tmp_path):
    cfg = RunConfig(students=["unet-s", "mobile-unet"], rounds=7, data=None)
    cfg.save(tmp_path / "c.toml")
    back = RunConfig.load(tmp_path / "c.toml")
    assert back == cfg and back.heterogeneous and back.aggregation_rule == "distill"
    assert back.client_arch(3) == "mobile-unet"
    assert back.override(rounds=None, seed=5).seed == 5 and back.override(rounds=None).rounds == 7
    (tmp_path / "bad.toml").write_text("roundz = 3\n")
    with pytest.raises(SamfedError, match="roundz"):
        RunConfig.load(tmp_path / "bad.toml")


def test_same_seed_same_weights_and_run_dir(tmp_path):
    a = train(tiny(seed=3), tmp_path / "a", progress=False)
    b = train(tiny(seed=3), tmp_path / "b", progress=False)
    c = train(tiny(seed=4), tmp_path / "c", progress=False)
    assert same(weights(a.run_dir / "global"), weights(b.run_dir / "global"))
    assert not same(weights(a.run_dir / "global"), weights(c.run_dir / "global"))
    run = RunDir(a.run_dir)
    for p in (
        run.config,
        run.split,
        run.summary,
        run.report_md,
        run.report_html,
        run.manifest,
        run.plots / "val_dice.png",
        run.client_dir(2) / "student.json",
    ):
        assert p.is_file(), p
    assert verify_manifest(run.root) == []
    recs = run.read_metrics()
    assert [r["round"] for r in recs if r["event"] == "round"] == [0, 1, 2]
    clients = [r for r in recs if r["event"] == "client" and r["round"] == 1]
    assert len(clients) == 3 and all("pl_acc" in r and "loss_sup" in r for r in clients)
    assert "data:image/png;base64," in run.report_html.read_text()
    with pytest.raises(SamfedError, match="already holds a run"):
        train(tiny(seed=3), tmp_path / "a", progress=False)


def test_resume_gives_the_same_final_weights(tmp_path):
    """Heterogeneous students (ensemble distillation, client states kept) + global KD."""
    cfg = tiny(method="samfed-no-sam", students=["unet-s", "mobile-unet"], global_student="unet-s", clients=2)
    full = train(cfg, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(tiny(**{**cfg.to_dict(), "rounds": 1}), part, progress=False)
    with pytest.raises(SamfedError, match="already holds"):
        train(cfg, part, progress=False)
    resumed = train(cfg, part, resume=True, progress=False)
    for sub in ("global", "clients/0", "clients/1"):
        assert same(weights(full.run_dir / sub), weights(resumed.run_dir / sub)), sub
    rounds = [r["round"] for r in RunDir(part).read_metrics() if r["event"] == "round"]
    assert rounds == [0, 1, 2]
    assert resumed.summary["val_dice"] == pytest.approx(full.summary["val_dice"])


def test_baselines_and_errors(tmp_path):
    sup = train(tiny(method="supervised", rounds=1), tmp_path / "sup", progress=False)
    cen = train(tiny(method="centralised", rounds=1), tmp_path / "cen", progress=False)
    assert not (sup.run_dir / "clients").exists() and (cen.run_dir / "global" / "student.json").is_file()
    with pytest.raises(SamfedError, match="Nothing to resume"):
        train(tiny(), tmp_path / "nothing", resume=True, progress=False)
    with pytest.raises(SamfedError, match="unknown method"):
        train(tiny(method="nope"), tmp_path / "x", progress=False)
    with pytest.raises(SamfedError, match="FedAvg needs one student"):
        train(tiny(students=["unet-s", "mobile-unet"], aggregation="fedavg"), tmp_path / "y", progress=False)


def test_device_setting_errors_and_auto(tmp_path):
    from samfed.method.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SamfedError, match="Unknown device 'gpu0'"):
        train(tiny(device="gpu0"), tmp_path / "x", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(SamfedError, match="no CUDA GPU"):
            train(tiny(device="cuda"), tmp_path / "y", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_is_close_to_cpu(tmp_path):
    cpu = train(tiny(method="samfed-no-sam", rounds=1), tmp_path / "cpu", progress=False)
    gpu = train(tiny(method="samfed-no-sam", rounds=1, device="cuda"), tmp_path / "gpu", progress=False)
    assert gpu.summary["val_dice"] == pytest.approx(cpu.summary["val_dice"], abs=0.05)


def test_given_split_file_is_used(tmp_path):
    from samfed.data.partition import Split

    first = train(tiny(rounds=0), tmp_path / "a", progress=False)
    split = Split.load(RunDir(first.run_dir).split)
    split.clients = [split.clients[0] + split.clients[1], split.clients[2]]  # a split of its own
    split.save(tmp_path / "mine.json")
    data = str(RunDir(first.run_dir).data)
    run = train(tiny(rounds=0, data=data, split=str(tmp_path / "mine.json")), tmp_path / "b", progress=False)
    assert Split.load(RunDir(run.run_dir).split) == split
    assert len(run.summary["split_sizes"]["clients"]) == 2
    split.val = ["no-such-image"]
    split.save(tmp_path / "bad.json")
    with pytest.raises(SamfedError, match="does not match the dataset"):
        train(tiny(data=data, split=str(tmp_path / "bad.json")), tmp_path / "c", progress=False)


def cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=900, cwd=cwd
    )


@pytest.mark.slow
def test_cli_train_samfed_with_litemedsam_then_evaluate(tmp_path):
    """`samfed train` (the method with the real LiteMedSAM teacher) and `samfed evaluate` end to end."""
    out = tmp_path / "run"
    res = cli(
        "train",
        "--out",
        str(out),
        "--image-size",
        "64",
        "--rounds",
        "1",
        "--server-epochs",
        "2",
        "--teacher-epochs",
        "1",
        "--threads",
        "1",
        "--quiet",
        "--config",
        str(_tiny_toml(tmp_path)),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"report: {out / 'report.html'}" in res.stdout
    assert verify_manifest(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["method"] == "samfed" and summary["teacher"]["name"] == "litemedsam"
    assert (out / "teacher" / "teacher.json").is_file()
    clients = [r for r in RunDir(out).read_metrics() if r["event"] == "client" and r["round"] == 1]
    assert all(0 <= r["agreement_rate"] <= 1 and 0 <= r["pl_acc"] <= 1 for r in clients)
    assert all(0 <= r["pl_dice"] <= 1 and 0 <= r["teacher_dice"] <= 1 for r in clients)
    (out / "plots" / "agreement.png").stat()

    ev = cli("evaluate", str(out), "--data", str(out / "data"), "--worst", "2")
    assert ev.returncode == 0, ev.stderr[-2000:]
    rows = (out / "eval" / "data" / "per_image.csv").read_text().splitlines()
    n_val = len(json.loads((out / "split.json").read_text())["val"])
    assert rows[0] == "model,arch,id,dice,iou,hd95" and len(rows) == 1 + n_val * 3
    ev_summary = json.loads((out / "eval" / "data" / "summary.json").read_text())
    assert set(ev_summary["models"]) == {"global", "client 0", "client 1"}
    assert len(list((out / "eval" / "data" / "overlays").glob("*.png"))) == 2

    bad = cli("train", "--out", str(out), "--resume", "--method", "fixmatch")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "--resume" in bad.stderr


def _tiny_toml(tmp_path):
    p = tmp_path / "tiny.toml"
    RunConfig(synthetic_n=20, clients=2, batch_size=4, warmup_epochs=1).save(p)
    return p


def test_embedding_cached_teacher_matches_the_teacher(tmp_path):
    """The runner's teacher wrapper (cached encoder embeddings + decoder) gives the teacher's maps."""
    import numpy as np

    from samfed.data.synth import generate
    from samfed.teacher import load_teacher
    from samfed.train.teacher_maps import EmbeddingCachedTeacher

    teacher = load_teacher("litemedsam", prompt="full-box")
    images = [generate("polyp", 0, i, 64)[0] for i in range(2)]
    direct = teacher.predict_proba(images, 32)
    wrapped = EmbeddingCachedTeacher(teacher, tmp_path / "emb")
    first = wrapped.predict_proba(images, 32)
    assert len(list((tmp_path / "emb").rglob("*.npy"))) == 2
    again = wrapped.predict_proba(images, 32)  # from the cache
    assert np.array_equal(first, again)
    assert np.abs(first - direct).max() < 0.02  # embeddings are cached as float16
    assert wrapped.hash == teacher.hash and wrapped.prompt == "full-box"


def test_bn_recalibration_runs_after_each_aggregation(tmp_path):
    run = train(tiny(rounds=1, bn_recalibration=True), tmp_path / "r", progress=False)
    rounds = [r for r in RunDir(run.run_dir).read_metrics() if r["event"] == "round" and r["round"] == 1]
    assert rounds[0]["bn_recalibrated"] > 0
