"""`samfed evaluate` of a deployed export (torch-free) and of a predictions folder; HD95 conventions
against a brute-force reference; bad input as one error line."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from export_helpers import tiny_checkpoint
from PIL import Image
from run_helpers import one_error_line, run_cli

from edge.manifest import load_manifest
from export.build import export_student
from samfed.metrics import HD95_CONVENTIONS, hd95

ROOT = Path(__file__).resolve().parents[1]
# What an edge install lacks: evaluating an export must not import any of them.
BLOCKED = ["torch", "torchvision", "onnx", "nncf", "scipy", "safetensors", "timm", "flwr", "segment_anything"]


def run_main(capsys, *args: object) -> tuple[int, str]:
    """`samfed ARGS` in this process: (exit code, stderr + stdout)."""
    code, out, err = run_cli(capsys, *args)
    return code, err + out


def read_csv(path: Path) -> dict[str, dict[str, float]]:
    with open(path) as f:
        return {r["id"]: {k: float(v) for k, v in r.items() if k != "id"} for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, polyp_dir) -> Path:
    """unet-s at 64 px with a training summary, exported to ONNX FP32/INT8 and OpenVINO FP32;
    the held-out check covers every val id."""
    tmp = tmp_path_factory.mktemp("evaluate")
    tiny_checkpoint("unet-s", "batch", polyp_dir, tmp / "run" / "global", method="samfed", rounds=3)
    summary = {
        "config": {"method": "samfed", "rounds": 3},
        "data": str(polyp_dir),
        "split_sizes": {"server_labeled": 4, "clients": [6, 5], "val": 5, "test": 0},
        "val_dice": 0.61234,
    }
    (tmp / "run" / "summary.json").write_text(json.dumps(summary))
    out = tmp / "export"
    export_student(
        tmp / "run", out, int8=True, backend="onnx", n_calib=8, n_heldout=100, threads=1,
        latency_iters=1, log=lambda _: None,
    )  # fmt: skip
    return out


# ---- hand-made masks -------------------------------------------------------------------------


def square(top: int, left: int, side: int, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def write_labeled(root: Path, masks: dict[str, np.ndarray]) -> Path:
    """A generic images/ + masks/ folder: grey images, the given ground-truth masks as 0/255 PNGs."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in masks.items():
        Image.fromarray(np.full((*m.shape, 3), 90, np.uint8)).save(root / "images" / f"{i}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
    return root


def write_masks(folder: Path, masks: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, m in masks.items():
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{i}.png")
    return folder


GT = {"same": square(10, 10, 20), "shifted": square(10, 10, 20), "missed": square(5, 5, 10)}
PRED = {"same": square(10, 10, 20), "shifted": square(10, 15, 20), "missed": np.zeros((48, 64), bool)}
KNOWN = {  # id: (dice, iou, hd95)
    "same": (1.0, 1.0, 0.0),
    "shifted": (2 * 300 / 800, 300 / 500, 5.0),  # 20x20 squares overlapping in 20x15
    "missed": (0.0, 0.0, math.hypot(48, 64)),  # empty prediction: the image diagonal
}


@pytest.fixture()
def hand_made(tmp_path) -> tuple[Path, Path]:
    return write_labeled(tmp_path / "data", GT), write_masks(tmp_path / "pred" / "masks", PRED).parent


def test_predictions_folder_known_dice_iou_hd95(hand_made, tmp_path, capsys):
    data, pred = hand_made
    code, text = run_main(capsys, "evaluate", "--predictions", pred, "--data", data, "--out", tmp_path / "e")
    assert code == 0, text
    rows = read_csv(tmp_path / "e" / "per_image.csv")
    assert set(rows) == set(KNOWN)
    for i, (d, j, h) in KNOWN.items():
        assert rows[i]["dice"] == pytest.approx(d, abs=1e-6)
        assert rows[i]["iou"] == pytest.approx(j, abs=1e-6)
        assert rows[i]["hd95"] == pytest.approx(h, abs=1e-5)
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["n_images"] == 3 and s["mean"]["dice"] == pytest.approx(np.mean([k[0] for k in KNOWN.values()]))
    assert s["conventions"]["hd95"].startswith("pooled") and "medpy" in s["conventions"]["hd95"]
    assert "image diagonal" in s["conventions"]["empty_masks"]
    assert [c["id"] for c in s["per_case"]] == list(rows)
    assert [w["id"] for w in s["worst"]] == ["missed", "shifted", "same"]
    overlays = sorted(p.name for p in (tmp_path / "e" / "overlays").iterdir())
    assert overlays[0] == "01_missed_dice0.000.png" and len(overlays) == 3
    assert Image.open(tmp_path / "e" / "overlays" / overlays[0]).size == (2 * 64 + 4, 48)  # truth | pred
    assert "Dice" in text and "0.5833" in text  # the console table: mean Dice (1 + 0.75 + 0) / 3


def test_predictions_with_ids_and_max_convention(hand_made, tmp_path, capsys):
    data, pred = hand_made
    (tmp_path / "ids.txt").write_text("shifted\nsame\n")
    code, text = run_main(
        capsys, "evaluate", "--predictions", pred, "--data", data, "--ids", tmp_path / "ids.txt",
        "--hd95", "max", "--worst", "0", "--out", tmp_path / "e",
    )  # fmt: skip
    assert code == 0, text
    assert list(read_csv(tmp_path / "e" / "per_image.csv")) == ["shifted", "same"]
    s = json.loads((tmp_path / "e" / "summary.json").read_text())
    assert s["conventions"]["hd95"].startswith("max") and "MONAI" in s["conventions"]["hd95"]
    assert not (tmp_path / "e" / "overlays").exists()


# ---- HD95 against an independent brute-force implementation -------------------------------------


def brute_surface(mask: np.ndarray) -> list[tuple[int, int]]:
    """Foreground pixels with a 4-neighbour that is background or outside the image (loops)."""
    h, w = mask.shape
    out = []
    for r in range(h):
        for c in range(w):
            if mask[r, c] and any(
                not (0 <= r + dr < h and 0 <= c + dc < w) or not mask[r + dr, c + dc]
                for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
            ):
                out.append((r, c))
    return out


def brute_hd95(a: np.ndarray, b: np.ndarray, convention: str) -> float:
    """medpy (pooled) or MONAI (max of directed) HD95 from all pairwise surface distances."""
    pa, pb = np.array(brute_surface(a), float), np.array(brute_surface(b), float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    a_to_b, b_to_a = d.min(1), d.min(0)
    if convention == "pooled":
        return float(np.percentile(np.concatenate([a_to_b, b_to_a]), 95))
    return float(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)))


def ring(shape, cy, cx, r_out, r_in) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (d2 <= r_out**2) & (d2 > r_in**2)


def with_stray_line(mask: np.ndarray) -> np.ndarray:
    """`mask` plus a 1x5 line far away: 5 of its 81 surface pixels (6%) are outliers, but only 5 of
    the 157 pooled ones (3%)."""
    out = mask.copy()
    out[36, 40:45] = True
    return out


def hand_made_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    shape = (40, 52)
    blob = ring(shape, 20, 26, 12, -1)
    noisy = blob ^ (rng.random(shape) > 0.97)
    corner = np.zeros(shape, bool)
    corner[0, 0] = True
    return [
        (with_stray_line(square(5, 5, 20, shape)), square(5, 5, 20, shape)),
        (square(10, 10, 20, shape), square(12, 17, 14, shape)),
        (square(5, 5, 30, shape), square(15, 15, 6, shape)),  # nested: directions differ a lot
        (blob, noisy),
        (ring(shape, 20, 26, 15, 8), square(14, 20, 12, shape)),  # a ring with a hole vs a square
        (square(0, 0, 40, shape), square(0, 30, 22, shape)),  # touching the image border
        (corner, square(30, 40, 5, shape)),
        (rng.random(shape) > 0.8, rng.random(shape) > 0.6),
    ]


@pytest.mark.parametrize("convention", list(HD95_CONVENTIONS))
def test_hd95_matches_brute_force_reference(convention):
    for a, b in hand_made_pairs():
        ref = brute_hd95(a, b, convention)
        assert hd95(a, b, convention=convention) == pytest.approx(ref, abs=1e-9)
        assert hd95(b, a, convention=convention) == pytest.approx(ref, abs=1e-9)


def test_hd95_conventions_differ_where_directions_differ():
    pairs = hand_made_pairs()
    pooled = [hd95(a, b, convention="pooled") for a, b in pairs]
    biggest = [hd95(a, b, convention="max") for a, b in pairs]
    assert all(m >= p - 1e-12 for p, m in zip(pooled, biggest, strict=True))
    a, b = pairs[0]  # the stray line is beyond the directed 95th percentile, not the pooled one
    assert hd95(a, b, convention="pooled") == 0.0
    assert hd95(a, b, convention="max") == pytest.approx(brute_hd95(a, b, "max"))
    assert hd95(a, b, convention="max") > 15
    with pytest.raises(ValueError, match="unknown HD95 convention"):
        hd95(a, b, convention="monai")


# ---- the deployed export ---------------------------------------------------------------------


def test_manifest_records_training_summary(exported, polyp_dir):
    assert load_manifest(exported).data["training"] == {
        "method": "samfed", "rounds": 3, "data": polyp_dir.name,  # the folder name, not its path
        "labeled_images": 4, "clients": 2, "client_images": 11, "val_images": 5, "val_dice": 0.6123,
    }  # fmt: skip


def test_export_evaluated_without_torch_matches_manifest(exported, polyp_dir, tmp_path):
    """In a process where torch, scipy & co. cannot be imported: the INT8 export's Dice on the val
    ids equals the manifest's recorded Dice vs ground truth (same images, same code path)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n"
    )
    code = (
        "import sys\n"
        "from cli import main\n"
        "for args in sys.argv[1:]:\n"
        "    try:\n"
        "        main(args.split('|'))\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, exc.code\n"
        f"leaked = [m for m in sys.modules if m.split('.')[0] in {BLOCKED!r} and sys.modules[m]]\n"
        "print('LEAKED', leaked)\n"
    )
    common = f"evaluate|{exported}|--data|{polyp_dir}|--ids|val.txt"  # val.txt is found in --data
    runs = [
        f"{common}|--backend|onnxruntime|--model-precision|int8|--out|{tmp_path / 'int8'}",
        f"{common}|--precision|fp32|--hd95|max|--out|{tmp_path / 'fp32'}",  # the hidden alias
    ]
    env = {**os.environ, "PYTHONPATH": f"{block}{os.pathsep}{ROOT}"}
    res = subprocess.run(
        [sys.executable, "-c", code, *runs], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert "LEAKED []" in res.stdout
    man = json.loads((exported / "manifest.json").read_text())
    val_ids = (polyp_dir / "val.txt").read_text().split()
    for key, folder in (("onnx-int8", "int8"), ("onnx-fp32", "fp32")):
        s = json.loads((tmp_path / folder / "summary.json").read_text())
        assert s["artefact"] == key and s["n_images"] == len(val_ids) == man["heldout"]["n"]
        assert s["mean"]["dice"] == pytest.approx(man["artefacts"][key]["parity"]["dice_vs_gt"], abs=1e-5)
        assert s["manifest_dice_vs_gt"] == man["artefacts"][key]["parity"]["dice_vs_gt"]
        assert list(read_csv(tmp_path / folder / "per_image.csv")) == val_ids
    assert json.loads((tmp_path / "fp32" / "summary.json").read_text())["conventions"]["hd95"].startswith(
        "max"
    )
    assert "the manifest records Dice vs ground truth" in res.stdout


def test_predict_then_predictions_equals_export_evaluation(exported, polyp_dir, tmp_path, capsys):
    """Both use the manifest's recommended artefact (predict's options are not needed)."""
    code, text = run_main(capsys, "predict", exported, polyp_dir / "images", "--out", tmp_path / "p")
    assert code == 0, text
    code, text = run_main(capsys, "evaluate", "--predictions", tmp_path / "p", "--data", polyp_dir)
    assert code == 0, text
    default_out = tmp_path / "p-eval" / polyp_dir.name
    from_files = read_csv(default_out / "per_image.csv")
    code, text = run_main(capsys, "evaluate", exported, "--data", polyp_dir, "--out", tmp_path / "x")
    assert code == 0, text
    direct = read_csv(tmp_path / "x" / "per_image.csv")
    assert list(from_files) == list(direct) and len(direct) == 24
    for i, row in direct.items():
        assert from_files[i] == pytest.approx(row, abs=1e-6)


# ---- bad input ---------------------------------------------------------------------------------


def test_errors_are_one_line(exported, hand_made, tmp_path, capsys):
    data, pred = hand_made
    cases = [
        (["--predictions", pred, "--data", tmp_path / "nowhere"], "does not exist"),
        (["--predictions", tmp_path / "nowhere", "--data", data], "Predictions folder"),
        ([tmp_path / "nowhere", "--data", data], "does not exist"),
        ([data, "--data", data], "neither an export folder"),
        ([exported, "--predictions", pred, "--data", data], "not both"),
        (["--data", data], "Pass a run directory or an export folder"),
        ([exported, "--data", data, "--model-precision", "int4"], "Unknown precision"),
        ([exported, "--data", data, "--precision", "int8", "--model-precision", "fp32"], "alias"),
        (["--predictions", pred, "--data", data, "--hd95", "monai"], "Unknown --hd95"),
        (["--predictions", pred, "--data", data, "--backend", "openvino"], "apply to an export folder"),
    ]
    for args, message in cases:
        code, text = run_main(capsys, "evaluate", *args, "--out", tmp_path / "o")
        assert code == 1 and message in one_error_line(text), (args, text)


def test_prediction_problems_are_one_line(hand_made, tmp_path, capsys):
    data, pred = hand_made
    (tmp_path / "ids.txt").write_text("same\nshifted\nmissed\n")
    (pred / "masks" / "missed.png").unlink()
    code, text = run_main(
        capsys, "evaluate", "--predictions", pred, "--data", data, "--ids", tmp_path / "ids.txt"
    )
    assert code == 1 and "No prediction for 'missed'" in one_error_line(text)

    write_masks(pred / "masks", {"missed": np.zeros((20, 20), bool)})  # not the image's size
    code, text = run_main(capsys, "evaluate", "--predictions", pred, "--data", data)
    line = one_error_line(text)
    assert code == 1 and "20x20 px" in line and "64x48 px" in line

    write_masks(pred / "masks", {"missed": np.zeros((48, 64), bool), "stranger": np.zeros((48, 64), bool)})
    code, text = run_main(capsys, "evaluate", "--predictions", pred, "--data", data)
    assert code == 1 and "no image with id 'stranger'" in one_error_line(text)
    code, text = run_main(  # with --ids, predictions of other images are left out
        capsys, "evaluate", "--predictions", pred, "--data", data, "--ids", tmp_path / "ids.txt"
    )
    assert code == 0, text


def test_ground_truth_of_another_size_is_one_line(exported, tmp_path, capsys):
    data = write_labeled(tmp_path / "data", {"a": square(5, 5, 10), "b": square(8, 8, 12)})
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(data / "masks" / "b.png")
    code, text = run_main(capsys, "evaluate", exported, "--data", data, "--out", tmp_path / "o")
    line = one_error_line(text)
    assert code == 1 and "30x30 px" in line and "64x48 px" in line

    unlabeled = tmp_path / "unlabeled"
    shutil.copytree(data / "images", unlabeled / "images")
    code, text = run_main(capsys, "evaluate", exported, "--data", unlabeled, "--out", tmp_path / "o")
    assert code == 1 and "no ground-truth mask" in one_error_line(text)
