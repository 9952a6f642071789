"""Deterministic synthetic datasets: dermoscopy-like skin lesions and endoscopy-like polyps.

Each image comes from its own generator seeded by ``(seed, index)``, so image ``i`` is the same
whatever ``n`` is. Only numpy and PIL (works on the light install); 10-20 ms of CPU per 256 px image.

Polyps look like what SAM-family models segment: one compact raised dome (3-40 % of the image),
lit from one side, with a shadow at its base, pit texture and specular highlights, on a wall with
haustral folds, faint vessels, wet highlights and flat reddened or pale patches (distractors that
colour alone cannot tell from a polyp; some polyps have the wall's colour and differ only in
relief). Images are mildly blurred. They come from three simulated endoscopes with different
resolutions and colour tones, so the image-size partition (`samfed data split --partition size`)
separates devices as in Kvasir-SEG. Skin lesions span ~1 % to ~50 % of the image, some with low
contrast and blurred borders, among freckles and hair.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from samfed.errors import SamfedError
from samfed.fileio import atomic_write_text

DOMAINS = ("skin", "polyp")
GENERATOR_VERSION = 2
MAX_N = 100_000
POLYP_AREA = (0.03, 0.4)  # log-uniform range of the polyp's share of the image
MAX_SIZE = 2048  # a 2048 px polyp image (3072x2560 px) needs about 1 GB while it is drawn


@dataclass(frozen=True)
class Endoscope:
    """A simulated endoscope: resolution relative to `size`, colour tone and border style."""

    name: str
    aspect: tuple[float, float]  # (width, height) as multiples of size
    prob: float
    tone: tuple[float, float, float]
    inset_box: float  # probability of the scope-position inset box in the lower-left corner


ENDOSCOPES = (
    Endoscope("A", (1.17, 1.0), 0.5, (1.0, 1.0, 1.0), 0.0),
    Endoscope("B", (1.0, 1.0), 0.3, (1.08, 0.9, 0.86), 0.6),
    Endoscope("C", (1.5, 1.25), 0.2, (0.9, 0.99, 1.1), 0.2),
)


def polyp_resolutions(size: int) -> list[tuple[int, int]]:
    """The (width, height) of each simulated endoscope at `size`."""
    return [_even(e.aspect[0] * size, e.aspect[1] * size) for e in ENDOSCOPES]


def _even(w: float, h: float) -> tuple[int, int]:
    return 2 * round(w / 2), 2 * round(h / 2)


def _noise(rng: np.random.Generator, h: int, w: int, scale: float, octaves: int = 1) -> np.ndarray:
    """Smooth noise with unit std, features about `scale` px; (h, w) float32."""
    out = None
    amp = 1.0
    for _ in range(octaves):
        gh, gw = max(2, math.ceil(h / scale) + 1), max(2, math.ceil(w / scale) + 1)
        grid = rng.standard_normal((gh, gw), dtype=np.float32) * np.float32(amp)
        layer = np.asarray(Image.fromarray(grid, "F").resize((w, h), Image.BICUBIC))
        out = layer.copy() if out is None else out.__iadd__(layer)
        amp *= 0.5
        scale = max(scale / 2, 1.0)
    out /= out[::3, ::3].std() + 1e-6
    return out


def _blob(rng, h, w, cy, cx, r, irregular, lobes, spread: float = 0.55) -> np.ndarray:
    """Normalised radius field q (q < 1 inside) of an irregular multi-lobed blob of radius ~r; (h, w).

    Lobes after the first are offset by ~`spread` * r from the centre.

    q is smooth, so it is computed on a half-resolution grid and upsampled bilinearly (4x faster).
    """
    hh, ww = max(2, (h + 1) // 2), max(2, (w + 1) // 2)
    # pixel centres of the half grid in full-resolution coordinates, as PIL's resize maps them
    ys = ((np.arange(hh, dtype=np.float32) + 0.5) * (h / hh) - 0.5)[:, None]
    xs = ((np.arange(ww, dtype=np.float32) + 0.5) * (w / ww) - 0.5)[None, :]
    q = np.full((hh, ww), np.inf, np.float32)
    for j in range(lobes):
        rj = r if j == 0 else r * rng.uniform(0.45, 0.8)
        oy, ox = (0.0, 0.0) if j == 0 else rng.normal(0, spread * r, 2)
        ang, ecc = rng.uniform(0, math.pi), math.sqrt(rng.uniform(1.0, 1.8))
        dy, dx = ys - np.float32(cy + oy), xs - np.float32(cx + ox)
        u = (dx * math.cos(ang) + dy * math.sin(ang)) / ecc
        v = (dy * math.cos(ang) - dx * math.sin(ang)) * ecc
        theta = np.arctan2(v, u)
        rad = np.ones_like(theta)
        for k in range(2, 7):
            rad += rng.uniform(0, irregular) / k * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
        q = np.minimum(q, np.hypot(u, v) / (rj * np.maximum(rad, 0.3)))
    return np.asarray(Image.fromarray(q, "F").resize((w, h), Image.BILINEAR))


def _soft(q: np.ndarray, r: float, blur: float) -> np.ndarray:
    """Alpha of a blob with a border blurred over ~`blur` px; alpha > 0.5 exactly where q < 1."""
    return 1.0 / (1.0 + np.exp(np.clip(-(1.0 - q) * r / max(blur, 0.3), -30, 30)))


def _lesion_radius(rng, h, w, lo, hi) -> float:
    """Radius for a log-uniform area fraction in [lo, hi]."""
    frac = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    return math.sqrt(frac * h * w / math.pi)


def _rgb(*v: float) -> np.ndarray:
    """A colour (or per-channel factor) as a float32 (3,) array, so image maths stays float32."""
    return np.asarray(v, np.float32)


def _finish(rng, img: np.ndarray, noise_std: float) -> np.ndarray:
    img += (rng.standard_normal(img.shape[:2], dtype=np.float32) * np.float32(noise_std))[..., None]
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def skin(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One dermoscopy-like image: (size, size, 3) uint8 and its (size, size) bool lesion mask."""
    h = w = size
    s = size / 256
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform()
    tone = (_rgb(238, 204, 184) * (1 - t) + _rgb(186, 132, 104) * t) * rng.uniform(0.92, 1.05, 3)
    tone = tone.astype(np.float32)
    shade = (1 + 0.05 * _noise(rng, h, w, 64 * s, 3)) * (1 + 0.025 * _noise(rng, h, w, 3 * s))  # + texture
    img = tone * shade[..., None]

    r = _lesion_radius(rng, h, w, 0.01, 0.5)
    cy, cx = (np.array([h, w]) / 2 + rng.normal(0, 0.12 * size, 2)).tolist()
    q = _blob(rng, h, w, cy, cx, r, rng.uniform(0.2, 1.0), int(rng.integers(1, 4)))
    q = q + rng.uniform(0.5, 4.0) * s / r * _noise(rng, h, w, 6 * s)  # ragged border, ~0.5-4 px
    mask = q < 1
    low_contrast = rng.uniform() < 0.25
    contrast = rng.uniform(0.18, 0.35) if low_contrast else rng.uniform(0.45, 0.95)
    dark = _rgb(92, 58, 44) * np.float32(rng.uniform(0.6, 1.5))
    # lesion = skin blended towards a mottled pigment, darker in the core, with a blurred border
    pigment = (1 + 0.18 * _noise(rng, h, w, max(r / 3, 2), 2)) * (0.7 + 0.4 * np.clip(q, 0, 1))
    a = _soft(q, r, rng.uniform(1.0, 8.0) * s) * np.float32(contrast)
    img = img * (1 - a)[..., None] + dark * (a * pigment)[..., None]
    if rng.uniform() < 0.3:  # blue-grey veil in part of the lesion
        veil = np.clip(_noise(rng, h, w, max(r, 4)), 0, 1) * (0.35 / contrast) * a
        img = img * (1 - veil)[..., None] + _rgb(120, 125, 150) * veil[..., None]

    for _ in range(int(rng.poisson(3))):  # freckles: small dark spots outside the lesion
        fr = rng.uniform(1.5, 5) * s
        fy, fx = rng.uniform(0, h), rng.uniform(0, w)
        win = (
            slice(max(0, int(fy - 3 * fr)), int(fy + 3 * fr) + 1),
            slice(max(0, int(fx - 3 * fr)), int(fx + 3 * fr) + 1),
        )
        fq = np.hypot(yy[win] - fy, xx[win] - fx) / fr
        fa = (_soft(fq, fr, 1.5 * s) * rng.uniform(0.2, 0.5))[..., None]
        img[win] = img[win] * (1 - fa) + fa * dark

    if rng.uniform() < 0.6:  # hair strands over everything
        hair = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(hair)
        for _ in range(int(rng.integers(1, 25))):
            p0 = rng.uniform(-0.1, 1.1, 2) * size
            d = rng.normal(0, 1, 2)
            d = d / (np.linalg.norm(d) + 1e-6) * rng.uniform(0.3, 1.0) * size
            bend = rng.normal(0, 0.15 * size, 2)
            pts = [tuple(p0 + k * d + 4 * k * (1 - k) * bend) for k in np.linspace(0, 1, 12)]
            draw.line(pts, fill=int(rng.uniform(150, 255)), width=max(1, round(rng.uniform(0.8, 2.5) * s)))
        ha = np.asarray(hair, np.float32)[..., None] / 255 * 0.85
        img = img * (1 - ha) + ha * _rgb(40, 28, 22) * np.float32(rng.uniform(0.5, 1.3))

    rr = np.hypot(yy - h / 2, xx - w / 2) / (size / 2)
    img *= (1 - rng.uniform(0, 0.35) * rr**2)[..., None]  # vignetting
    if rng.uniform() < 0.3:  # dermatoscope's black circular border
        ring = rr > rng.uniform(1.0, 1.35)
        img[ring] = rng.uniform(0, 12)
        mask &= ~ring
    return _finish(rng, img, 2.5), mask


