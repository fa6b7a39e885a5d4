"""The faces task's ``report.md`` and its figure: each photo with MTCNN's boxes before (on the
original) and after (on the protected PNG and after the upload pipeline)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ppjax.runs import report

TILE_H = 240
COLOURS = {"clean": (0, 200, 0), "png": (230, 0, 0), "upload": (230, 0, 0)}


def draw_boxes(img: np.ndarray, boxes, colour, scale: float = 1.0, label: str = ""):
    """A PIL image of ``img`` resized by ``scale`` with ``boxes`` ([N, 4] x1 y1 x2 y2 in
    ``img``'s pixels) outlined and ``label`` written at the top left."""
    from PIL import Image, ImageDraw

    h, w = img.shape[:2]
    im = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                     Image.BILINEAR)
    d = ImageDraw.Draw(im)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4) * scale:
        d.rectangle([x1, y1, x2, y2], outline=colour, width=3)
    if label:
        d.rectangle([0, 0, 8 + 6 * len(label), 14], fill=(0, 0, 0))
        d.text((4, 2), label, fill=(255, 255, 255))
    return im


def boxes_figure(panels, path: Path) -> Path:
    """One row per photo: original with its faces | protected PNG with the faces still found |
    after the upload pipeline. ``panels``: ``(name, original or None, protected, boxes)``."""
    from PIL import Image

    rows = []
    for name, orig, adv, boxes in panels:
        s = TILE_H / adv.shape[0]
        tiles = []
        if orig is not None:
            tiles.append(draw_boxes(orig, boxes.get("clean", []), COLOURS["clean"], s,
                                    f"{name}: before, {len(boxes.get('clean', []))} face(s)"))
        for k, what in (("png", "protected PNG"), ("upload", "after upload")):
            tiles.append(draw_boxes(adv, boxes.get(k, []), COLOURS[k], s,
                                    f"{what}: {len(boxes.get(k, []))} found"))
        rows.append(tiles)
    width = max(sum(t.width for t in r) + 4 * len(r) for r in rows)
    fig = Image.new("RGB", (width, (TILE_H + 4) * len(rows)), (255, 255, 255))
    for i, r in enumerate(rows):
        x = 0
        for t in r:
            fig.paste(t, (x, i * (TILE_H + 4)))
            x += t.width + 4
    fig.save(path)
    return path


def figures(out: Path, panels) -> list[str]:
    """The report's figures in ``out`` (names relative to it)."""
    if not panels:
        return []
    boxes_figure(panels, out / "faces_boxes.png")
    return ["faces_boxes.png"]


def _row(r: dict) -> list:
    cells = [r["name"], f"{r['size'][0]}x{r['size'][1]}", r.get("faces_clean")]
    for k in ("png", "jpeg90", "upload"):
        cells.append(f"{r.get(f'found_{k}', '-')}/{r.get(f'faces_{k}')}")
    cells.append(f"{r.get('haar_clean', '-')}→{r.get('haar_found_png', '-')}/"
                 f"{r.get('haar_found_upload', '-')}")
    cells += [r.get("linf_levels"), r.get("ssim"), r.get("ciede2000"), r.get("nima")]
    return cells


def markdown(rep: dict) -> str:
    """``report.md`` of a faces run."""
    out = [f"# Faces evaluation: {rep.get('run_code') or rep['run']}", "",
           f"- run: `{rep['run']}`", f"- judge: {rep['judge']} (real, trained weights)",
           f"- procedure: {rep['procedure']}",
           f"- appeal: {rep.get('appeal_judge') or rep.get('appeal_unavailable')}",
           f"- images evaluated: {rep['n_images']}, failed: {rep['n_failed']}",
           f"- Haar (independent check): {rep.get('haar_unavailable') or 'OpenCV cascade'}", "",
           "## Protection (lower found rates are better)", "",
           report.markdown_table(["metric", "value"], list(rep["protection"].items())), "",
           "## Quality vs originals", "",
           report.markdown_table(["metric", "value"],
                                 list({**rep["appeal"], **rep["quality"]}.items()))]
    out += ["", "## Per image", "",
            "Faces columns: clean faces still found / faces found, by MTCNN; Haar: clean → "
            "still found on the PNG / after upload.", "",
            report.markdown_table(["image", "size", "faces", "png", "jpeg90", "upload", "haar",
                                   "linf", "ssim", "ciede2000", "nima"],
                                  [_row(r) for r in rep["per_image"]])]
    if rep.get("figures"):
        out += ["", "## Boxes before and after", "",
                "Green: faces MTCNN finds in the original; red: faces it still finds."]
        out += [f"![{Path(f).stem}]({f})" for f in rep["figures"]]
    noted = [r for r in rep["per_image"] if r.get("notes")]
    if noted:
        out += ["", "## Notes", "", report.markdown_table(
            ["image", "notes"], [[r["name"], "; ".join(r["notes"])] for r in noted])]
    if rep.get("errors"):
        out += ["", "## Errors (per file)", "", report.markdown_table(
            ["image", "error"], [[e["name"], e["error"]] for e in rep["errors"]])]
    return "\n".join(out) + "\n"
