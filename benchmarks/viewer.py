"""Upload-to-overlay latency of `samfed view` for full-size (1920 px wide) JPEGs.

Example (run from the repository root)::

    python benchmarks/viewer.py --model EXPORT_DIR --images ../shared/data/kvasir-seg/images \
        --threads 2 --out bench_out/viewer

Starts `samfed view MODEL --backend openvino --precision int8 --threads N` (torch-free, as on a
clinic workstation) and measures, per upload of each image:

- server side: the HTTP round trip of POST /api/segment (upload, decode, model, probability map
  PNG, JSON), and the server's own breakdown (decode, model, total);
- in the browser (headless Chromium, unless --no-browser): from choosing the file in the page's
  file input to the overlay drawn on the canvas (the page's own `performance.now()` stamps).

Images: the 1920 px wide JPEGs of --images (Kvasir-SEG's largest), else synthetic endoscopy-like
1920 x 1080 JPEGs. Writes viewer.json + viewer.md under --out; target: p50 <= 300 ms.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge.viewer.segment import unpack  # noqa: E402
from export.latency import cpu_info  # noqa: E402

TARGET_MS = 300.0
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH = 1920


def full_size_images(folder: Path | None, n: int, tmp: Path) -> tuple[list[Path], str]:
    """Up to n JPEGs exactly WIDTH px wide from `folder`, else synthetic ones; (paths, description)."""
    from PIL import Image

    if folder is not None and folder.is_dir():
        wide = [p for p in sorted(folder.glob("*.jpg")) if Image.open(p).size[0] == WIDTH]
        if wide:
            picked = [wide[i] for i in np.linspace(0, len(wide) - 1, min(n, len(wide))).round().astype(int)]
            return picked, f"{len(picked)} of the {len(wide)} {WIDTH} px wide JPEGs in {folder}"
    from samfed.data.synth import write_synthetic

    data = write_synthetic("polyp", n, tmp / "synth", seed=0, size=480)
    paths = []
    for k, src in enumerate(sorted((data / "images").glob("*.jpg"))[:n]):
        out = tmp / f"full{k}.jpg"
        Image.open(src).convert("RGB").resize((WIDTH, 1080), Image.BICUBIC).save(out, quality=95)
        paths.append(out)
    return paths, f"{len(paths)} synthetic {WIDTH} x 1080 JPEGs (upscaled endoscopy-like images)"


class Viewer:
    """A `samfed view` process on a free loopback port."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "view", *argv, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=os.environ | {"PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
        self.url = ""
        for line in self.proc.stdout:
            if m := re.search(r"open (http://\S+)", line):
                self.url = m.group(1)
                break
        if not self.url:
            raise SystemExit(f"samfed view did not start: {self.proc.stderr.read()}")
        self.host, self.port = self.url[len("http://") :].rstrip("/").rsplit(":", 1)

    def post(self, data: bytes) -> tuple[float, dict]:
        """One upload: (round trip ms, the server's answer)."""
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/api/segment", body=data, headers={"X-Samfed-Viewer": "1"})
        resp = conn.getresponse()
        raw = resp.read()
        ms = (time.perf_counter() - t0) * 1e3
        conn.close()
        if resp.status != 200:
            raise SystemExit(f"upload failed ({resp.status}): {json.loads(raw).get('error')}")
        return ms, unpack(raw)[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=30)


def server_side(viewer: Viewer, images: list[Path], iters: int) -> dict:
    """Round trip and server timings, `iters` uploads of each image after one warm-up each."""
    rows: dict[str, list[float]] = {
        "round_trip": [],
        "server": [],
        "server_cpu": [],
        "decode": [],
        "model": [],
    }
    for path in images:
        data = path.read_bytes()
        viewer.post(data)  # warm-up
        for _ in range(iters):
            ms, body = viewer.post(data)
            rows["round_trip"].append(ms)
            for k in ("server", "server_cpu", "decode", "model"):
                rows[k].append(body["timing_ms"][k])
    return {k: summarize(v) for k, v in rows.items()}


