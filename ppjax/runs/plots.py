"""Figures of ppjax's runs, drawn with matplotlib (object API on the Agg canvas: no display, no
global pyplot state), each written atomically: ``ppjax evaluate``'s before/after grid,
perturbation heat map and score histograms, the transfer matrix, and ``ppjax sweep``'s Pareto
plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ppjax.image.io import atomic_write_bytes


def figure(width_in: float, height_in: float, dpi: int = 100):
    """A matplotlib ``Figure`` on the Agg canvas with constrained layout (titles, legends and
    colour bars never overlap or leave the image)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=6 / 72, h_pad=6 / 72)  # a margin at the figure's edges
    FigureCanvasAgg(fig)
    return fig


def wrap_title(text: str, width_px: float, fontsize: float = 10, dpi: int = 100) -> str:
    """``text`` broken into lines that fit ``width_px`` at ``fontsize`` points (DejaVu Sans
    averages at most about 0.65 em per character), so a long title never runs off the figure."""
    import textwrap

    em = fontsize * dpi / 72.0
    return "\n".join(textwrap.wrap(text, max(10, int(width_px / (0.65 * em))))) or text


def save_figure(fig, path: str | os.PathLike) -> None:
    """PNG of ``fig``, written atomically."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": "ppjax"})
    atomic_write_bytes(path, buf.getvalue())


#: The colour map of every difference image (perceptually uniform; zero is black, so an
#: unchanged pixel never looks like the page's white background).
DIFF_CMAP = "inferno"


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def diff_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[H, W] int: per pixel, the largest |b - a| over RGB in 8-bit levels (uint8 images)."""
    return _diff(a, b).max(-1)


def diff_rgb(a: np.ndarray, b: np.ndarray, vmax: int) -> np.ndarray:
    """[H, W, 3] uint8: :func:`diff_levels` through :data:`DIFF_CMAP` on the scale 0..``vmax``
    levels (0 black; ``vmax`` and above the brightest yellow)."""
    return colour_levels(diff_levels(a, b), vmax)


def colour_levels(levels: np.ndarray, vmax: int) -> np.ndarray:
    """[H, W] levels -> [H, W, 3] uint8 through :data:`DIFF_CMAP` on the scale 0..``vmax``."""
    from matplotlib import colormaps

    t = np.clip(levels / float(max(1, vmax)), 0.0, 1.0)
    return (colormaps[DIFF_CMAP](t)[..., :3] * 255 + 0.5).astype(np.uint8)


def before_after_grid(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path, tile: int = 192,
                      title: str = "", captions: dict | None = None) -> None:
    """Rows of (original, protected, |difference|) for ``pairs`` of (name, orig, protected),
    images [H, W, 3] uint8. Each difference is drawn with :data:`DIFF_CMAP` from 0 (black) to
    its image's largest change (written under it), so a one-level change is visible beside a
    large one; :func:`perturbation_heatmap` compares images on one scale. ``captions[name]``
    (the judge's class or score before and after, success) is written under the protected
    image."""
    n = max(1, len(pairs))
    fig = figure(3 * tile / 72 + 0.4, n * (tile / 72 + 0.35) + 0.9)
    axes = fig.subplots(n, 3, squeeze=False)
    heads = ("original", "protected", "|difference|, 0 = black")
    for i, (name, a, b) in enumerate(pairs):
        d = diff_levels(a, b)
        top = max(1, int(d.max()))
        for j, x in enumerate((a, b, d)):
            ax = axes[i, j]
            kw = {"cmap": DIFF_CMAP, "vmin": 0, "vmax": top} if j == 2 else {}
            ax.imshow(x, interpolation="nearest" if j == 2 or x.shape[0] <= tile else "lanczos",
                      **kw)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
        axes[i, 0].set_ylabel(name[:40], fontsize=8)
        axes[i, 2].set_xlabel(f"brightest = {int(d.max())} level{'' if d.max() == 1 else 's'}",
                              fontsize=7)
        if captions and captions.get(name):
            axes[i, 1].set_xlabel(wrap_title(captions[name], tile * 100 / 72, 7), fontsize=7)
    fig.suptitle(wrap_title(title or "original | protected | |difference|", 3 * tile * 100 / 72 - 20),
                 fontsize=10)
    save_figure(fig, path)


