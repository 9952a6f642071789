"""The built-in synthetic generator: image i depends only on (seed, i), and its lesions match their
masks (realistic size, compact, well delineated, different from the surrounding tissue)."""

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from samfed.data.synth import DOMAINS, ENDOSCOPES, POLYP_AREA, generate, polyp_resolutions, write_synthetic

SIZE = 128


@pytest.fixture(scope="module")
def polyps() -> list[tuple[np.ndarray, np.ndarray]]:
    return [generate("polyp", 0, i, SIZE) for i in range(24)]


def visible(image: np.ndarray) -> np.ndarray:
    """Pixels inside the scope's view (not the black border or the inset box)."""
    return image.astype(np.float32).sum(2) > 60


def ring(mask: np.ndarray, image: np.ndarray, width: int = 6) -> np.ndarray:
    """Visible tissue within `width` px around the lesion."""
    return ndimage.binary_dilation(mask, iterations=width) & ~mask & visible(image)


@pytest.mark.parametrize("domain", DOMAINS)
def test_same_seed_and_index_give_identical_bytes(domain):
    img, mask = generate(domain, 5, 7, 96)
    again, again_mask = generate(domain, 5, 7, 96)
    assert img.tobytes() == again.tobytes() and mask.tobytes() == again_mask.tobytes()
    assert img.dtype == np.uint8 and mask.dtype == bool and mask.shape == img.shape[:2]
    assert generate(domain, 5, 8, 96)[0].tobytes() != img.tobytes()
    assert generate(domain, 6, 7, 96)[0].tobytes() != img.tobytes()


def test_image_i_does_not_depend_on_how_many_are_written(tmp_path):
    small = write_synthetic("polyp", 2, tmp_path / "a", seed=4, size=48)
    large = write_synthetic("polyp", 5, tmp_path / "b", seed=4, size=48)
    for sub in ("images", "masks"):
        for f in sorted((small / sub).iterdir()):
            assert f.read_bytes() == (large / sub / f.name).read_bytes()


def test_polyps_cover_a_realistic_share_of_the_image(polyps):
    lo, hi = POLYP_AREA
    fractions = np.array([m.mean() for _, m in polyps])
    assert fractions.min() >= 0.6 * lo and fractions.max() <= 1.15 * hi
    assert np.median(fractions) > 2 * lo  # not mostly tiny


def test_polyps_are_compact_single_blobs(polyps):
    for _, mask in polyps:
        _, n = ndimage.label(mask)
        assert n == 1
        hull = ConvexHull(np.argwhere(mask))
        assert mask.sum() / hull.volume > 0.9  # solidity: no thin arms or holes


def test_polyp_boundary_is_an_image_edge(polyps):
    """Where the mask says the polyp ends, the image has an edge: the gradient along the mask border
    is several times the typical gradient of the wall."""
    for img, mask in polyps:
        grey = ndimage.gaussian_filter(img.astype(np.float32).mean(2), 1)
        grad = np.hypot(*np.gradient(grey))
        inside_view = ndimage.binary_erosion(visible(img), iterations=3)
        border = mask & ~ndimage.binary_erosion(mask) & inside_view
        wall = inside_view & ~ndimage.binary_dilation(mask, iterations=3)
        assert grad[border].mean() > 3 * np.median(grad[wall])


def test_polyp_pixels_differ_from_the_surrounding_wall(polyps):
    """Per channel, |mean difference| + |std difference| of polyp vs the wall around it (0-255)."""
    for img, mask in polyps:
        a, b = img[mask].astype(np.float32), img[ring(mask, img)].astype(np.float32)
        assert np.max(np.abs(a.mean(0) - b.mean(0)) + np.abs(a.std(0) - b.std(0))) > 15


def test_the_simulated_endoscopes_differ_in_resolution_and_tone():
    """Images of each scope (told apart by their resolution, as `--partition size` does) have their
    own colour tone, so the size partition gives clients different-looking data."""
    redness: dict[tuple[int, int], list[float]] = {}
    for i in range(60):
        img, mask = generate("polyp", 1, i, 64)
        wall = img[visible(img) & ~ndimage.binary_dilation(mask, iterations=3)].astype(np.float32)
        mean = wall.mean(0)
        redness.setdefault((img.shape[1], img.shape[0]), []).append(mean[0] / mean.sum())
    assert sorted(redness) == sorted(polyp_resolutions(64))
    tone = {wh: np.mean(v) for wh, v in redness.items()}
    by_scope = [tone[wh] for wh in polyp_resolutions(64)]
    expected = [t[0] / sum(t) for t in (e.tone for e in ENDOSCOPES)]
    assert np.argsort(by_scope).tolist() == np.argsort(expected).tolist()
    assert max(by_scope) - min(by_scope) > 0.03


@pytest.mark.parametrize("size", [32, 48, 96])
def test_small_sizes_still_have_a_lesion(size):
    for domain in DOMAINS:
        for i in range(4):
            img, mask = generate(domain, 0, i, size)
            assert mask.any() and img.shape[:2] == mask.shape