def _polyp_radius(rng, h, w) -> float:
    """Radius for a log-uniform polyp area fraction in [POLYP_AREA]."""
    return _lesion_radius(rng, h, w, *POLYP_AREA)


def _mucosa(rng, h, w, s, tone) -> tuple[np.ndarray, np.ndarray]:
    """Lit colon wall (h, w, 3): colour, illumination falloff, broad folds, fine texture; and the
    (h, w) alpha of its faint vessels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = rng.uniform(0, 1, 2)  # wall colour between pale pink, deep red and orange
    base = _rgb(222, 142, 128) * (1 - t[0]) + _rgb(186, 72, 58) * t[0]
    base = base * (1 - 0.4 * t[1]) + _rgb(212, 128, 72) * 0.4 * t[1]
    base = base * rng.uniform(0.92, 1.06, 3).astype(np.float32) * tone
    ly, lx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    d = np.hypot((yy - ly) / h, (xx - lx) / w)
    light = 1.12 - rng.uniform(0.5, 0.9) * d**1.5
    light *= 1 + 0.06 * _noise(rng, h, w, 70 * s, 2)
    # haustral folds: partial arcs around the (off-centre) lumen, a soft shadow with a lit inner shoulder
    rho = np.hypot(yy - h * rng.uniform(-0.3, 1.3), xx - w * rng.uniform(-0.3, 1.3))
    for _ in range(int(rng.integers(1, 4))):
        rad, width = rng.uniform(0.2, 1.2) * max(h, w), rng.uniform(4, 10) * s
        fade = np.clip(0.5 + 0.8 * _noise(rng, h, w, 60 * s), 0, 1)
        light *= 1 - rng.uniform(0.1, 0.25) * fade * np.exp(-(((rho - rad) / width) ** 2))
        light *= 1 + rng.uniform(0.04, 0.1) * fade * np.exp(-(((rho - rad + 1.5 * width) / width) ** 2))
    light *= (1 + 0.035 * _noise(rng, h, w, 4 * s)) * (1 + 0.02 * _noise(rng, h, w, 1.5 * s))
    img = base * light[..., None]
    vessels = Image.new("L", (w, h), 0)  # faint branching vessels: random walks, blurred
    draw = ImageDraw.Draw(vessels)
    for _ in range(int(rng.integers(1, 8))):
        p = rng.uniform(0, 1, 2) * (w, h)
        ang = rng.uniform(0, 2 * math.pi)
        pts = [tuple(p)]
        for _ in range(int(rng.integers(4, 12))):
            ang += rng.normal(0, 0.2)
            p = p + 8 * s * np.array([math.cos(ang), math.sin(ang)])
            pts.append(tuple(p))
        draw.line(pts, fill=int(rng.uniform(80, 200)), width=max(1, round(rng.uniform(0.8, 1.6) * s)))
    va = np.asarray(vessels.filter(ImageFilter.GaussianBlur(0.7 * s)), np.float32) / 255 * 0.12
    return img, va


def _dome(rng, h, w, s) -> tuple[np.ndarray, np.ndarray, float]:
    """A polyp: normalised radius field q (q < 1 inside), shading factor and radius r."""
    r = _polyp_radius(rng, h, w)
    m = min(r + 0.06 * min(h, w), 0.5 * min(h, w))  # keep the polyp inside the scope's view
    cy, cx = rng.uniform(m, h - m), rng.uniform(m, w - m)
    lobes = 2 if rng.uniform() < 0.25 else 1
    q0 = _blob(rng, h, w, cy, cx, r, rng.uniform(0.05, 0.3), lobes, spread=0.3)
    q = q0 + rng.uniform(0.3, 1.0) * s / r * _noise(rng, h, w, 6 * s)
    height = np.sqrt(np.clip(1 - q0**2, 0, 1))
    gy, gx = np.gradient(height)
    la = rng.uniform(0, 2 * math.pi)
    shade = np.clip((gx * math.cos(la) + gy * math.sin(la)) * r * rng.uniform(0.5, 0.8), -0.5, 0.5)
    return q, (1 + shade + 0.15 * height).astype(np.float32), r


def _specular(rng, h, w, s, spots: list[tuple[float, float, float]]) -> np.ndarray:
    """(h, w) alpha of specular highlights: (y, x, radius) spots, blurred."""
    spec = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(spec)
    for y, x, rad in spots:
        ry, rx = rad * rng.uniform(0.5, 1.5, 2)
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.uniform(190, 255)))
    return np.asarray(spec.filter(ImageFilter.GaussianBlur(0.7 * s)), np.float32) / 255


def _polyp_tint(rng) -> np.ndarray:
    """Per-channel colour factor of a polyp against its wall: redder, paler, or nearly the same (then
    only its relief, rim and highlights set it apart)."""
    kind = rng.uniform()
    if kind < 0.5:
        c = rng.uniform(0.03, 0.3)
        return _rgb(1.0 + 0.25 * c, 1.0 - c, 1.0 - 0.8 * c)
    if kind < 0.75:
        c = rng.uniform(0.05, 0.25)
        return _rgb(1.0 + 0.1 * c, 1.0 + 0.5 * c, 1.0 + 0.6 * c)
    return (1 + rng.uniform(-0.06, 0.06, 3)).astype(np.float32)


def _patches(rng, img, h, w, s) -> None:
    """Flat reddened or pale patches of the wall with diffuse borders (distractors), in place."""
    for _ in range(int(rng.integers(0, 4))):
        r = _lesion_radius(rng, h, w, 0.01, 0.1)
        q = _blob(rng, h, w, rng.uniform(0, h), rng.uniform(0, w), r, rng.uniform(0.2, 0.8), 2)
        a = (_soft(q, r, rng.uniform(4, 10) * s) * rng.uniform(0.5, 1.0))[..., None]
        c = rng.uniform(0.1, 0.3)
        tint = (
            _rgb(1 + 0.2 * c, 1 - c, 1 - 0.8 * c)
            if rng.uniform() < 0.7
            else _rgb(1, 1 + 0.4 * c, 1 + 0.5 * c)
        )
        img *= 1 - a + a * tint


def polyp(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """One endoscopy-like image (H, W, 3) uint8 and (H, W) bool polyp mask; H, W depend on the scope."""
    scope = ENDOSCOPES[rng.choice(len(ENDOSCOPES), p=[e.prob for e in ENDOSCOPES])]
    w, h = _even(scope.aspect[0] * size, scope.aspect[1] * size)
    s = size / 256
    img, vessels = _mucosa(rng, h, w, s, _rgb(*scope.tone))
    _patches(rng, img, h, w, s)
    q, shade, r = _dome(rng, h, w, s)
    mask = q < 1
    tint = _polyp_tint(rng)
    pits = 1 + rng.uniform(0.02, 0.05) * _noise(rng, h, w, 5 * s)
    alpha = _soft(q, r, rng.uniform(0.5, 1.3) * s)
    rim = np.exp(-(((q - 1.06) / 0.07) ** 2)) * np.float32(rng.uniform(0.3, 0.55))  # shadow at the base
    img *= ((1 - rim) * (1 - alpha))[..., None] + tint * (shade * pits * alpha)[..., None]
    img *= 1 - (vessels * (1 - alpha))[..., None] * _rgb(0.25, 0.55, 0.45)  # vessels of the wall only

    py, px = np.nonzero(mask & (shade > np.quantile(shade[mask], 0.8)) if mask.any() else mask)
    spots = []
    for _ in range(int(rng.integers(1, 5)) if len(py) else 0):  # highlights on the lit side of the dome
        j = rng.integers(len(py))
        spots.append((float(py[j]), float(px[j]), rng.uniform(1.0, 3.5) * s))
    for _ in range(int(rng.integers(2, 12))):  # and small ones on the wet wall
        spots.append((rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.6, 2.0) * s))
    spec = _specular(rng, h, w, s, spots)
    img += (255 - img) * spec[..., None]

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    p = rng.uniform(3, 8)  # black endoscope border: a superellipse cuts the corners
    xn = (xx - w / 2) / (w / 2 * rng.uniform(1.0, 1.12))
    yn = (yy - h / 2) / (h / 2 * rng.uniform(1.0, 1.08))
    outside = np.abs(xn) ** p + np.abs(yn) ** p > 1
    img[outside] = rng.uniform(0, 10)
    if rng.uniform() < scope.inset_box:  # scope-position inset box in the lower-left (as in Kvasir-SEG)
        bw, bh = int(w * rng.uniform(0.18, 0.26)), int(h * rng.uniform(0.18, 0.26))
        box = (yy > h - bh) & (xx < bw)
        img[box] = _rgb(18, 22, 18)
        inner = box & (yy > h - bh * 0.8) & (yy < h - bh * 0.2) & (xx > bw * 0.2) & (xx < bw * 0.8)
        img[inner] = _rgb(40, 160, 60) * np.float32(rng.uniform(0.5, 1.0))
        outside |= box
    mask &= ~outside
    img = np.clip(img, 0, 255).astype(np.uint8)
    img = np.asarray(
        Image.fromarray(img).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9) * s)), np.float32
    )
    return _finish(rng, img, 1.5), mask


GENERATORS = {"skin": skin, "polyp": polyp}


def generate(domain: str, seed: int, index: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Image `index` of the `domain` dataset with `seed`: (H, W, 3) uint8 and (H, W) bool mask."""
    if domain not in GENERATORS:
        raise SamfedError(f"Unknown synthetic domain {domain!r}; choose one of {', '.join(DOMAINS)}.")
    if not 32 <= size <= MAX_SIZE:
        raise SamfedError(f"Synthetic image size must be between 32 and {MAX_SIZE} px, got {size}.")
    return GENERATORS[domain](np.random.default_rng([seed, index]), size)