def in_browser(viewer: Viewer, images: list[Path], iters: int) -> dict:
    """Upload-to-overlay ms measured by the page, `iters` uploads of each image after one warm-up."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="viewer-bench-chromium-")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    stages: dict[str, list[float]] = {"response": [], "image": [], "overlay": []}
    try:
        driver.get(viewer.url)
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready"))
        done = 0
        for path in images:
            for k in range(iters + 1):
                driver.find_element(By.ID, "file-input").send_keys(str(path))
                done += 1
                WebDriverWait(driver, 60).until(
                    lambda d, n=done: d.find_element(By.ID, "detail").get_attribute("data-analysed") == str(n)
                )
                if k:  # the first upload of each image is a warm-up
                    measured = json.loads(driver.find_element(By.ID, "detail").get_attribute("data-stages"))
                    for key, values in stages.items():
                        values.append(measured[key])
    finally:
        driver.quit()
    return {
        "upload_to_overlay": summarize(stages["overlay"]),
        "response": summarize(stages["response"]),
        "image": summarize(stages["image"]),
    }


def summarize(values: list[float]) -> dict:
    v = np.asarray(values)
    return {
        "n": int(v.size),
        "p50_ms": round(float(np.percentile(v, 50)), 1),
        "p95_ms": round(float(np.percentile(v, 95)), 1),
        "mean_ms": round(float(v.mean()), 1),
    }


def markdown(report: dict) -> str:
    lines = [
        "# samfed view: upload-to-overlay latency",
        "",
        f"`{report['command']}`",
        "",
        f"Model {report['artefact']} ({report['backend']}, {report['threads']} threads), images: "
        f"{report['images']}; CPU {report['cpu']['model']} ({report['cpu']['usable_cpus']} usable, "
        f"load {report['cpu']['load_avg_1m']}).",
        "",
        "| measured | n | p50 | p95 | mean |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "round_trip": "server side: HTTP round trip of one upload",
        "server": "server: decode + model + map, inside the server",
        "server_cpu": "server: CPU time of the same (all threads; steadier on a busy machine)",
        "decode": "server: JPEG decode",
        "model": "server: model call",
        "upload_to_overlay": "**in the browser: file chosen to overlay drawn**",
        "response": "in the browser: file chosen to answer received",
        "image": "in the browser: ... and the image decoded for display",
    }
    for part in ("server_side", "browser"):
        for key, s in report.get(part, {}).items():
            lines.append(
                f"| {names[key]} | {s['n']} | {s['p50_ms']} ms | {s['p95_ms']} ms | {s['mean_ms']} ms |"
            )
    lines += ["", f"Target: p50 <= {TARGET_MS:g} ms upload to overlay."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="export folder (from samfed export --int8)")
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "kvasir-seg" / "images")
    ap.add_argument("--n-images", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20, help="uploads per image (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="openvino")
    ap.add_argument("--precision", default="int8")
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "viewer")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        images, described = full_size_images(args.images, args.n_images, Path(tmp))
        viewer = Viewer(
            [
                str(args.model),
                "--backend",
                args.backend,
                "--precision",
                args.precision,
                "--threads",
                str(args.threads),
            ]
        )
        try:
            card = json.loads(http_get(viewer, "/api/card"))
            report = {
                "command": "python " + " ".join(sys.argv),
                "artefact": card["in_use"]["artefact"],
                "backend": card["in_use"]["backend"],
                "threads": card["in_use"]["threads"],
                "images": described,
                "cpu": cpu_info(),
                "server_side": server_side(viewer, images, args.iters),
            }
            if not args.no_browser:
                report["browser"] = in_browser(viewer, images, args.iters)
        finally:
            viewer.stop()
    (args.out / "viewer.json").write_text(json.dumps(report, indent=2))
    (args.out / "viewer.md").write_text(markdown(report))
    print(markdown(report))


def http_get(viewer: Viewer, path: str) -> bytes:
    conn = http.client.HTTPConnection(viewer.host, int(viewer.port), timeout=30)
    conn.request("GET", path)
    data = conn.getresponse().read()
    conn.close()
    return data


if __name__ == "__main__":
    main()
