"""Hostile and careless input to the data layer: mask encodings, size mismatches, EXIF rotation,
ambiguous and nested files, id and split files, and `data synth --overwrite` / bounds."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samfed.data.check import check_dataset
from samfed.data.dataset import load_arrays
from samfed.data.io import MaskValueError, image_size, read_image, read_mask, read_pair
from samfed.data.partition import Split, lesion_fraction, make_split
from samfed.data.readers import DatasetWarning, load_dataset, read_id_list
from samfed.data.synth import MANIFEST, MAX_SIZE, PARTIAL, write_synthetic
from samfed.errors import SamfedError

H, W = 20, 24


def _square(h: int = H, w: int = W) -> np.ndarray:
    """(h, w) bool: a centred square covering about a quarter of the image."""
    m = np.zeros((h, w), bool)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    return m


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _image(path: Path, h: int = H, w: int = W, seed: int = 0) -> Path:
    return _save(path, np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _labeled(root: Path, masks: dict[str, np.ndarray], ext: str = ".png") -> Path:
    """images/<id>.png (H x W) + masks/<id><ext> from the given mask arrays."""
    for i, (sid, m) in enumerate(masks.items()):
        _image(root / "images" / f"{sid}.png", *m.shape[:2], seed=i)
        _save(root / "masks" / f"{sid}{ext}", m)
    return root


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- mask encodings


@pytest.mark.parametrize(
    "name, values",
    [
        ("u8_01.png", _square().astype(np.uint8)),
        ("u16_01.png", _square().astype(np.uint16)),
        ("u16_full.png", _square().astype(np.uint16) * 65535),
        ("u8_0255.png", _square().astype(np.uint8) * 255),
        ("bilevel.png", _square()),
    ],
)
def test_binary_masks_in_every_encoding_read_alike(tmp_path, name, values):
    path = _save(tmp_path / name, values)
    assert np.array_equal(read_mask(path), _square())
    assert lesion_fraction(path) == pytest.approx(_square().mean())


def test_jpeg_masks_near_0_and_255_stay_supported(tmp_path):
    yy, xx = np.mgrid[:160, :192]
    big = np.hypot(yy - 77, xx - 91) < 45  # a disc: JPEG ringing along its edge
    path = _save(tmp_path / "m.jpg", big.astype(np.uint8) * 255, quality=85)
    grey = np.asarray(Image.open(path).convert("L"))
    assert len(np.unique(grey)) > 2  # really not 0/255
    assert (read_mask(path) == big).mean() > 0.99
    rgb = _save(tmp_path / "rgb.jpg", np.repeat(big[..., None].astype(np.uint8) * 255, 3, axis=2), quality=85)
    assert (read_mask(rgb) == big).mean() > 0.99  # Kvasir-SEG masks are 3-channel JPEGs


def _colour_mask() -> np.ndarray:
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:10, :12] = (255, 0, 0)
    rgb[10:, 12:] = (0, 200, 0)
    return rgb


@pytest.mark.parametrize(
    "name, values, match",
    [
        ("colour.png", _colour_mask(), "colour"),
        ("noise.png", np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8), "grey pixels"),
        ("levels.png", np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1)), "grey levels"),
        ("labels02.png", _square().astype(np.uint8) * 2, "values up to 2"),
        ("labels16.png", _square().astype(np.uint16) * 1000, "values up to 1000"),
    ],
)
def test_masks_that_are_neither_binary_encoding_are_errors(tmp_path, name, values, match):
    path = _save(tmp_path / name, values)
    with pytest.raises(MaskValueError, match=match) as err:
        read_mask(path)
    assert name in str(err.value)


def test_check_and_training_read_01_masks_and_refuse_colour_masks(tmp_path):
    root = _labeled(tmp_path / "d", {"a": _square().astype(np.uint8), "b": _square().astype(np.uint16)})
    report = check_dataset(root)
    assert report.ok and not report.problems  # no "empty mask" warnings for 0/1 masks
    _, masks = load_arrays(load_dataset(root), None, 32)
    assert masks.any(axis=(1, 2)).all()

    _save(root / "masks" / "b.png", _colour_mask())
    report = check_dataset(root)
    assert [(p.kind, Path(p.path).name) for p in report.errors] == [("non-binary mask", "b.png")]
    with pytest.raises(SamfedError, match="b.png"):
        load_arrays(load_dataset(root), None, 32)
    out = run_cli("data", "check", str(root))
    assert out.returncode == 1 and "non-binary mask" in out.stdout and "b.png" in out.stdout, out.stdout
    assert "Traceback" not in out.stdout + out.stderr


# ---------------------------------------------------------------- size mismatch in evaluate


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    """A run folder holding only a random-init global student (enough for `evaluate_run`)."""
    from export.checkpoint import save_student_checkpoint
    from samfed.models import create_student
    from samfed.preprocess import Preprocessing

    run = tmp_path / "run"
    save_student_checkpoint(
        create_student("unet-s"), "unet-s", "batch", Preprocessing(size=32), run / "global"
    )
    return run


def test_evaluate_refuses_a_size_mismatch_and_a_bad_mask_before_writing(tmp_path, tiny_run):
    from samfed.train.evaluate_run import evaluate_run

    root = _labeled(tmp_path / "d", {"a": _square(), "b": _square()})
    _save(root / "masks" / "b.png", _square(H, W + 4))
    assert [p.kind for p in check_dataset(root).errors] == ["size mismatch"]
    with pytest.raises(SamfedError, match=r"b\.png is 28x20 px but its image b\.png is 24x20 px"):
        evaluate_run(tiny_run, root)
    with pytest.raises(SamfedError, match="b.png"):
        read_pair(root / "images" / "b.png", root / "masks" / "b.png")
    _save(root / "masks" / "b.png", _colour_mask())
    with pytest.raises(MaskValueError, match="b.png"):
        evaluate_run(tiny_run, root)
    assert not (tiny_run / "eval").exists()  # nothing written for a refused data set
    _save(root / "masks" / "b.png", _square().astype(np.uint8))  # 0/1: fine
    result = evaluate_run(tiny_run, root, worst=0)
    assert result.summary["n_images"] == 2 and (result.out_dir / "per_image.csv").is_file()


# ---------------------------------------------------------------- EXIF orientation


def test_exif_rotation_is_applied_wherever_images_are_read(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)  # sensor: 24 wide
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: 20 wide, 24 tall
    root = tmp_path / "d"
    path = root / "images" / "a.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path, exif=exif)
    upright = np.rot90(pixels, k=-1)
    assert np.array_equal(read_image(path), upright)
    assert image_size(path) == (H, W)
    _save(root / "masks" / "a.png", _square(W, H))  # drawn on the displayed image
    report = check_dataset(root)
    assert report.ok and not report.errors
    image, mask = read_pair(path, root / "masks" / "a.png")
    assert image.shape[:2] == mask.shape == (W, H)


# ---------------------------------------------------------------- ambiguous and nested files


def test_two_images_with_one_id_are_an_error_naming_both(tmp_path):
    root = _labeled(tmp_path / "d", {"a": _square(), "b": _square()})
    _image(root / "images" / "a.jpg")
    with pytest.raises(SamfedError, match=r"a\.jpg and .*a\.png have the same id 'a'"):
        load_dataset(root)
    report = check_dataset(root)
    assert [(p.kind, Path(p.path).name) for p in report.errors] == [("ambiguous id", "a.jpg")]
    assert "a.png" in report.errors[0].message and report.usable == 1
    _save(root / "masks" / "b.jpg", _square().astype(np.uint8) * 255)  # masks too
    kinds = sorted(p.kind for p in check_dataset(root).errors)
    assert kinds == ["ambiguous id", "ambiguous id"]


def test_nested_subfolders_are_reported_not_silently_ignored(tmp_path):
    root = _labeled(tmp_path / "d", {"a": _square()})
    _image(root / "images" / "more" / "deep" / "x.png")
    with pytest.warns(DatasetWarning, match=r"more \(1 images\) is not read"):
        ds = load_dataset(root)
    assert ds.ids == ["a"]
    report = check_dataset(root)
    assert [(p.kind, Path(p.path).name) for p in report.warnings] == [("ignored subfolder", "more")]
    flat = tmp_path / "flat"
    _image(flat / "clinic1" / "x.png")
    with pytest.raises(SamfedError, match="subfolders such as clinic1/ are not read"):
        load_dataset(flat)


# ---------------------------------------------------------------- id and split files


def test_id_files_must_be_utf8_without_duplicates_or_overlap(tmp_path):
    root = _labeled(tmp_path / "d", {"a": _square(), "b": _square(), "c": _square()})
    (root / "val.txt").write_bytes(b"a\n\xff\xfeb\n")
    with pytest.raises(SamfedError, match="val.txt is not UTF-8 text"):
        load_dataset(root)
    out = run_cli("data", "check", str(root))
    assert out.returncode == 1 and "not UTF-8" in out.stderr and "Traceback" not in out.stderr
    (root / "val.txt").write_bytes("\ufeffa\nb\n".encode())  # a BOM is fine
    assert load_dataset(root).splits == {"val": ["a", "b"]}
    (root / "val.txt").write_text("a\nb\na.png\n")
    with pytest.raises(SamfedError, match="lists 'a' more than once"):
        load_dataset(root)
    (root / "val.txt").write_text("a\n")
    (root / "train.txt").write_text("a\nb\n")
    with pytest.raises(SamfedError, match="train.txt and val.txt .* both list 'a'"):
        load_dataset(root)
    (root / "ids.bin").write_bytes(b"a\x00b")
    with pytest.raises(SamfedError, match="binary"):
        read_id_list(root / "ids.bin")


def test_evaluate_ids_file_and_explicit_val_are_checked(tmp_path):
    from samfed.train.evaluate_run import resolve_ids

    root = _labeled(tmp_path / "d", {"a": _square(), "b": _square(), "c": _square(), "d": _square()})
    ds = load_dataset(root)
    (tmp_path / "ids.txt").write_bytes(b"\xe9a\n")
    with pytest.raises(SamfedError, match="not UTF-8"):
        resolve_ids(tmp_path, ds, tmp_path / "ids.txt")
    (tmp_path / "ids.txt").write_text("a\nb\n")
    assert resolve_ids(tmp_path, ds, tmp_path / "ids.txt")[0] == ["a", "b"]
    (root / "test.txt").write_text("a\n")
    with pytest.raises(SamfedError, match="both a val and a test id"):
        make_split(load_dataset(root), clients=1, val_ids=["a", "b"])


def _split_dict() -> dict:
    return {"format": 1, "server_labeled": ["a"], "clients": [["b"], ["c"]], "val": ["d"], "test": []}


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: ["a", "b"], "expected a JSON object"),
        (lambda d: {k: v for k, v in d.items() if k != "clients"}, "field 'clients' is missing"),
        (lambda d: d | {"extra": 1}, "unknown field 'extra'"),
        (lambda d: d | {"format": 2}, "format must be"),
        (lambda d: d | {"seed": "x"}, "seed must be an integer"),
        (lambda d: d | {"scheme": 5}, "scheme must be a non-empty string"),
        (lambda d: d | {"clients": "b"}, "clients must be a non-empty list"),
        (lambda d: d | {"clients": []}, "clients must be a non-empty list"),
        (lambda d: d | {"clients": [["b"], "c"]}, "client1 must be a list of ids"),
        (lambda d: d | {"val": [1]}, "val holds 1; ids must be non-empty strings"),
        (lambda d: d | {"val": [["d"]]}, "val holds \\['d'\\]"),
        (lambda d: d | {"test": [""]}, "test holds ''"),
        (lambda d: d | {"server_labeled": []}, "server_labeled is empty"),
        (lambda d: d | {"val": ["d", "d"]}, "id 'd' is twice in val"),
        (lambda d: d | {"val": ["b"]}, "id 'b' is in both client0 and val"),
        (lambda d: d | {"clients": [["a"], ["c"]]}, "id 'a' is in both server_labeled and client0"),
    ],
)
def test_split_files_are_validated_as_untrusted_input(tmp_path, edit, match):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(edit(_split_dict())))
    with pytest.raises(SamfedError, match=f"split.json is not a samfed split: {match}"):
        Split.load(path)


def test_split_file_encoding_and_round_trip(tmp_path):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(_split_dict()))
    split = Split.load(path)
    assert split.clients == [["b"], ["c"]] and split.scheme == "iid"
    federated = Split(["a"], [[], []], ["d"], [], scheme="federated")  # as `samfed serve` writes it
    assert Split.load(federated.save(tmp_path / "fed.json")) == federated
    path.write_bytes(json.dumps(_split_dict()).encode("utf-16"))
    with pytest.raises(SamfedError, match="not UTF-8 text"):
        Split.load(path)
    root = _labeled(tmp_path / "d", {"a": _square(), "b": _square(), "c": _square()})
    with pytest.raises(SamfedError, match="id 'd' and 0 more are not in it"):
        split.validate(load_dataset(root))


# ---------------------------------------------------------------- data synth


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_synth_overwrite_never_deletes_files_it_did_not_write(tmp_path):
    real = _labeled(tmp_path / "real", {"a": _square()})
    before = _tree(real)
    with pytest.raises(SamfedError, match="was not written by `samfed data synth`"):
        write_synthetic("polyp", 2, real, size=32, overwrite=True)
    assert _tree(real) == before
    out = run_cli("data", "synth", str(real), "--n", "2", "--size", "32", "--overwrite")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "samfed data synth" in out.stderr
    assert _tree(real) == before

    synth = write_synthetic("polyp", 3, tmp_path / "s", size=32)
    _image(synth / "images" / "mine.png")  # the user added a file of their own
    before = _tree(synth)
    with pytest.raises(SamfedError, match=r"1 files .* \(e\.g\. images/mine\.png\)"):
        write_synthetic("polyp", 2, synth, size=32, overwrite=True)
    assert _tree(synth) == before

    (synth / "images" / "mine.png").unlink()
    write_synthetic("skin", 2, synth, size=32, overwrite=True)
    assert load_dataset(synth).layout == "isic" and not (synth / "images").exists()
    assert not (synth / PARTIAL).exists() and "ISIC_0000001" in (synth / MANIFEST).read_text()


def test_synth_manifest_is_untrusted_and_interrupted_synths_can_be_replaced(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    synth = write_synthetic("polyp", 2, tmp_path / "s", size=32)
    meta = json.loads((synth / MANIFEST).read_text())
    meta["files"].append("../victim.txt")
    (synth / MANIFEST).write_text(json.dumps(meta))
    write_synthetic("polyp", 1, synth, size=32, overwrite=True)
    assert victim.read_text() == "keep me" and load_dataset(synth).ids == ["synpolyp00000"]

    (synth / MANIFEST).write_text("{not json")
    with pytest.raises(SamfedError, match="does not list the files"):
        write_synthetic("polyp", 1, synth, size=32, overwrite=True)

    def stop(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    partial = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        write_synthetic("polyp", 5, partial, size=32, progress=stop)
    assert (partial / PARTIAL).is_file() and not (partial / MANIFEST).exists()  # `train` regenerates it
    write_synthetic("polyp", 2, partial, size=32, overwrite=True)
    assert len(load_dataset(partial).ids) == 2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"size": 100_000}, f"between 32 and {MAX_SIZE} px"),
        ({"size": 16}, "between 32"),
        ({"n": 0}, "between 1 and"),
        ({"n": 10**9}, "between 1 and"),
        ({"seed": -1}, "non-negative"),
        ({"val_fraction": 1.5}, "val fraction"),
    ],
)
def test_synth_bounds_fail_fast_without_writing(tmp_path, kw, match):
    args = {"n": 2, "size": 32} | kw
    with pytest.raises(SamfedError, match=match):
        write_synthetic("polyp", args.pop("n"), tmp_path / "s", **args)
    assert not (tmp_path / "s").exists()


def test_cli_synth_huge_size_is_one_line(tmp_path):
    out = run_cli("data", "synth", str(tmp_path / "s"), "--size", "100000")
    assert out.returncode == 1 and "Traceback" not in out.stderr and "2048" in out.stderr, out.stderr
    assert not (tmp_path / "s").exists()