def sample_id(domain: str, index: int) -> str:
    """ISIC-style ids for skin (``ISIC_0000007``), Kvasir-style opaque ids for polyps."""
    return f"ISIC_{index:07d}" if domain == "skin" else f"synpolyp{index:05d}"


def _layout_paths(domain: str, out: Path, sid: str) -> tuple[Path, Path]:
    if domain == "skin":
        return (
            out / "ISIC2018_Task1-2_Training_Input" / f"{sid}.jpg",
            out / "ISIC2018_Task1_Training_GroundTruth" / f"{sid}_segmentation.png",
        )
    return out / "images" / f"{sid}.jpg", out / "masks" / f"{sid}.jpg"


MANIFEST = "synth.json"  # lists every file a finished synth wrote; its presence means "complete"
PARTIAL = "synth.partial.json"  # the same list, written before the first image, removed at the end


def _planned_files(domain: str, out: Path, n: int) -> list[str]:
    """Paths relative to `out` (POSIX) of every file `write_synthetic` writes, the manifest aside."""
    paths = [p for i in range(n) for p in _layout_paths(domain, out, sample_id(domain, i))]
    return [p.relative_to(out).as_posix() for p in paths] + ["train.txt", "val.txt"]


def _listed_files(manifest: Path) -> set[str]:
    """The relative paths an earlier synth's manifest lists; SamfedError when it lists none."""
    try:
        meta = json.loads(manifest.read_bytes().decode("utf-8"))
        files = meta["files"] if isinstance(meta, dict) else None
    except (OSError, ValueError, KeyError):
        files = None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise SamfedError(
            f"{manifest} does not list the files an earlier `samfed data synth` wrote (corrupt or from an "
            "older samfed), so --overwrite cannot tell them from yours; choose a new folder."
        )
    return set(files)


