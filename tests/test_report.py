"""The run report (comparison with `supervised`, qualitative panel, curves, provenance), the teacher
warning, train.log, and the run directory's contents and size (speed-up caches live outside it)."""

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import run_helpers
import torch
from rich.console import Console
from safetensors.torch import load_file

from samfed.config import RunConfig
from samfed.errors import SamfedError
from samfed.train.run_dir import RunDir, verify_manifest
from samfed.train.runner import train

torch.set_num_threads(1)

REPORT_RUN = dict(rounds=1, server_epochs=4, method="samfed")


def tiny(**kw) -> RunConfig:
    """The tiny run with one round of SAM-Fed (a longer server initialisation)."""
    return run_helpers.tiny(**{**REPORT_RUN, **kw})


class BlankTeacher:
    """A deliberately useless teacher through train()'s `teacher` hook: it marks no lesion
    anywhere, so its maps score Dice 0 on every image with a lesion."""

    name, prompt, hash = "blank", "none", "b" * 64

    class input:  # noqa: N801 - the attribute a teacher object carries
        convention = "original"

    def predict_proba(self, images, out_size, boxes=None, prompt_masks=None, batch_size=8):
        return np.zeros((len(images), out_size, out_size), np.float32)


def ansi_free(text: str) -> bool:
    return "\x1b[" not in text


@pytest.fixture(scope="module")
def blank_run(tmp_path_factory):
    """A finished tiny SAM-Fed run with the blank teacher; (run dir, summary, console text)."""
    out = tmp_path_factory.mktemp("blank") / "run"
    buf = io.StringIO()
    console = Console(file=buf, width=100, color_system=None, force_terminal=False)
    result = train(tiny(), out, console=console, progress=False, teacher=BlankTeacher())
    return RunDir(out), result.summary, buf.getvalue()


def test_useless_teacher_prints_one_warning_line_in_console_log_and_report(blank_run):
    run, summary, console = blank_run
    records = run.read_metrics()
    round0 = next(r["val_dice"] for r in records if r["event"] == "round" and r["round"] == 0)
    assert summary["teacher"]["val_dice"] < round0  # really below round 0
    lines = [ln for ln in console.splitlines() if "teacher is worse than the global model" in ln]
    assert len(lines) == 1 and "--teacher-epochs" in lines[0] and "lora" in lines[0]
    assert f"{summary['teacher']['val_dice']:.3f} < {round0:.3f}" in lines[0]
    assert lines[0] in run.log_file.read_text()
    assert summary["warnings"] == [lines[0]]
    assert f"**Warning:** {lines[0]}" in run.report_md.read_text()


def test_no_warning_without_a_teacher(tmp_path):
    result = train(tiny(method="fixmatch", rounds=0), tmp_path / "r", progress=False)
    assert result.summary["warnings"] == []
    assert "teacher is worse" not in (tmp_path / "r" / "train.log").read_text()


def test_report_leads_with_the_comparison_and_has_the_panel_and_curves(blank_run):
    run, summary, _ = blank_run
    md = run.report_md.read_text()
    c = summary["comparison"]
    lead = md.split("## ")[0]  # everything before the first section
    row = f"| **samfed** (global model) | {c['round0_val_dice']:.3f} | {c['val_dice']:.3f} | "
    row += f"{c['val_hd95']:.1f} |"
    sup = f"| supervised (server images only) | {c['round0_val_dice']:.3f} | {c['supervised_val_dice']:.3f} |"
    assert row in lead and sup in lead and "![validation Dice per round](plots/val_dice.png)" in lead
    assert "## Validation images" in md and "![qualitative panel](plots/qualitative.png)" in md
    for name in ("val_dice", "loss", "agreement", "qualitative"):
        assert (run.plots / f"{name}.png").stat().st_size > 5000, name
    # split sizes as a table, times in seconds, versions and the command line
    s = summary["split_sizes"]
    assert (
        f"| {s['server_labeled']} | {' | '.join(map(str, s['clients']))} | {s['val']} | {s['test']} |" in md
    )
    assert re.search(r"\| 0 \| \d\.\d{3} \| \d+\.\d \|.*\| \d+\.\d s \|", md)  # round 0 has its time
    assert {"server init", "teacher fine-tune", "teacher maps", "rounds", "supervised baseline"} <= set(
        summary["stages"]
    )
    assert set(summary["versions"]) == {"samfed", "torch", "flwr", "onnxruntime", "openvino"}
    assert summary["versions"]["torch"] and summary["command"] and summary["command"] in md
    assert "git_commit" in summary


