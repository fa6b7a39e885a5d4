"""``report.html``: one evaluated run as a page a person opens in a browser.

Self-contained: every image is embedded (base64 JPEG/PNG thumbnails), the script is inline, no
network. Per image: the original, the protected image, the difference on the shared colour
scale of :func:`ppjax.runs.plots.diff_rgb` (0 is black, never the page's white), the judge's
class or score before and after, success, distortion and appeal. Then a sortable per-image table
(click a header), the run's settings (the resolved attack) and the summary figures.

The page marks itself for automatic checks: ``<body data-images="N" data-ready="1">`` once its
script ran and every image decoded, and ``data-js-error`` when a script error happened.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from ppjax.runs import plots, report
from ppjax.runs.provenance import attack_line

#: Longest side of a gallery thumbnail, in pixels.
THUMB = 192
#: At most this many images get a gallery card (every image is in the table).
MAX_GALLERY = 1000


def _b64(im: np.ndarray, fmt: str) -> str:
    from PIL import Image

    pil = Image.fromarray(im)
    if max(pil.size) > THUMB:
        pil.thumbnail((THUMB, THUMB), Image.NEAREST if fmt == "PNG" else Image.LANCZOS)
    buf = io.BytesIO()
    pil.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _max_pool(levels: np.ndarray) -> np.ndarray:
    """[H, W] -> at most THUMB on the long side, each pixel the largest of its block (a change
    of one pixel stays visible in the thumbnail)."""
    k = -(-max(levels.shape) // THUMB)
    if k <= 1:
        return levels
    h, w = -(-levels.shape[0] // k) * k, -(-levels.shape[1] // k) * k
    padded = np.zeros((h, w), levels.dtype)
    padded[:levels.shape[0], :levels.shape[1]] = levels
    return padded.reshape(h // k, k, w // k, k).max(axis=(1, 3))


def thumbnails(orig: np.ndarray, adv: np.ndarray) -> dict:
    """The gallery's images of one pair (uint8 [H, W, 3]): the two photos as data URIs and the
    per-pixel difference in levels (block max, coloured at :func:`render`)."""
    levels = plots.diff_levels(orig, adv)
    return {"orig": _b64(orig, "JPEG"), "adv": _b64(adv, "JPEG"),
            "levels": _max_pool(levels).astype(np.uint8), "max_change": int(levels.max())}


def _cell(v) -> str:
    key = "" if v is None else str(float(v)) if isinstance(v, bool | int | float) else str(v)
    return f'<td data-v="{html.escape(key)}">{html.escape(report.fmt_value(v))}</td>'


def _table(per_image) -> str:
    header, rows = report.per_image_table(per_image)
    head = "".join(f'<th onclick="sortBy(this)">{html.escape(h)}</th>' for h in header)
    body = "\n".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f'<table id="per-image"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _card(row: dict, th: dict) -> str:
    ok = report.success_of(row)
    cls = "ok" if ok else "fail" if ok is False else "na"
    dist = ", ".join(f"{k.upper()} {report.fmt_value(row.get(k), 3)}"
                     for k in ("psnr", "ssim", "ciede2000") if row.get(k) is not None)
    appeal = (f"<br>appeal {report.fmt_value(row.get('nima_clean'), 2)} &rarr; "
              f"{report.fmt_value(row.get('nima'), 2)}" if row.get("nima") is not None else "")
    notes = "; ".join(row.get("notes") or []) or "used as it is"
    th = {**th, "diff": _b64(plots.colour_levels(th["levels"], th["max_change"]), "PNG")}
    dist = f"largest change {th['max_change']} levels; {dist}"
    imgs = "".join(f'<img src="{th[k]}" alt="{k} {html.escape(row["name"])}" title="{t}">'
                   for k, t in (("orig", "original"), ("adv", "protected"),
                                ("diff", f"|difference| (max {th['max_change']} levels)")))
    return (f'<figure class="card {cls}"><div class="imgs">{imgs}</div><figcaption>'
            f'<b>{html.escape(row["name"])}</b><br>{html.escape(report.image_caption(row))}'
            f'<br>{html.escape(dist)}{appeal}<br><small>{html.escape(notes)}</small>'
            f'</figcaption></figure>')


def _settings(rep: dict) -> str:
    rec = report.attack_of(rep)
    cfg = {k: v for k, v in (rep.get("protect_config") or {}).items()
           if k not in ("attack_resolved",)}
    body = [f"<p><b>attack</b>: {html.escape(attack_line(rec))}</p>"]
    if rec:
        body.append("<details><summary>every resolved setting of the attack</summary><pre>"
                    + html.escape(json.dumps(rec, indent=1)) + "</pre></details>")
    if cfg:
        body.append("<details><summary>the run's config.json</summary><pre>"
                    + html.escape(json.dumps(cfg, indent=1)) + "</pre></details>")
    return "\n".join(body)


def _summary(rep: dict) -> str:
    rows = [(f"{sect}: {k}", v) for sect in ("protection", "appeal", "quality")
            for k, v in (rep.get(sect) or {}).items()]
    return ("<table class='summary'>" + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(report.fmt_value(v))}</td></tr>"
        for k, v in rows) + "</table>")


def _figures(rep: dict, out: Path) -> str:
    parts = []
    for f in rep.get("figures") or []:
        p = out / f
        if p.is_file():
            src = "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")
            parts.append(f'<figure class="fig"><img src="{src}" alt="{html.escape(f)}">'
                         f"<figcaption>{html.escape(f)}</figcaption></figure>")
    return "\n".join(parts)


_SCRIPT = """
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-js-error', String(e.message || e));
});
function sortBy(th) {
  var table = th.closest('table'), body = table.tBodies[0], i = th.cellIndex;
  var asc = th.getAttribute('data-sort') !== 'asc';
  Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.removeAttribute('data-sort'); });
  th.setAttribute('data-sort', asc ? 'asc' : 'desc');
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[i].getAttribute('data-v'), y = b.cells[i].getAttribute('data-v');
    var nx = parseFloat(x), ny = parseFloat(y), c;
    if (x === '' || y === '') { c = (x === '') - (y === ''); return c; }
    c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('.gallery img');
  var ok = Array.prototype.filter.call(imgs, function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.setAttribute('data-images-decoded', String(ok.length));
  document.body.setAttribute('data-ready', '1');
});
"""

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fff; color: #222; }
.banner { background: #fdd; border: 2px solid #c00; padding: .5em; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.card { margin: 0; padding: 6px; border: 3px solid #bbb; border-radius: 6px; width: 600px; }
.card.ok { border-color: #2a8a2a; } .card.fail { border-color: #c03030; }
.imgs { display: flex; gap: 4px; } .imgs img { width: 192px; height: auto; image-rendering: auto; }
figcaption { font-size: 12px; margin-top: 4px; }
table { border-collapse: collapse; font-size: 12px; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
#per-image th { cursor: pointer; background: #eee; } #per-image th[data-sort]::after { content: ' \\2195'; }
.fig img { max-width: 100%; } .legend { font-size: 12px; }
.legend span { display: inline-block; width: 240px; height: 12px; vertical-align: middle;
  background: linear-gradient(to right, #000004, #57106e, #bc3754, #f98e09, #fcffa4); }
"""


