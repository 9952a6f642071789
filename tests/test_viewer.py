"""`samfed view`: the probability-map coding against `samfed predict`, bad uploads, the gallery's
folder rules, the model card, host/CLI safety, the shipped page, and a real headless Chromium
(Debian's chromium + chromium-driver, driven by selenium) using the page end to end against a
torch-free `samfed view` process."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from export_helpers import tiny_checkpoint
from PIL import Image
from starlette.testclient import TestClient

from edge.manifest import load_manifest
from edge.predictor import Predictor
from edge.viewer.app import create_app, host_name
from edge.viewer.card import NOTICE
from edge.viewer.gallery import open_gallery
from edge.viewer.segment import FOREGROUND_CODE, pack, segment, unpack
from export.build import export_student
from export.manifest_writer import sign_export
from samfed.data import load_dataset, read_image, read_mask
from samfed.errors import SamfedError

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(os.environ.get("SAMFED_TEST_ARTIFACTS", ROOT / "tmp" / "artifacts"))
BLOCKED = ["torch", "torchvision", "onnx", "nncf", "scipy", "safetensors", "timm", "flwr", "segment_anything"]
PAGE = {"X-Samfed-Viewer": "1"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory, polyp_dir) -> Path:
    """unet-s at 64 px exported to ONNX Runtime and OpenVINO, FP32 and INT8."""
    tmp = tmp_path_factory.mktemp("viewer")
    tiny_checkpoint("unet-s", "batch", polyp_dir, tmp / "run" / "global")
    export_student(
        tmp / "run", tmp / "export", int8=True, backend="all", n_calib=8, n_heldout=4, threads=1,
        latency_iters=2, nncf_subset=4, log=lambda _: None,
    )  # fmt: skip
    return tmp / "export"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, polyp_dir) -> Path:
    """Three endoscopy-like JPEGs of different sizes (upscaled synthetic images)."""
    out = tmp_path_factory.mktemp("photos")
    sizes = [(320, 256), (250, 300), (200, 150)]
    for k, (s, size) in enumerate(zip(load_dataset(polyp_dir).samples[:3], sizes, strict=True)):
        Image.fromarray(read_image(s.image)).resize(size, Image.BILINEAR).save(
            out / f"case{k}.jpg", quality=92
        )
    return out


@pytest.fixture(scope="module")
def predicted(exported, photos, tmp_path_factory) -> Path:
    """`samfed predict` of the photos with the export's recommended model (full-size overlays)."""
    out = tmp_path_factory.mktemp("predicted") / "out"
    res = run_cli(
        "predict", str(exported), str(photos), "--out", str(out), "--overlay-size", "0", "--threads", "1"
    )
    assert res.returncode == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def predictor(exported) -> Predictor:
    return Predictor.from_model(exported, threads=1, batch=1)


def client(predictor: Predictor, gallery=None, **kw) -> TestClient:
    return TestClient(create_app(predictor, gallery, **kw), base_url="http://127.0.0.1:8765")


def csv_rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in csv.DictReader((out / "predictions.csv").read_text().splitlines())}


# --- the probability map the page thresholds -----------------------------------------------------


def test_map_codes_reproduce_the_predict_mask_and_row(predictor, photos, predicted):
    rows = csv_rows(predicted)
    for k in range(3):
        image = read_image(photos / f"case{k}.jpg")
        result, q = unpack(pack(*segment(predictor, image, f"case{k}")))
        assert q.shape == image.shape[:2] == (result["map_height"], result["map_width"])
        mask = read_mask(predicted / "masks" / f"case{k}.png")
        assert 0 < mask.sum() < mask.size  # the tiny model's masks are not trivial
        np.testing.assert_array_equal(q >= FOREGROUND_CODE, mask)
        row = rows[f"case{k}"]
        assert result["stats"]["area_px"] == int(row["area_px"])
        assert result["stats"]["mean_confidence"] == pytest.approx(float(row["mean_confidence"]), abs=1e-4)