def _clear_previous_synth(out: Path) -> None:
    """Delete the files an earlier synth wrote into `out`, refusing (before deleting anything) when
    `out` holds any other file."""
    manifests = [out / m for m in (MANIFEST, PARTIAL) if (out / m).is_file()]
    if not manifests:
        raise SamfedError(
            f"Output folder {out} was not written by `samfed data synth` (it has no {MANIFEST}); "
            "--overwrite only replaces an earlier synthetic dataset, so choose a new folder."
        )
    listed = {MANIFEST, PARTIAL}.union(*(_listed_files(m) for m in manifests))
    present = [p for p in out.rglob("*") if not p.is_dir()]
    foreign = [p for p in present if p.relative_to(out).as_posix() not in listed]
    if foreign:
        raise SamfedError(
            f"Output folder {out} holds {len(foreign)} files that `samfed data synth` did not write "
            f"(e.g. {foreign[0].relative_to(out)}); --overwrite deletes none of them, so move them or "
            "choose a new folder."
        )
    for p in present:
        p.unlink()
    for d in sorted({p.parent for p in present} - {out}, key=lambda d: -len(d.parts)):
        if not any(d.iterdir()):
            d.rmdir()


def _check_arguments(domain: str, n: int, size: int, seed: int, val_fraction: float) -> None:
    if domain not in GENERATORS:
        raise SamfedError(f"Unknown synthetic domain {domain!r}; choose one of {', '.join(DOMAINS)}.")
    if not 1 <= n <= MAX_N:
        raise SamfedError(f"The number of synthetic images must be between 1 and {MAX_N}, got {n}.")
    if not 32 <= size <= MAX_SIZE:
        raise SamfedError(f"Synthetic image size must be between 32 and {MAX_SIZE} px, got {size}.")
    if seed < 0:
        raise SamfedError(f"The seed must be a non-negative integer, got {seed}.")
    if not 0 <= val_fraction < 1:
        raise SamfedError(f"The val fraction must be in [0, 1), got {val_fraction}.")


