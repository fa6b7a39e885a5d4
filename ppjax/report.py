"""Reports and figures for ``ppjax evaluate``: ``report.json``, ``report.md`` and PNG figures drawn
with Pillow (no plotting library): a before/after grid, a perturbation heat map, and score
histograms before/after."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ppjax.imageio import atomic_write_bytes

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


def _fmt(v, digits=4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "inf" if v > 0 else "n/a"
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
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


# ---------------------------------------------------------------- figures (Pillow only)

def _font():
    return ImageFont.load_default()


def _save_png(img: Image.Image, path: str | os.PathLike) -> None:
    import io

    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())


def _tile(a: np.ndarray, size: int) -> Image.Image:
    im = Image.fromarray(a)
    s = size / max(im.size)
    return im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.BICUBIC)


def hot_colormap(v: np.ndarray) -> np.ndarray:
    """Map ``v`` in [0, 1] ([...]) to a black-red-yellow-white "hot" colour map, uint8 [..., 3]."""
    v = np.clip(np.asarray(v, np.float32), 0.0, 1.0)
    r = np.clip(3.0 * v, 0, 1)
    g = np.clip(3.0 * v - 1.0, 0, 1)
    b = np.clip(3.0 * v - 2.0, 0, 1)
    return (np.stack([r, g, b], -1) * 255.0 + 0.5).astype(np.uint8)


def before_after_grid(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path, tile: int = 192,
                      title: str = "") -> None:
    """Rows of (original, protected, |difference| x10) for ``pairs`` of (name, orig, protected),
    images [H, W, 3] uint8."""
    pad, head = 6, 16
    rows = len(pairs)
    w = 3 * tile + 4 * pad
    h = head + pad + rows * (tile + head + pad)
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    d.text((pad, 2), title or "original | protected | |difference| x10", fill="black", font=_font())
    y = head + pad
    for name, a, b in pairs:
        diff = np.clip(np.abs(a.astype(np.int16) - b.astype(np.int16)) * 10, 0, 255).astype(np.uint8)
        d.text((pad, y), name[:60], fill="black", font=_font())
        for j, im in enumerate((a, b, diff)):
            canvas.paste(_tile(im, tile), (pad + j * (tile + pad), y + head))
        y += tile + head + pad
    _save_png(canvas, path)


def perturbation_heatmap(pairs: Sequence[tuple[str, np.ndarray, np.ndarray]], path,
                         tile: int = 192, tag: str = "") -> None:
    """Per image, the per-pixel max over channels of |protected - original| (8-bit levels),
    coloured with :func:`hot_colormap` on a shared scale; the scale is written on the figure."""
    pad, head = 6, 16
    maps = [np.abs(a.astype(np.int16) - b.astype(np.int16)).max(-1) for _, a, b in pairs]
    vmax = max(1, max((int(m.max()) for m in maps), default=1))
    cols = min(4, max(1, len(pairs)))
    rows = math.ceil(len(pairs) / cols) if pairs else 1
    w = cols * (tile + pad) + pad
    h = head + pad + rows * (tile + head + pad) + 30
    canvas = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(canvas)
    d.text((pad, 2), f"{tag}perturbation |protected - original| (max over RGB), 0..{vmax} levels",
           fill="black", font=_font())
    for i, ((name, _, _), m) in enumerate(zip(pairs, maps, strict=True)):
        x = pad + (i % cols) * (tile + pad)
        y = head + pad + (i // cols) * (tile + head + pad)
        d.text((x, y), name[:28], fill="black", font=_font())
        canvas.paste(_tile(hot_colormap(m / vmax), tile), (x, y + head))
    bar = hot_colormap(np.linspace(0, 1, w - 2 * pad)[None, :].repeat(10, 0))
    canvas.paste(Image.fromarray(bar), (pad, h - 28))
    d.text((pad, h - 16), "0", fill="black", font=_font())
    d.text((w - pad - 24, h - 16), str(vmax), fill="black", font=_font())
    _save_png(canvas, path)


def histogram(before: Sequence[float], after: Sequence[float], path, title: str, xlabel: str,
              threshold: float | None = None, bins: int = 20, size=(520, 320)) -> None:
    """Side-by-side bar histogram of two score sets (blue = before, orange = after), with an
    optional vertical threshold line (red)."""
    b = np.asarray([v for v in before if v is not None and math.isfinite(v)], np.float64)
    a = np.asarray([v for v in after if v is not None and math.isfinite(v)], np.float64)
    allv = np.concatenate([b, a]) if (b.size or a.size) else np.zeros(1)
    lo, hi = float(allv.min()), float(allv.max())
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    hb, _ = np.histogram(b, edges)
    ha, _ = np.histogram(a, edges)
    W, H = size
    left, right, top, bottom = 40, 10, 30, 40
    canvas = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(canvas)
    d.text((left, 6), title, fill="black", font=_font())
    pw, ph = W - left - right, H - top - bottom
    d.line([(left, top + ph), (left + pw, top + ph)], fill="black")
    d.line([(left, top), (left, top + ph)], fill="black")
    ymax = max(1, int(max(hb.max(initial=0), ha.max(initial=0))))
    bw = pw / bins
    for i in range(bins):
        for j, (cnt, col) in enumerate(((hb[i], (66, 110, 200)), (ha[i], (235, 140, 40)))):
            if cnt == 0:
                continue
            x0 = left + i * bw + j * bw / 2
            y0 = top + ph - ph * cnt / ymax
            d.rectangle([x0 + 1, y0, x0 + bw / 2 - 1, top + ph - 1], fill=col)
    if threshold is not None:
        x = left + pw * (threshold - lo) / (hi - lo)
        d.line([(x, top), (x, top + ph)], fill=(220, 30, 30), width=2)
    d.text((left, top + ph + 4), f"{lo:.3g}", fill="black", font=_font())
    d.text((left + pw - 40, top + ph + 4), f"{hi:.3g}", fill="black", font=_font())
    d.text((left + pw // 2 - 30, top + ph + 20), xlabel, fill="black", font=_font())
    d.text((4, top), str(ymax), fill="black", font=_font())
    d.text((W - 190, 6), f"before (n={b.size})", fill=(66, 110, 200), font=_font())
    d.text((W - 90, 6), f"after (n={a.size})", fill=(235, 140, 40), font=_font())
    _save_png(canvas, path)
