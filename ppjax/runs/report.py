"""Reports and figures for ``ppjax evaluate``: ``report.json``, ``report.md`` and PNG figures drawn
with matplotlib (object API on the Agg canvas: no display, no global pyplot state): a
before/after grid, a perturbation heat map, and score histograms before/after."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ppjax.image.io import atomic_write_bytes

STANDIN_BANNER = ("**STAND-IN**: the judges ran on RANDOM weights (stand-ins), not the real "
                  "checkpoints. These numbers only exercise the pipeline; they mean nothing.")


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _clean_floats(o):
    # JSON has no NaN/inf: write them as null so every JSON reader can load the report.
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean_floats(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_clean_floats(v) for v in o]
    if isinstance(o, np.generic | np.ndarray):
        return _clean_floats(_jsonable(o))
    return o


def write_json(path: str | os.PathLike, obj) -> None:
    """Atomically write ``obj`` as indented JSON (NaN/inf become null)."""
    text = json.dumps(_clean_floats(obj), indent=2, sort_keys=False, default=_jsonable,
                      ensure_ascii=False)
    atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def fmt_value(v, digits=4) -> str:
    """A report cell: ``n/a`` for None or NaN, ``digits`` decimals for a float."""
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else "n/a"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt_value(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(rep: dict) -> str:
    """``report.md`` for one evaluated run (``rep`` as written to ``report.json``)."""
    out = []
    tag = " (STAND-IN)" if rep.get("standin") else ""
    out.append(f"# Pixel Privacy {rep['task']} evaluation: {rep.get('run_code') or rep['run']}{tag}")
    if rep.get("standin"):
        out += ["", STANDIN_BANNER]
    out += ["", f"- run: `{rep['run']}`", f"- judge: {rep['judge']}",
            f"- appeal judge: {rep.get('appeal_judge') or 'n/a'}",
            f"- procedure: {rep['procedure']}",
            f"- images evaluated: {rep['n_images']}, failed: {rep['n_failed']}"]
    out += ["", "## Protection", ""]
    prot = rep["protection"]
    rows = [[k, v] for k, v in prot.items()]
    out.append(markdown_table(["metric", "value"], rows))
    out += ["", "## Appeal and quality vs originals", ""]
    rows = [[k, v] for k, v in {**rep.get("appeal", {}), **rep.get("quality", {})}.items()]
    out.append(markdown_table(["metric", "value"], rows))
    if rep.get("figures"):
        out += ["", "## Figures", ""]
        out += [f"![{Path(f).stem}]({f})" for f in rep["figures"]]
    noted = [p for p in rep.get("per_image", []) if p.get("notes")]
    if noted:
        out += ["", "## Conversions applied", ""]
        out.append(markdown_table(["image", "notes"],
                                  [[p["name"], "; ".join(p["notes"])] for p in noted]))
    if rep.get("errors"):
        out += ["", "## Errors (per file)", ""]
        out.append(markdown_table(["image", "error"],
                                  [[e["name"], e["error"]] for e in rep["errors"]]))
    return "\n".join(out) + "\n"


def compare_markdown(reports: Sequence[dict]) -> str:
    """Runs side by side: one column per run, one row per metric."""
    keys: list[tuple[str, str]] = []
    for r in reports:
        for sect in ("protection", "appeal", "quality"):
            for k in r.get(sect, {}):
                if (sect, k) not in keys:
                    keys.append((sect, k))
    header = ["metric"] + [
        (r.get("run_code") or Path(r["run"]).name) + (" (STAND-IN)" if r.get("standin") else "")
        for r in reports
    ]
    rows = [["task"] + [r["task"] for r in reports],
            ["images"] + [r["n_images"] for r in reports],
            ["failed"] + [r["n_failed"] for r in reports]]
    rows += [[k] + [r.get(s, {}).get(k) for r in reports] for s, k in keys]
    title = "# Runs compared"
    if any(r.get("standin") for r in reports):
        title += "\n\n" + STANDIN_BANNER
    return title + "\n\n" + markdown_table(header, rows) + "\n"


# ---------------------------------------------------------------- figures (matplotlib, Agg)

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


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16))


def before_after_grid(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path, tile: int = 192,
                      title: str = "") -> None:
    """Rows of (original, protected, |difference|) for ``pairs`` of (name, orig, protected),
    images [H, W, 3] uint8. The difference is amplified so that the largest change of the figure
    is full brightness (the factor is in the column title)."""
    n = max(1, len(pairs))
    top = max((int(_diff(a, b).max()) for _, a, b in pairs), default=0)
    gain = 255.0 / top if top else 1.0
    fig = figure(3 * tile / 72 + 0.4, n * tile / 72 + 0.9)
    axes = fig.subplots(n, 3, squeeze=False)
    heads = ("original", "protected", f"|difference| x{gain:.3g} (max {top} levels)")
    for i, (name, a, b) in enumerate(pairs):
        d = np.clip(np.rint(_diff(a, b) * gain), 0, 255).astype(np.uint8)
        for j, im in enumerate((a, b, d)):
            ax = axes[i, j]
            ax.imshow(im, interpolation="lanczos" if im.shape[0] > tile else "nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(heads[j], fontsize=9)
        axes[i, 0].set_ylabel(name[:40], fontsize=8)
    fig.suptitle(wrap_title(title or "original | protected | |difference|", 3 * tile * 100 / 72 - 20),
                 fontsize=10)
    save_figure(fig, path)


def perturbation_heatmap(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path,
                         tile: int = 192, tag: str = "") -> None:
    """Per image, the per-pixel max over channels of |protected - original| in 8-bit levels, on
    one colour scale from 0 to the largest change of the figure (a colour bar with ticks)."""
    maps = [_diff(a, b).max(-1) for _, a, b in pairs]
    vmax = max(1, max((int(m.max()) for m in maps), default=1))
    cols = min(4, max(1, len(pairs)))
    rows = math.ceil(len(pairs) / cols) if pairs else 1
    fig = figure(cols * tile / 72 + 1.2, rows * tile / 72 + 0.8)
    axes = fig.subplots(rows, cols, squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= len(maps):
            ax.set_axis_off()
            continue
        im = ax.imshow(maps[i], cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(pairs[i][0][:28], fontsize=8)
    if im is not None:
        cb = fig.colorbar(im, ax=axes, shrink=0.8)
        cb.set_label("|protected - original|, max over RGB (8-bit levels)")
        cb.set_ticks(sorted({0, *np.linspace(0, vmax, min(vmax, 5) + 1).round().astype(int)}))
    fig.suptitle(wrap_title(f"{tag}perturbation per pixel, 0..{vmax} levels",
                            cols * tile * 100 / 72), fontsize=10)
    save_figure(fig, path)


def histogram(before: Sequence[float], after: Sequence[float], path, title: str, xlabel: str,
              threshold: float | None = None, bins: int = 20, size=(520, 320)) -> None:
    """Histograms of two score sets on shared bins (before / after), with an optional vertical
    threshold line; ``size`` in pixels at 100 dpi."""
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
