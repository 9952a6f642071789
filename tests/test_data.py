"""Data layer: readers on hand-made folders, the synthetic generator, splits, checks and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samfed.data.check import check_dataset
from samfed.data.dataset import SegDataset, load_arrays
from samfed.data.io import image_size, read_image, read_mask
from samfed.data.partition import Split, lesion_fractions, make_split
from samfed.data.readers import DatasetWarning, load_dataset
from samfed.data.synth import generate, polyp_resolutions, write_synthetic
from samfed.errors import SamfedError
from samfed.preprocess import Preprocessing


def _img(path: Path, w: int = 12, h: int = 10, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _mask(path: Path, w: int = 12, h: int = 10, frac: float = 0.5) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m.flat[: round(frac * h * w)] = 255
    Image.fromarray(m).save(path)
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- io and readers


def test_read_mask_thresholds_grey_at_128(tmp_path):
    grey = np.array([[0, 127, 128, 255] + [0, 255] * 23], np.uint8)  # 2 mid-grey pixels in 50: binary
    Image.fromarray(grey).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png")[0, :4].tolist() == [False, False, True, True]
    image = read_image(_img(tmp_path / "a.png", 7, 5))
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert image_size(tmp_path / "a.png") == (7, 5)


def test_read_image_rejects_truncated_and_missing_files(tmp_path):
    _img(tmp_path / "full.jpg", 64, 64)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.jpg", "text.png", "missing.jpg"):
        with pytest.raises(SamfedError, match=name):
            read_image(tmp_path / name)


def test_kvasir_layout_with_split_files(tmp_path):
    for i in range(3):
        _img(tmp_path / "images" / f"c{i}.jpg")
        _mask(tmp_path / "masks" / f"c{i}.jpg")
    (tmp_path / "train.txt").write_text("c0\nc1\n\n")
    (tmp_path / "val.txt").write_text("c2.jpg\nghost\n")
    with pytest.warns(DatasetWarning, match="ghost"):
        ds = load_dataset(tmp_path)
    assert ds.layout == "kvasir" and ds.has_masks and ds.ids == ["c0", "c1", "c2"]
    assert ds["c1"].mask == tmp_path / "masks" / "c1.jpg"
    assert ds.splits == {"train": ["c0", "c1"], "val": ["c2"]}
    assert ds.unknown_split_ids == {"val": ["ghost"]}


def test_isic_layout(tmp_path):
    inp, gt = tmp_path / "ISIC2018_Task1-2_Training_Input", tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    for i in (1, 7):
        _img(inp / f"ISIC_{i:07d}.jpg")
        _mask(gt / f"ISIC_{i:07d}_segmentation.png")
    (inp / "LICENSE.txt").write_text("x")
    _img(tmp_path / "ISIC2018_Task1-2_Validation_Input" / "ISIC_0000009.jpg")
    _mask(tmp_path / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000009_segmentation.png")
    ds = load_dataset(tmp_path)
    assert ds.layout == "isic" and ds.ids == ["ISIC_0000001", "ISIC_0000007", "ISIC_0000009"]
    assert ds["ISIC_0000007"].mask.name == "ISIC_0000007_segmentation.png"
    assert ds.splits == {"val": ["ISIC_0000009"]}


def test_generic_layout_mixed_extensions_and_unpaired(tmp_path):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "b.bmp")
    _img(tmp_path / "images" / "c.tif")
    _img(tmp_path / "images" / "lonely.jpeg")
    _mask(tmp_path / "masks" / "a.png")
    _mask(tmp_path / "masks" / "b_mask.png")
    _mask(tmp_path / "masks" / "c.tif")
    _mask(tmp_path / "masks" / "orphan.png")
    (tmp_path / "test.txt").write_text("c\n")
    ds = load_dataset(tmp_path)
    assert ds.layout == "generic" and ds.ids == ["a", "b", "c"]
    assert ds["b"].mask.name == "b_mask.png"
    assert [p.name for p in ds.unpaired_images] == ["lonely.jpeg"]
    assert [p.name for p in ds.unpaired_masks] == ["orphan.png"]
    assert ds.splits == {"test": ["c"]}


@pytest.mark.parametrize("nested", [True, False])
def test_images_only_folder_is_unlabeled(tmp_path, nested):
    folder = tmp_path / "images" if nested else tmp_path
    _img(folder / "x.jpg")
    _img(folder / "y.png")
    ds = load_dataset(tmp_path)
    assert ds.ids == ["x", "y"] and not ds.labeled and not ds.has_masks
    assert all(s.mask is None for s in ds.samples)


def test_missing_or_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(SamfedError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(SamfedError, match="No images"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------- synthetic data


@pytest.mark.parametrize("domain", ["skin", "polyp"])
def test_generator_is_deterministic_by_seed(domain):
    a_img, a_mask = generate(domain, seed=3, index=5, size=64)
    b_img, b_mask = generate(domain, seed=3, index=5, size=64)
    c_img, _ = generate(domain, seed=4, index=5, size=64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    assert a_img.shape != c_img.shape or not np.array_equal(a_img, c_img)
    assert a_img.dtype == np.uint8 and a_mask.dtype == bool and a_mask.shape == a_img.shape[:2]
    assert 0 < a_mask.mean() < 1


def test_write_synthetic_is_byte_identical_for_a_seed(tmp_path):
    a = write_synthetic("polyp", 4, tmp_path / "a", seed=1, size=48)
    b = write_synthetic("polyp", 4, tmp_path / "b", seed=1, size=48)
    c = write_synthetic("polyp", 4, tmp_path / "c", seed=2, size=48)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files if f.suffix == ".jpg")
    with pytest.raises(SamfedError, match="not empty"):
        write_synthetic("polyp", 2, a, seed=1, size=48)
    write_synthetic("skin", 3, a, seed=1, size=48, overwrite=True)
    assert load_dataset(a).layout == "isic" and len(load_dataset(a)) == 3


def test_synthetic_folders_read_back_through_real_readers(polyp_dir, skin_dir):
    polyp, skin = load_dataset(polyp_dir), load_dataset(skin_dir)
    assert (polyp.layout, skin.layout) == ("kvasir", "isic")
    for ds in (polyp, skin):
        assert len(ds) == 24 and ds.has_masks
        assert sorted(ds.splits["train"] + ds.splits["val"]) == ds.ids
    sizes = {image_size(s.image) for s in polyp.samples}
    assert len(sizes) >= 2 and sizes <= set(polyp_resolutions(96))
    fractions = lesion_fractions(polyp, polyp.ids)
    assert all(0 < f < 1 for f in fractions.values())
    assert max(fractions.values()) > 5 * min(fractions.values())  # small and large lesions


# ---------------------------------------------------------------- torch dataset


def test_seg_dataset_items_and_arrays(polyp_dir):
    ds = load_dataset(polyp_dir)
    prep = Preprocessing(size=32)
    data = SegDataset(ds, ds.splits["val"], prep)
    item = data[1]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 32, 32) and set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["id"] == ds.splits["val"][1] and item["index"] == 1
    assert data.images.shape == (len(data), 32, 32, 3) and data.images.dtype == np.uint8
    unlabeled = SegDataset(ds.samples[:3], None, prep, with_masks=False)
    assert "mask" not in unlabeled[0] and unlabeled.masks is None
    images, masks = load_arrays(ds, ds.ids[:4], 16)
    assert images.shape == (4, 16, 16, 3) and masks.shape == (4, 16, 16) and masks.dtype == bool
    assert np.array_equal(images[1], SegDataset(ds, [ds.ids[1]], Preprocessing(size=16)).images[0])


def test_seg_dataset_needs_masks_unless_told(tmp_path):
    _img(tmp_path / "images" / "x.png")
    with pytest.raises(SamfedError, match="no mask"):
        SegDataset(load_dataset(tmp_path), None, Preprocessing(size=8))
    assert len(SegDataset(load_dataset(tmp_path), None, Preprocessing(size=8), with_masks=False)) == 1


# ---------------------------------------------------------------- partitions


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """400 tiny pairs in three resolutions with lesion fractions spread over 1..60 %."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    resolutions = [(16, 12), (20, 16), (24, 20)]
    for i in range(400):
        w, h = resolutions[i % 3]
        _img(root / "images" / f"s{i:03d}.png", w, h, seed=i)
        _mask(root / "masks" / f"s{i:03d}.png", w, h, frac=float(rng.uniform(0.01, 0.6)))
    return root


