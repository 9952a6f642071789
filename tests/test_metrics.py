"""Metrics on hand-made masks: known overlaps, known HD95, empty conventions, batch and summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from samfed.metrics import dice, dice_batch, evaluate_pair, hd95, iou, summarize, surface


def square(top: int, left: int, side: int, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def brute_hd95(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: all pairwise distances between the two surfaces (fine on tiny masks)."""
    pa, pb = np.argwhere(surface(a)).astype(float), np.argwhere(surface(b)).astype(float)
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([d.min(1), d.min(0)]), 95))


def test_identical_masks():
    a = square(10, 10, 20)
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0 and hd95(a, a) == 0.0


def test_known_overlap_of_shifted_squares():
    a, b = square(10, 10, 20), square(10, 15, 20)  # 20x20 squares overlapping in 20x15
    assert dice(a, b) == pytest.approx(2 * 300 / 800)  # 0.75
    assert iou(a, b) == pytest.approx(300 / 500)  # 0.6
    assert hd95(a, b) == pytest.approx(5.0)  # shifted by 5 px: max and 95th pct surface distance


def test_disjoint_and_nested():
    a, b = square(0, 0, 10), square(40, 40, 10)
    assert dice(a, b) == 0.0 and iou(a, b) == 0.0
    big, small = square(10, 10, 20), square(15, 15, 10)  # nested: 100 inside 400
    assert dice(small, big) == pytest.approx(200 / 500)
    assert iou(small, big) == pytest.approx(0.25)
    assert hd95(small, big) == pytest.approx(hd95(big, small))


def test_hd95_single_pixels_is_euclidean():
    a, b = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    a[2, 3], b[5, 7] = True, True
    assert hd95(a, b) == pytest.approx(5.0)  # 3-4-5 triangle


def test_hd95_ignores_worst_five_percent():
    a = square(0, 0, 40, (64, 64))
    b = a.copy()
    b[60, 60] = True  # a single far outlier pixel: Hausdorff max is large, HD95 stays 0
    assert hd95(a, b) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.random((24, 24)) > 0.7, rng.random((24, 24)) > 0.6
    assert hd95(a, b) == pytest.approx(brute_hd95(a, b))
    assert hd95(a, b) == pytest.approx(hd95(b, a))


def test_empty_conventions():
    empty, full = np.zeros((30, 40), bool), square(5, 5, 10, (30, 40))
    diagonal = math.hypot(30, 40)  # 50
    assert (dice(empty, empty), iou(empty, empty), hd95(empty, empty)) == (1.0, 1.0, 0.0)
    for p, g in ((empty, full), (full, empty)):
        assert dice(p, g) == 0.0 and iou(p, g) == 0.0
        assert hd95(p, g) == pytest.approx(diagonal)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


def test_dice_batch_matches_per_image():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((5, 16, 16)) > 0.5, rng.random((5, 16, 16)) > 0.5
    pred[3], gt[3] = False, False  # both empty -> 1
    pred[4] = False  # prediction empty -> 0
    out = dice_batch(pred, gt)
    assert out.shape == (5,)
    np.testing.assert_allclose(out, [dice(p, g) for p, g in zip(pred, gt, strict=True)])
    assert out[3] == 1.0 and out[4] == 0.0


def test_summarize():
    rows = [
        evaluate_pair(square(10, 10, 20), square(10, 15, 20)),
        evaluate_pair(square(0, 0, 8), square(0, 0, 8)),
    ]
    rows[0]["id"], rows[1]["id"] = "a", "b"
    s = summarize(rows)
    assert set(s) == {"dice", "iou", "hd95"}
    assert s["dice"]["mean"] == pytest.approx(0.875)
    assert s["dice"]["std"] == pytest.approx(0.125)
    assert s["hd95"]["median"] == pytest.approx(2.5)
    assert s["iou"]["n"] == 2
    assert summarize([]) == {}