def render(rep: dict, thumbs: dict, out: Path) -> str:
    """The page of report ``rep`` (as ``report.json``) with ``thumbs[name]`` from
    :func:`thumbnails`; ``out``: where the figures are. Each difference is amplified to its own
    largest change (its caption says how many levels that is), so a change of one level is as
    visible as one of fifty, and an unchanged image stays black."""
    title = f"Pixel Privacy {rep['task']} evaluation: {rep.get('run_code') or rep['run']}"
    banner = (f'<p class="banner">{html.escape(report.STANDIN_BANNER.replace("**", ""))}</p>'
              if rep.get("standin") else "")
    rows = [r for r in rep.get("per_image", []) if r["name"] in thumbs][:MAX_GALLERY]
    cards = "\n".join(_card(r, thumbs[r["name"]]) for r in rows)
    left = len(rep.get("per_image", [])) - len(rows)
    more = f"<p>{left} more images are in the table only.</p>" if left > 0 else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body data-images="{len(rows)}">
<h1>{html.escape(title)}</h1>{banner}
<p>judge: {html.escape(str(rep.get('judge')))}; {rep['n_images']} images evaluated,
{rep['n_failed']} failed. {html.escape(rep.get('procedure', ''))}</p>
<h2>Settings</h2>{_settings(rep)}
<h2>Summary</h2>{_summary(rep)}
<h2>Images</h2>
<p class="legend">original | protected | |difference| per pixel (max over RGB), from 0 <span></span>
to the image's largest change (in its caption; black = unchanged). Border: green protected, red
not protected.</p>
<div class="gallery">{cards}</div>{more}
<h2>Per image (click a header to sort)</h2>{_table(rep.get('per_image', []))}
<h2>Figures</h2>{_figures(rep, out)}
<script>{_SCRIPT}</script>
</body></html>
"""


def write_html(out: Path, rep: dict, thumbs: dict) -> Path:
    """Write ``out/report.html`` (atomically); its path."""
    from ppjax.image.io import atomic_write_bytes

    path = Path(out) / "report.html"
    atomic_write_bytes(path, render(rep, thumbs, Path(out)).encode("utf-8"))
    return path