def _cramers_v(split: Split, bins: dict) -> float:
    table = np.array([np.bincount([bins[i] for i in c], minlength=5) for c in split.clients], float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "size"])
def test_split_is_disjoint_complete_and_deterministic(big_dir, scheme):
    ds = load_dataset(big_dir)
    fractions = dict(labeled_fraction=0.1, val_fraction=0.1, test_fraction=0.1)
    split = make_split(ds, clients=3, scheme=scheme, seed=5, **fractions)
    ids = split.all_ids()
    assert len(ids) == len(set(ids)) and sorted(ids) == ds.ids
    # 400 ids: 10 % val = 40, 10 % of the other 360 = 36 test, 10 % of the 324 left = 32 labeled
    assert (len(split.val), len(split.test), len(split.server_labeled)) == (40, 36, 32)
    assert all(split.clients)
    assert make_split(ds, clients=3, scheme=scheme, seed=5, **fractions) == split
    assert make_split(ds, clients=3, scheme=scheme, seed=6, **fractions) != split


def test_dirichlet_split_is_skewed_by_lesion_size_and_iid_is_not(big_dir):
    from samfed.data.partition import quantile_bins

    ds = load_dataset(big_dir)
    bins = quantile_bins(lesion_fractions(ds, ds.ids), 5)
    fractions = dict(labeled_fraction=0.1, val_fraction=0.1, test_fraction=0.1)
    iid = make_split(ds, clients=4, scheme="iid", seed=0, **fractions)
    skewed = make_split(ds, clients=4, scheme="dirichlet", alpha=0.1, seed=0, **fractions)
    assert _cramers_v(iid, bins) < 0.2 < 0.4 < _cramers_v(skewed, bins)
    assert [len(c) for c in iid.clients] == [len(iid.clients[0])] * 3 + [len(iid.clients[3])]


