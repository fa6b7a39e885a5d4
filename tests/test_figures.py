"""Figures drawn with matplotlib: the heat map scales to the data (a change of one grey level is
visible, not blank), the difference column of the grid is visible, titles fit in the image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ppjax.runs import plots

INFERNO_TOP = np.array([252, 255, 164])  # matplotlib's inferno at 1.0


def _pair(level: int = 1):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 250, (64, 64, 3)).astype(np.uint8)
    b = a.copy()
    b[:, :32] += np.uint8(level)  # the left half changed by one level, the right half not
    return "p.png", a, b


def _rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(int)


def test_heatmap_of_a_one_level_change_is_not_blank(tmp_path):
    plots.perturbation_heatmap([_pair(1)], tmp_path / "h.png", tile=128, tag="STAND-IN: ")
    px = _rgb(tmp_path / "h.png")
    top = (np.abs(px - INFERNO_TOP).sum(-1) < 30).sum()
    black = (px.sum(-1) < 30).sum()
    # the 32 changed columns at full colour; the 32 unchanged ones black (plus the colour bar)
    assert top > 0.4 * 128 * 64 and black > 0.4 * 128 * 64


def test_grid_difference_column_is_visible(tmp_path):
    plots.before_after_grid([_pair(1)], tmp_path / "g.png", tile=128, title="t",
                            captions={"p.png": "class 3 -> 7: protected"})
    px = _rgb(tmp_path / "g.png")
    w = px.shape[1]
    right = px[:, 2 * w // 3:]
    # on the perceptual scale: the changed half at the top colour (amplified to the image's own
    # largest change), the unchanged half black (never the page's white: a white-on-white
    # difference panel is what this guards against)
    top = (np.abs(right - INFERNO_TOP).sum(-1) < 30).sum()
    assert top > 0.4 * 128 * 64 and (right.max(-1) < 15).sum() > 0.3 * 128 * 64
    assert (px[:, -2:] > 250).all()  # every label inside the canvas


def test_titles_legends_and_pareto_labels_fit(tmp_path):
    rows = [{"attack": "pgd", "preset": "default", "settings": {"eps": e}, "mean_l2": e * 30,
             "protection": min(1.0, e * 40)} for e in (0.01, 0.02)]
    plots.pareto_plot(rows, tmp_path / "p.png", label="x" * 60, standin=True)
    plots.histogram([1, 2, 3], [2, 3, 4], tmp_path / "h.png", "T" * 70, "score", threshold=2.5)
    plots.perturbation_heatmap([_pair(1), _pair(3)], tmp_path / "m.png", tile=96)
    for f in ("p.png", "h.png", "m.png"):
        px = _rgb(tmp_path / f)
        # constrained layout keeps every mark inside: the outermost pixel columns stay white
        assert (px[:, :2] > 250).all() and (px[:, -2:] > 250).all(), f
    assert _rgb(tmp_path / "p.png").shape[:2] == (480, 720)
    assert plots.point_label(rows[0]) == "pgd eps=0.01"


def test_change_histogram_counts_every_channel_value(tmp_path):
    name, a, b = _pair(2)
    plots.diff_histogram([(name, a, b)], tmp_path / "d.png")
    px = _rgb(tmp_path / "d.png")
    bar = np.array([65, 105, 200])  # #4169c8
    cols = np.where((np.abs(px - bar).sum(-1) < 20).any(0))[0]
    # two bars (level 0: half the values, level 2: the other half) on a log axis of equal height
    runs = np.split(cols, np.where(np.diff(cols) > 1)[0] + 1)
    assert len(runs) == 2
    heights = [(np.abs(px[:, r] - bar).sum(-1) < 20).any(1).sum() for r in runs]
    assert abs(heights[0] - heights[1]) <= 2


def test_few_images_get_one_bar_pair_each(tmp_path):
    plots.histogram([0.9, 0.8, 0.7], [0.1, 0.2, 0.3], tmp_path / "h.png", "P(label)", "p",
                    names=["a.jpg", "b.jpg", "c.jpg"])
    px = _rgb(tmp_path / "h.png")
    before = (np.abs(px - np.array([65, 105, 200])).sum(-1) < 20).any(1)
    runs = np.split(np.where(before)[0], np.where(np.diff(np.where(before)[0]) > 1)[0] + 1)
    bars = [r for r in runs if len(r) >= 10]  # the legend's patch is smaller
    assert len(bars) == 3  # one horizontal "before" bar per image, not a 20-bin histogram