def test_html_is_self_contained_and_rendered_by_markdown_it(blank_run):
    run, _, _ = blank_run
    page = run.report_html.read_text()
    assert page.count('src="data:image/png;base64,') == 4 and 'src="plots/' not in page
    assert "<table>" in page and "<strong>samfed</strong>" in page and "|---" not in page
    assert "<h2>Validation images</h2>" in page and ansi_free(page)


def test_metrics_have_client_curves_baseline_rounds_and_round0_time(blank_run):
    run, _, _ = blank_run
    records = run.read_metrics()
    rounds = [r for r in records if r["event"] == "round"]
    assert all(len(r["client_val_dice"]) == 3 for r in rounds)  # homogeneous FedAvg too
    assert rounds[0]["seconds"] > 0
    assert [r["round"] for r in records if r["event"] == "baseline"] == [1]  # round 0 is shared


def test_train_log_is_the_console_without_ansi(blank_run):
    run, _, console = blank_run
    log = run.log_file.read_text()
    assert ansi_free(log) and log.strip().splitlines() == console.strip().splitlines()
    assert "report: " in log.splitlines()[-1]


def test_supervised_row_is_the_supervised_method(blank_run, tmp_path):
    """The comparison's `supervised` is what `--method supervised` gives on the same split."""
    run, summary, _ = blank_run
    alone = train(tiny(method="supervised"), tmp_path / "sup", progress=False)
    assert summary["comparison"]["supervised_val_dice"] == pytest.approx(alone.summary["val_dice"], abs=1e-9)


def run_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def test_run_directory_contents_and_size(blank_run):
    """What a run keeps: its data, split, settings, models, resume state, metrics and report; no
    cache files. Models dominate: the global and 3 client students plus the resume state (initial
    and last global model) are 6 copies of the student's weights."""
    run, _, _ = blank_run
    top = sorted(p.name for p in run.root.iterdir())
    assert top == sorted(
        ["clients", "config.toml", "data", "global", "manifest.json", "metrics.jsonl", "plots", "report.html",
         "report.md", "split.json", "state", "summary.json", "train.log"]
    )  # fmt: skip
    assert not list(run.root.rglob("*.npy")) and not list(run.root.rglob("*.npz"))
    weights = (run.global_dir / "student.safetensors").stat().st_size
    assert run_bytes(run.root) < 6 * weights + 4_000_000
    assert "clients" not in run.load_state()  # in clients/<k>/ once the run has finished
    assert verify_manifest(run.root) == []


def test_caches_are_shared_content_keyed_and_safe_to_delete(blank_run, tmp_path):
    """The maps and the initial global model go to $SAMFED_CACHE; a second run reuses them and
    ends with the same weights; with the cache deleted it recomputes them, again the same."""
    cache = Path(os.environ["SAMFED_CACHE"])
    assert list((cache / "teacher_maps").rglob("*.npz")) and list((cache / "global_init").glob("*.pt"))
    first, _, _ = blank_run
    again = train(tiny(cache=str(tmp_path / "c")), tmp_path / "a", progress=False, teacher=BlankTeacher())
    init = next(r for r in RunDir(again.run_dir).read_metrics() if r["event"] == "init")
    assert not init.get("cached")  # a new cache folder: computed
    fresh = train(tiny(cache=str(tmp_path / "c")), tmp_path / "b", progress=False, teacher=BlankTeacher())
    init = next(r for r in RunDir(fresh.run_dir).read_metrics() if r["event"] == "init")
    assert init.get("cached") is True
    for r in (again, fresh):
        a, b = (
            load_file(str(first.global_dir / "student.safetensors")),
            load_file(str(r.run_dir / "global" / "student.safetensors")),
        )
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_unwritable_cache_is_one_line_and_writes_no_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SamfedError, match="cache folder .* cannot be written; pass --cache") as info:
        train(tiny(cache=str(blocker / "sub")), tmp_path / "r", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "r").exists()


def test_resume_of_a_finished_run_reads_the_clients_from_their_folders(blank_run, tmp_path):
    import shutil

    run, summary, _ = blank_run
    copy = tmp_path / "run"
    shutil.copytree(run.root, copy)
    resumed = train(tiny(), copy, resume=True, progress=False, teacher=BlankTeacher())
    assert resumed.summary["val_dice"] == pytest.approx(summary["val_dice"])
    saved = json.loads((copy / "summary.json").read_text())["comparison"]
    assert saved["supervised_val_dice"] == pytest.approx(summary["comparison"]["supervised_val_dice"])
    assert [m["dice_mean"] for m in resumed.summary["models"]] == pytest.approx(
        [m["dice_mean"] for m in summary["models"]]
    )
    log = (copy / "train.log").read_text()
    assert log.count("resuming after round 1") == 1 and log.count("report: ") == 2