def test_size_split_separates_resolutions(big_dir):
    ds = load_dataset(big_dir)
    split = make_split(ds, clients=3, scheme="size", seed=0)
    dominant = []
    for client in split.clients:
        sizes = [image_size(ds[i].image) for i in client]
        top = max(set(sizes), key=sizes.count)
        assert sizes.count(top) / len(sizes) > 0.8
        dominant.append(top)
    assert len(set(dominant)) == 3


def test_split_uses_split_files_and_round_trips(polyp_dir, tmp_path):
    ds = load_dataset(polyp_dir)
    split = make_split(ds, clients=2, labeled_fraction=0.2, scheme="dirichlet", seed=1, test_fraction=0.2)
    assert split.val == sorted(ds.splits["val"])
    assert sorted(split.server_labeled + sum(split.clients, []) + split.test) == sorted(ds.splits["train"])
    loaded = Split.load(split.save(tmp_path / "split.json"))
    assert loaded == split and json.loads((tmp_path / "split.json").read_text())["scheme"] == "dirichlet"
    loaded.validate(ds)
    loaded.clients[0].append("not-there")
    with pytest.raises(SamfedError, match="not-there"):
        loaded.validate(ds)
    (tmp_path / "bad.json").write_text("{]")
    with pytest.raises(SamfedError, match="not a samfed split"):
        Split.load(tmp_path / "bad.json")


def test_split_explicit_ids_override_split_files(polyp_dir):
    ds = load_dataset(polyp_dir)
    pool, val = ds.ids[:16], ds.ids[16:20]
    split = make_split(ds, clients=2, pool_ids=pool, val_ids=val, test_fraction=0.25, seed=0)
    assert split.val == val and len(split.test) == 4
    assert sorted(split.server_labeled + sum(split.clients, []) + split.test) == pool


