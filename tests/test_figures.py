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
    plots.before_after_grid([_pair(1)], tmp_path / "g.png", tile=128, title="t")
    px = _rgb(tmp_path / "g.png")
    w = px.shape[1]
    right = px[:, 2 * w // 3:]
    # amplified to full brightness: the changed half is white-ish, where x10 gave 10/255
    assert (right.min(-1) > 240).sum() > 0.4 * 128 * 64 and (right.max(-1) < 15).sum() > 0.3 * 128 * 64


def test_titles_legends_and_pareto_labels_fit(tmp_path):
    rows = [{"attack": "pgd", "preset": "default", "settings": {"eps": e}, "mean_l2": e * 30,
             "protection": min(1.0, e * 40)} for e in (0.01, 0.02)]
    plots.pareto_plot(rows, tmp_path / "p.png", label="x" * 60, standin=True)
    plots.histogram([1, 2, 3], [2, 3, 4], tmp_path / "h.png", "T" * 70, "score", threshold=2.5)
    for f in ("p.png", "h.png"):
        px = _rgb(tmp_path / f)
        # constrained layout keeps every mark inside: the outermost pixel columns stay white
        assert (px[:, :2] > 250).all() and (px[:, -2:] > 250).all(), f
    assert _rgb(tmp_path / "p.png").shape[:2] == (480, 720)
    assert plots.point_label(rows[0]) == "pgd eps=0.01"