def test_map_codes_are_exact_at_any_model_threshold_and_follow_the_probability(predictor, photos):
    image = read_image(photos / "case0.jpg")
    base = Predictor(predictor.session, predictor.prep, 0.37, 1)
    pred = base.predict([image])[0]
    _, q = segment(base, image)
    np.testing.assert_array_equal(q >= FOREGROUND_CODE, pred.mask)
    ideal = np.interp(pred.prob, (0, 0.37, 1), (0, 127.5, 255))  # the coding applied at full size
    assert np.abs(q - ideal).max() <= 2.0
    # another threshold as the page applies it: wrong only within a few codes' width of it
    t = 0.6
    page = q >= np.floor(127.5 + 127.5 * (t - 0.37) / (1 - 0.37) - 0.5) + 1
    wrong = page != (pred.prob >= t)
    assert wrong.mean() < 0.01 and np.all(np.abs(pred.prob[wrong] - t) <= 3 * (1 - 0.37) / 127.5)


def test_large_image_map_is_capped_but_statistics_stay_full_size(predictor, photos):
    big = np.asarray(Image.open(photos / "case0.jpg").resize((2500, 1200)))
    result, q = segment(predictor, big)
    assert (result["map_width"], result["map_height"]) == (2048, 983)
    pred = predictor.predict([big])[0]
    assert result["stats"]["area_px"] == int(pred.mask.sum()) and result["stats"]["width"] == 2500
    assert q.shape == (983, 2048) and abs((q >= FOREGROUND_CODE).mean() - pred.mask.mean()) < 0.01