def _write_manifest(path: Path, meta: dict, files: list[str]) -> None:
    atomic_write_text(path, json.dumps({**meta, "files": files}, indent=1) + "\n")


def write_synthetic(
    domain: str,
    n: int,
    out: str | Path,
    seed: int = 0,
    size: int = 256,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    progress=None,
) -> Path:
    """Write `n` images to `out` in the ISIC (skin) or Kvasir (polyp) layout, with train/val.txt.

    Masks are PNG for skin (like ISIC) and JPEG for polyps (like Kvasir-SEG, read back with the
    threshold 128). ``synth.json`` lists every file written; ``synth.partial.json`` holds the
    same list while writing, so an interrupted synth can be overwritten too. `overwrite`
    replaces an earlier synth's folder: it deletes only the files those lists name and refuses
    a folder holding any other file. `n` <= MAX_N and 32 <= `size` <= MAX_SIZE. `progress(i)`
    is called after each image. Returns `out`.
    """
    out = Path(out)
    _check_arguments(domain, n, size, seed, val_fraction)
    if out.exists() and not out.is_dir():
        raise SamfedError(f"Output {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SamfedError(f"Output folder {out} is not empty; choose a new folder or overwrite it.")
        _clear_previous_synth(out)
    meta = {"domain": domain, "n": n, "seed": seed, "size": size, "generator_version": GENERATOR_VERSION}
    files = _planned_files(domain, out, n)
    _write_manifest(out / PARTIAL, meta, files)
    ids = [sample_id(domain, i) for i in range(n)]
    for i, sid in enumerate(ids):
        image, mask = generate(domain, seed, i, size)
        img_path, mask_path = _layout_paths(domain, out, sid)
        img_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(img_path, quality=92)
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
        mask_img.save(mask_path, **({"quality": 95} if mask_path.suffix == ".jpg" else {}))
        if progress is not None:
            progress(i)
    n_val = min(n - 1, max(1, round(n * val_fraction))) if n > 1 else 0
    order = np.random.default_rng([seed, 1 << 20]).permutation(n)
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    (out / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (out / "val.txt").write_text("".join(f"{i}\n" for i in val))
    _write_manifest(out / MANIFEST, meta, files)
    (out / PARTIAL).unlink()
    return out