def test_split_user_errors(tmp_path, polyp_dir):
    _img(tmp_path / "images" / "a.png")
    _img(tmp_path / "images" / "b.png")
    with pytest.raises(SamfedError, match="masks"):
        make_split(tmp_path, clients=1, scheme="dirichlet", val_fraction=0, test_fraction=0)
    with pytest.raises(SamfedError, match="too few"):
        make_split(polyp_dir, clients=30)
    with pytest.raises(SamfedError, match="scheme"):
        make_split(polyp_dir, scheme="random")


# ---------------------------------------------------------------- check and CLI


@pytest.fixture
def broken_dir(tmp_path):
    root = write_synthetic("polyp", 5, tmp_path / "broken", seed=0, size=64)
    ids = sorted(p.stem for p in (root / "images").iterdir())
    data = (root / "images" / f"{ids[0]}.jpg").read_bytes()
    (root / "images" / f"{ids[0]}.jpg").write_bytes(data[: len(data) // 2])  # truncated JPEG
    _img(root / "images" / "unpaired.jpg", 64, 64)  # image without a mask
    _mask(root / "masks" / f"{ids[1]}.jpg", 20, 10)  # mask of the wrong size
    _mask(root / "masks" / f"{ids[2]}.jpg", *image_size(root / "images" / f"{ids[2]}.jpg"), frac=0.0)
    return root, ids


def test_check_dataset_finds_each_problem(broken_dir):
    root, ids = broken_dir
    report = check_dataset(root)
    kinds = {(p.kind, Path(p.path).name) for p in report.problems}
    assert ("corrupt image", f"{ids[0]}.jpg") in kinds
    assert ("unpaired image", "unpaired.jpg") in kinds
    assert ("size mismatch", f"{ids[1]}.jpg") in kinds
    assert ("empty mask", f"{ids[2]}.jpg") in kinds
    assert len(report.errors) == 3 and len(report.warnings) == 1
    assert report.usable == 3 and not report.ok


def test_cli_check_reports_problems_and_exits_non_zero(broken_dir):
    root, ids = broken_dir
    out = run_cli("data", "check", str(root))
    assert out.returncode == 1, out.stderr
    text = out.stdout + out.stderr
    assert "Traceback" not in text
    for expected in (
        "corrupt image",
        "unpaired image",
        "size mismatch",
        f"{ids[0]}.jpg",
        "unpaired.jpg",
        f"{ids[1]}",
    ):
        assert expected in text
    assert "3 usable pairs" in text


def test_cli_check_clean_folder_and_missing_folder(polyp_dir, tmp_path):
    out = run_cli("data", "check", str(polyp_dir))
    assert out.returncode == 0 and "24 usable pairs" in out.stdout, out.stdout + out.stderr
    out = run_cli("data", "check", str(tmp_path / "nope"))
    assert out.returncode == 1 and "Traceback" not in out.stderr and "does not exist" in out.stderr


def test_cli_synth_then_split(tmp_path):
    out = run_cli(
        "data", "synth", "--domain", "skin", "--n", "8", "--size", "48", "--seed", "3", str(tmp_path / "s")
    )
    assert out.returncode == 0, out.stderr
    assert load_dataset(tmp_path / "s").layout == "isic"
    out = run_cli(
        "data", "split", str(tmp_path / "s"), "--clients", "2", "--labeled-fraction", "0.2",
        "--partition", "dirichlet", "--out", str(tmp_path / "split.json"),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "client1" in out.stdout
    split = Split.load(tmp_path / "split.json")
    assert len(split.clients) == 2 and split.scheme == "dirichlet"


def test_light_data_modules_do_not_import_torch():
    code = (
        "import sys, samfed.data, samfed.data.io, samfed.data.readers, samfed.data.partition, "
        "samfed.data.check, samfed.data.synth; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