# --- uploads ---------------------------------------------------------------------------------------


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_bad_uploads_get_4xx_with_one_sentence_and_the_server_keeps_going(predictor, photos):
    c = client(predictor, max_upload_bytes=300_000, max_pixels=200_000)
    jpeg = (photos / "case0.jpg").read_bytes()
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, "TIFF")
    cases = {
        "empty": (b"", 400, "is empty"),
        "text": (b"hello, not an image", 415, "not an image"),
        "truncated": (jpeg[: len(jpeg) // 2], 400, "corrupt or truncated"),
        "tiff": (tiff.getvalue(), 415, "TIFF"),
        "too many pixels": (_png(np.zeros((500, 500, 3), np.uint8)), 413, "500 x 500 px"),
        "too large": (os.urandom(400_000), 413, "larger than the viewer's limit"),
    }
    for what, (body, status, needle) in cases.items():
        r = c.post("/api/segment", content=body, headers=PAGE | {"X-File-Name": "x%20y.jpg"})
        assert r.status_code == status, what
        assert needle in r.json()["error"] and "x y.jpg" in r.json()["error"], what
    r = c.post("/api/segment", content=jpeg)  # not from the page (a cross-site form cannot set the header)
    assert r.status_code == 403
    r = c.post("/api/segment", content=jpeg, headers=PAGE)
    assert r.status_code == 200 and unpack(r.content)[0]["stats"]["width"] == 320
    assert c.get("/api/segment").status_code == 405 and c.get("/../../etc/passwd").status_code == 404


def test_upload_is_decoded_upright_like_read_image(predictor, tmp_path):
    src = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: displayed 90 x 60
    buf = io.BytesIO()
    src.save(buf, "JPEG", exif=exif)
    r = client(predictor).post("/api/segment", content=buf.getvalue(), headers=PAGE)
    (tmp_path / "r.jpg").write_bytes(buf.getvalue())
    h, w = read_image(tmp_path / "r.jpg").shape[:2]
    meta, q = unpack(r.content)
    assert (meta["width"], meta["height"]) == (w, h) == (90, 60) and q.shape == (60, 90)


def test_security_headers_and_foreign_host_refused(predictor):
    c = client(predictor)
    r = c.get("/")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert c.get("/", headers={"host": "evil.example:8765"}).status_code == 400  # DNS rebinding
    assert c.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert host_name("[::1]:80") == "::1" and host_name("LOCALHOST") == "localhost"
    remote = TestClient(create_app(predictor, allowed_hosts=None), base_url="http://10.1.2.3:8765")
    assert remote.get("/api/card").status_code == 200


def test_page_loads_nothing_from_the_internet():
    static = ROOT / "edge" / "viewer" / "static"
    text = " ".join(p.read_text() for p in static.iterdir())
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), "external URL in the page"
    assert "innerHTML" not in text  # manifest values and file names are inserted as text


# --- model card ------------------------------------------------------------------------------------


def test_model_card_reports_the_manifest(predictor, exported):
    card = client(predictor).get("/api/card").json()
    man = load_manifest(exported).data
    assert card["notice"] == NOTICE and "not a medical device" in NOTICE.lower()
    assert card["in_use"]["artefact"] == man["recommended"]
    assert card["in_use"]["precision"] == man["artefacts"][man["recommended"]]["precision"]
    rows = {a["key"]: a for a in card["artefacts"]}
    assert set(rows) == {"onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8"}
    for key, a in rows.items():
        assert a["dice_vs_gt"] == man["artefacts"][key]["parity"]["dice_vs_gt"]
        assert a["p50_ms"] == man["artefacts"][key]["latency"]["1"]["p50_ms"]
    assert rows["openvino-int8"]["dice_vs_fp32"] is not None
    assert card["data"]["heldout"]["n"] == 4 and card["data"]["heldout"]["has_masks"]
    assert card["model"]["arch"] == "unet-s" and card["gallery"] is False


def test_bare_onnx_model_card_says_unverified(exported):
    with pytest.warns(UserWarning, match="no manifest"):
        bare = Predictor.from_model(exported / "model_fp32.onnx", threads=1, batch=1)
    card = client(bare).get("/api/card").json()
    assert card["verified"] is False and card["artefacts"] == []


# --- gallery ---------------------------------------------------------------------------------------


def test_gallery_serves_only_its_own_files(predictor, predicted, tmp_path):
    folder = tmp_path / "out"
    shutil.copytree(predicted, folder)
    (tmp_path / "secret.png").write_bytes(_png(np.zeros((4, 4, 3), np.uint8)))
    c = client(predictor, open_gallery(folder))
    rows = c.get("/api/gallery").json()["rows"]
    assert [r["id"] for r in rows] == ["case0", "case1", "case2"] and all(r["overlay"] for r in rows)
    r = c.get("/api/gallery/overlay", params={"id": "case1"})
    assert r.status_code == 200 and r.content == (folder / "overlays" / "case1.png").read_bytes()
    for kind, image_id in [
        ("overlay", "../secret"),
        ("mask", "/etc/passwd"),
        ("source", "case1"),
        ("mask", "x"),
    ]:
        assert c.get(f"/api/gallery/{kind}", params={"id": image_id}).status_code == 404
    (folder / "masks" / "case2.png").unlink()
    (folder / "masks" / "case2.png").symlink_to(tmp_path / "secret.png")  # replaced after opening
    assert c.get("/api/gallery/mask", params={"id": "case2"}).status_code == 404


def test_gallery_refuses_folders_that_are_not_predict_output(predicted, tmp_path):
    with pytest.raises(SamfedError, match="no predictions.csv"):
        open_gallery(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(predicted, bad)
    text = (bad / "predictions.csv").read_text()
    for needle, edit in {
        "columns": text.replace("area_px", "area"),
        "line 2": text.replace("case0,", "../../etc/passwd,", 1),
        "line 3": text.replace("case1,", "case0,", 1),
        "out of range": re.sub(r"case2,(\d+),(\d+),\d+", r"case2,\1,\2,99999999", text),
    }.items():
        (bad / "predictions.csv").write_text(edit)
        with pytest.raises(SamfedError, match=needle):
            open_gallery(bad)
    (bad / "predictions.csv").unlink()
    (bad / "predictions.csv").symlink_to(predicted / "predictions.csv")  # leads out of the folder
    with pytest.raises(SamfedError, match="no predictions.csv inside"):
        open_gallery(bad)


# --- command line ----------------------------------------------------------------------------------


def test_cli_remote_host_flag_busy_port_bad_folder_and_trusted_key(exported, tmp_path):
    res = run_cli("view", str(exported), "--host", "0.0.0.0")
    assert res.returncode == 1 and "--allow-remote" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("view", str(exported), "--folder", str(tmp_path))
    assert res.returncode == 1 and "no predictions.csv" in res.stderr
    signed = tmp_path / "signed"
    shutil.copytree(exported, signed)
    fp = sign_export(signed, tmp_path / "key.pem")
    res = run_cli("view", str(signed), "--trusted-key", "SHA256:" + "0" * 64)
    assert res.returncode == 1 and "not by a trusted key" in res.stderr
    with Viewer(signed, "--host", "0.0.0.0", "--allow-remote", "--port", "0", "--trusted-key", fp) as v:
        assert "without a password" in " ".join(v.stderr_text().split())
        port = v.url.rsplit(":", 1)[1].strip("/")
        res = run_cli("view", str(exported), "--port", port)
        assert res.returncode == 1 and f"Port {port} on 127.0.0.1 is in use" in res.stderr
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/card", timeout=30) as answer:
            assert json.loads(answer.read())["model"]["signer"] == fp


@pytest.mark.slow
def test_wheel_ships_the_page(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("samfed-*.whl"))).namelist()
    for f in ("index.html", "viewer.js", "viewer.css"):
        assert f"edge/viewer/static/{f}" in names
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(next(tmp_path.glob("samfed-*.whl"))).read(meta).decode()
    requires = [line for line in text.splitlines() if line.startswith("Requires-Dist:")]
    core = [line for line in requires if "extra ==" not in line]
    edge = [line for line in requires if 'extra == "edge"' in line]
    for dep in ("starlette", "uvicorn"):
        assert any(dep in line for line in core) and any(dep in line for line in edge)


# --- a real browser against a torch-free `samfed view` ---------------------------------------------


class Viewer:
    """`samfed view EXPORT ARGS` in a subprocess with torch (and the training stack) unimportable,
    run from an empty folder with an empty TMPDIR; `url` once it listens. Stopped with Ctrl-C."""

    def __init__(self, export: Path, *args: str, workdir: Path | None = None) -> None:
        self.argv = ["view", str(export), *args]
        self.workdir = workdir
        self.lines: queue.Queue[str] = queue.Queue()
        self.url = ""

    def __enter__(self) -> Viewer:
        code = textwrap.dedent(f"""
            import sys
            for name in {BLOCKED!r}:
                sys.modules[name] = None  # any `import torch` now raises ImportError
            sys.path.insert(0, {str(ROOT)!r})
            from cli import main
            main({self.argv!r})
        """)
        env = os.environ | {"PYTHONUNBUFFERED": "1"}
        if self.workdir is not None:
            (self.workdir / "tmp").mkdir(parents=True)
            env["TMPDIR"] = str(self.workdir / "tmp")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=self.workdir or ROOT, env=env, start_new_session=True,
        )  # fmt: skip
        self.err: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(x) for x in self.proc.stdout], daemon=True).start()
        threading.Thread(target=lambda: [self.err.append(x) for x in self.proc.stderr], daemon=True).start()
        deadline = time.monotonic() + 120
        while not self.url:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.__exit__()
                raise AssertionError(f"samfed view did not start: {self.stderr_text()}") from None
            if m := re.search(r"open (http://\S+)", line):
                self.url = m.group(1)
        return self

    def stderr_text(self) -> str:
        time.sleep(0.2)
        return "".join(self.err)

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # Ctrl-C
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@contextmanager
def chromium(downloads: Path):
    """Headless Debian Chromium through Debian's chromedriver (no driver or browser download)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    assert not missing, f"{missing} missing: apt-get install chromium chromium-driver (as .ci/run does)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
        f"--user-data-dir={downloads.parent / 'chromium-profile'}",
    ):  # fmt: skip
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def _overlay_digest(driver) -> str:
    return driver.execute_script("return document.getElementById('overlay').toDataURL()")


def _segment_requests(driver) -> int:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/api/segment')).length"
    )


@pytest.mark.slow
def test_browser_upload_threshold_downloads_gallery_and_card(exported, photos, predicted, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    work = tmp_path / "work"
    rows = csv_rows(predicted)
    with Viewer(exported, "--port", "0", "--threads", "1", "--folder", str(predicted), workdir=work) as v:
        with chromium(downloads) as driver:
            driver.get(v.url)
            _wait(driver, lambda d: d.execute_script("return document.body.dataset.ready") == "1")
            find = driver.find_element
            # upload through the page's file input; the overlay appears with predict's area
            find(By.ID, "file-input").send_keys(str(photos / "case0.jpg"))
            _wait(driver, lambda d: find(By.ID, "detail").get_attribute("data-upload-to-overlay-ms"))
            assert find(By.ID, "area-px").get_attribute("data-value") == rows["case0"]["area_px"]
            pct = 100 * float(rows["case0"]["area_fraction"])
            assert find(By.ID, "area-pct").text == f"{pct:.2f}"
            assert float(find(By.ID, "confidence").text) == pytest.approx(
                float(rows["case0"]["mean_confidence"]), abs=2e-3
            )
            # downloads: the mask equals predict's mask PNG, the overlay has the image's size
            find(By.ID, "download-mask").click()
            find(By.ID, "download-overlay").click()
            _wait(
                driver,
                lambda d: all((downloads / f"case0_{k}.png").is_file() for k in ("mask", "overlay")),
                30,
            )
            time.sleep(0.5)
            np.testing.assert_array_equal(
                read_mask(downloads / "case0_mask.png"), read_mask(predicted / "masks" / "case0.png")
            )
            assert Image.open(downloads / "case0_overlay.png").size == (320, 256)
            # moving the threshold slider redraws the overlay in the page, without a request
            before, requests = _overlay_digest(driver), _segment_requests(driver)
            slider = find(By.ID, "threshold")
            slider.click()
            for _ in range(20):
                slider.send_keys(Keys.ARROW_RIGHT)
            threshold = float(find(By.ID, "threshold-value").text)
            assert threshold > 0.6
            assert _overlay_digest(driver) != before and _segment_requests(driver) == requests
            assert int(find(By.ID, "area-px").get_attribute("data-value")) < int(rows["case0"]["area_px"])
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(tmp_path / "viewer.png"))
            shutil.copy(tmp_path / "viewer.png", ARTIFACTS / "viewer-browser-test.png")
            print(f"screenshot: {ARTIFACTS / 'viewer-browser-test.png'}")
            # bad files are messages on the page (an empty drop too); the next good one still works
            (tmp_path / "notes.jpg").write_text("not an image")
            (tmp_path / "empty.png").write_bytes(b"")
            bad = [tmp_path / "notes.jpg", tmp_path / "empty.png", photos / "case1.jpg"]
            find(By.ID, "file-input").send_keys("\n".join(map(str, bad)))
            _wait(driver, lambda d: find(By.ID, "detail").get_attribute("data-name") == "case1.jpg")
            driver.execute_script(
                "document.getElementById('drop').dispatchEvent("
                "new DragEvent('drop', {dataTransfer: new DataTransfer(), bubbles: true, cancelable: true}))"
            )
            messages = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#messages li")]
            assert any("notes.jpg is not an image" in m for m in messages), messages
            assert any("empty.png is empty" in m for m in messages), messages
            assert any("Nothing to analyse" in m for m in messages), messages
            assert find(By.ID, "area-px").get_attribute("data-value") == rows["case1"]["area_px"]
            # gallery: sorted by area, click opens one
            find(By.ID, "gallery-tab").click()
            figures = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#gallery-grid figure"))
            by_area = sorted(rows, key=lambda i: -int(rows[i]["area_px"]))
            assert [f.get_attribute("data-id") for f in figures] == by_area
            figures[0].click()
            _wait(
                driver,
                lambda d: (
                    d.execute_script("return document.getElementById('gallery-overlay').naturalWidth") > 0
                ),
            )
            assert find(By.ID, "gallery-name").text == by_area[0]
            # model card
            driver.find_element(By.CSS_SELECTOR, "[data-tab=card]").click()
            card = find(By.ID, "card-body").text
            assert "Not a medical device" in card and "openvino-int8" in card and "INT8" in card
        assert v.proc.poll() is None  # still serving
    assert v.proc.returncode is not None
    # importing onnxruntime writes a session id (.ses, 51 bytes) to TMPDIR; nothing else may appear
    leftovers = [
        p for p in work.rglob("*") if p.is_file() and not (p.name == ".ses" and p.stat().st_size < 100)
    ]
    assert leftovers == [], f"the viewer wrote files: {leftovers}"  # uploads stay in memory