def perturbation_heatmap(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path,
                         tile: int = 192, tag: str = "") -> None:
    """Per image, the per-pixel size of the change, sqrt(sum over RGB of (protected -
    original)^2) in 8-bit levels (it tells a one-level change of one channel from one of all
    three), on one colour scale from 0 to the largest of the figure (a colour bar)."""
    maps = [np.sqrt((_diff(a, b).astype(np.float32) ** 2).sum(-1)) for _, a, b in pairs]
    vmax = max(1.0, max((float(m.max()) for m in maps), default=1.0))
    cols = min(4, max(1, len(pairs)))
    rows = math.ceil(len(pairs) / cols) if pairs else 1
    fig = figure(cols * tile / 72 + 1.6, rows * tile / 72 + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(maps):
            ax.set_axis_off()
            continue
        im = ax.imshow(maps[i], cmap=DIFF_CMAP, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{pairs[i][0][:24]}\nmean {maps[i].mean():.2f}", fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.9)
        cb.set_label("RGB change (levels)", fontsize=8)
    fig.suptitle(wrap_title(f"{tag}size of the change per pixel, 0..{vmax:.3g} levels",
                            cols * tile * 100 / 72), fontsize=10)
    save_figure(fig, path)


def diff_histogram(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path, tag: str = "",
                   size=(520, 320)) -> None:
    """Histogram of every channel value's |protected - original| (8-bit levels, one bar per
    level, log count axis) over ``pairs``: how the change is spread, whatever the image count."""
    d = np.concatenate([_diff(a, b).ravel() for _, a, b in pairs]) if pairs else np.zeros(1, int)
    counts = np.bincount(d, minlength=2)
    fig = figure(size[0] / 100, size[1] / 100)
    ax = fig.subplots()
    ax.bar(np.arange(counts.size), counts, width=0.9, color="#4169c8")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.8)  # bars from a count of 1, not from the smallest bar
    ax.set_xlabel("|protected - original| per channel value (8-bit levels)")
    ax.set_ylabel("channel values")
    changed = 1.0 - counts[0] / max(1, counts.sum())
    fig.suptitle(wrap_title(f"{tag}change per channel value over {len(pairs)} images "
                            f"({100 * changed:.1f}% changed)", size[0] - 20, 9), fontsize=9)
    save_figure(fig, path)


def histogram(before: Sequence[float], after: Sequence[float], path, title: str, xlabel: str,
              threshold: float | None = None, bins: int = 20, size=(520, 320),
              names: Sequence[str] | None = None) -> None:
    """Two score sets (before / after), with an optional threshold line; ``size`` in pixels at
    100 dpi. With fewer than :data:`FEW` pairs (and ``names``), one pair of bars per image
    instead (a histogram of 2-3 values says nothing); else histograms on shared bins."""
    if names is not None and len(names) < FEW:
        return _per_image_bars(before, after, names, path, title, xlabel, threshold, size)
    b = np.asarray([v for v in before if v is not None and math.isfinite(v)], np.float64)
    a = np.asarray([v for v in after if v is not None and math.isfinite(v)], np.float64)
    allv = np.concatenate([b, a]) if (b.size or a.size) else np.zeros(1)
    lo, hi = float(allv.min()), float(allv.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    fig = figure(size[0] / 100, size[1] / 100)
    ax = fig.subplots()
    ax.hist([b, a], bins=edges, label=[f"before (n={b.size})", f"after (n={a.size})"],
            color=["#4169c8", "#eb8c28"])
    if threshold is not None:
        ax.axvline(threshold, color="#dc1e1e", lw=1.5, ls="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    ax.yaxis.get_major_locator().set_params(integer=True)
    fig.legend(fontsize=8, loc="outside lower center", ncols=3, frameon=False)  # not over bars
    fig.suptitle(wrap_title(title, size[0] - 20, 9), fontsize=9)
    save_figure(fig, path)


#: Below this many images :func:`histogram` draws one pair of bars per image.
FEW = 12


def _per_image_bars(before, after, names, path, title, xlabel, threshold, size) -> None:
    nan = float("nan")
    b = [nan if v is None else v for v in before]
    a = [nan if v is None else v for v in after]
    y = np.arange(len(names))
    fig = figure(size[0] / 100, max(size[1] / 100, 0.35 * len(names) + 1.2))
    ax = fig.subplots()
    ax.barh(y - 0.2, b, height=0.4, color="#4169c8", label="before")
    ax.barh(y + 0.2, a, height=0.4, color="#eb8c28", label="after")
    if threshold is not None:
        ax.axvline(threshold, color="#dc1e1e", lw=1.5, ls="--", label=f"threshold {threshold:g}")
    ax.set_yticks(y, [n[:24] for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    fig.legend(fontsize=8, loc="outside lower center", ncols=3, frameon=False)
    fig.suptitle(wrap_title(title + " (per image)", size[0] - 20, 9), fontsize=9)
    save_figure(fig, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when ``x`` is minimised and ``y`` maximised, ordered
    by ``x``."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def point_label(row: dict) -> str:
    """Short setting label of a row: ``attack[/preset] k=v ...`` (floats with 3 digits)."""
    st = row.get("settings") or {}
    if isinstance(st, str):
        st = json.loads(st)
    vals = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items())
    preset = row.get("preset")
    head = row["attack"] + (f"/{preset}" if preset and preset != "default" else "")
    return f"{head} {vals}".strip()


def pareto_plot(rows: list[dict], path: Path, label: str = "", x_key: str = "mean_l2",
                y_key: str = "protection", size=(720, 480), standin: bool = False) -> None:
    """Scatter of protection (success rate) against distortion (mean L2), points coloured by
    attack and labelled with their settings, the Pareto front as a line (matplotlib, Agg);
    ``size`` in pixels at 100 dpi."""
    pts = [(float(r[x_key]), float(r[y_key]), r["attack"], point_label(r)) for r in rows
           if r.get(x_key) not in ("", None) and r.get(y_key) not in ("", None)]
    fig = figure(size[0] / 100, size[1] / 100)
    ax = fig.subplots()
    fig.suptitle(wrap_title(f"{'STAND-IN: ' if standin else ''}Pixel Privacy sweep: {label}",
                            size[0] - 20), fontsize=10)
    ax.set_xlabel("distortion: mean L2 of the change (pixels in [0, 1])")
    ax.set_ylabel("protection (attack success rate)")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    if pts:
        front = pareto_front([(p[0], p[1]) for p in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="#888888", lw=1.5,
                zorder=1, label="Pareto front")
        for attack in sorted({p[2] for p in pts}):
            sel = [p for p in pts if p[2] == attack]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=36, edgecolor="black",
                       zorder=2, label=attack)
        for x, y, _, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
        ax.set_xlim(0, max(p[0] for p in pts) * 1.25 or 1.0)
        fig.legend(loc="outside lower center", ncols=6, fontsize=8, frameon=False)  # not over points
    save_figure(fig, path)


def transfer_heatmap(res: dict, path: str | os.PathLike) -> Path:
    """Heat map of a transfer matrix's drops (:func:`ppjax.runs.transfer.transfer_matrix`): one
    cell per (protected against, judged by), each with its value."""
    drop = np.array([[np.nan if v is None else v for v in row] for row in res["drop"]],
                    np.float64)
    nr, nc = drop.shape
    fig = figure(1.6 + 1.3 * nc, 1.4 + 0.6 * nr, dpi=110)
    ax = fig.subplots()
    im = ax.imshow(np.ma.masked_invalid(drop), cmap="viridis", vmin=min(0.0, np.nanmin(drop)
                   if np.isfinite(drop).any() else 0.0), vmax=1.0, aspect="auto")
    for i in range(nr):
        for k in range(nc):
            v = drop[i, k]
            ax.text(k, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center",
                    color="black" if np.isnan(v) or v >= 0.6 else "white", fontsize=9)
    ax.set_xticks(range(nc), [c.replace("_places365", "") for c in res["columns"]],
                  rotation=30, ha="right")
    ax.set_yticks(range(nr), [r.replace("_places365", "") for r in res["rows"]])
    ax.set_xlabel("judged by")
    ax.set_ylabel("protected against")
    title = "top-1 accuracy drop"
    if res["standin"]:
        title = "STAND-IN (random weights): transfer rates meaningless\n" + title
    ax.set_title(title, fontsize=10, color="red" if res["standin"] else "black")
    fig.colorbar(im, ax=ax, fraction=0.05)
    save_figure(fig, path)
    return Path(path)
