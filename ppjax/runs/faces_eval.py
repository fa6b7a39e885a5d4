"""``ppjax evaluate --task faces``: are the faces still found? (docs/faces.md)

Per photo (the protected PNG and its original, both as ``ppjax protect`` saw them: at their own
size, downscaled to 2048 px on the long side when larger):

* **MTCNN** (the cascade at its default thresholds, 0.6/0.7/0.7) on the original (``faces_clean``),
  on the saved 8-bit PNG, after Pillow JPEG-90 and after the upload pipeline (the named
  pipelines of :mod:`ppjax.image.upload`): faces found (``faces_<view>``) and clean faces
  still found (``found_<view>``: matched one-to-one at IoU >= 0.4,
  :data:`ppjax.faces.haar.MATCH_IOU`; boxes found on a resized copy mapped back first);
* **Haar** (OpenCV's cascade, an independent, non-CNN detector): the same counts
  (``haar_clean``, ``haar_<view>``, ``haar_found_<view>``);
* distortion: Linf (8-bit levels), L2 (in [0, 1] units), SSIM, mean CIEDE2000
  (:mod:`ppjax.image.metrics`);
* appeal: the NIMA mean only when NIMA's **real** weights are converted. A stand-in NIMA's
  figure would mean nothing, so the report then says the appeal is unavailable and why.

Rates: ``found_rate_<view>`` = clean faces still found / clean faces (lower is better
protection); ``hidden_images_<view>`` = photos with faces where none is found any more. A photo
with no face in the original is counted under ``no_face`` and in no rate.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from ppjax.image import io as imageio
from ppjax.runs import data, faces_detect, report

log = logging.getLogger("ppjax.runs.faces_eval")

VIEWS = ("png", "jpeg90", "upload")
PROCEDURE = ("MTCNN cascade (facenet-pytorch 2.6.0 weights, thresholds 0.6/0.7/0.7, min face 20) "
             "and OpenCV Haar on the original, the saved PNG, after Pillow JPEG-90 and after the "
             "upload pipeline; a clean face counts as still found when a face is found at IoU "
             ">= 0.4")
N_FIGURE = 12


def view_images(adv: np.ndarray) -> dict[str, np.ndarray]:
    """The protected photo as each :data:`VIEWS` entry sees it."""
    return {"png": adv, **{k: faces_detect.pipeline(k)(adv) for k in VIEWS[1:]}}


def count_views(judge, views: dict, clean, haar_clean, hw) -> tuple[dict, dict]:
    """``(row fields, boxes per view in hw's pixels)``: faces found and clean faces still found
    per view, by MTCNN and by Haar. ``clean``: the original's boxes (None: no original, so no
    ``found`` counts); ``haar_clean``: Haar's on the original (None: no Haar counts)."""
    row, boxes = {}, {}
    for k, v in views.items():
        b = faces_detect.rescale(faces_detect.detect(judge, v)[0], v.shape[:2], hw)
        boxes[k] = b
        row[f"faces_{k}"] = len(b)
        if clean is not None:
            row[f"found_{k}"] = faces_detect.count_found(clean, b)
        if haar_clean is not None:
            hb = faces_detect.rescale(faces_detect.haar(v), v.shape[:2], hw)
            row[f"haar_{k}"] = len(hb)
            row[f"haar_found_{k}"] = faces_detect.count_found(haar_clean, hb)
    return row, boxes


def distortion(adv: np.ndarray, orig: np.ndarray) -> dict:
    """Linf (levels), L2 ([0, 1] units), SSIM and mean CIEDE2000 of ``adv`` vs ``orig``."""
    import jax.numpy as jnp

    from ppjax.image import metrics

    x, y = imageio.to_float01(adv)[None], imageio.to_float01(orig)[None]
    return {"linf_levels": int(np.abs(adv.astype(np.int16) - orig.astype(np.int16)).max()),
            "l2": float(np.sqrt(np.sum((x - y) ** 2))),
            "ssim": float(metrics.ssim(jnp.asarray(x), jnp.asarray(y))[0]),
            "ciede2000": float(metrics.ciede2000_mean(jnp.asarray(x), jnp.asarray(y))[0])}


def measure(judge, adv: np.ndarray, orig: np.ndarray | None, appeal=None,
            haar: bool = True) -> tuple[dict, dict]:
    """One photo's row (see the module docstring) and its boxes (``clean`` and per view);
    ``haar=False`` (OpenCV without its cascades) leaves out the Haar counts."""
    row, boxes = {"size": [adv.shape[1], adv.shape[0]]}, {}
    clean = haar_clean = None
    if orig is not None:
        clean = faces_detect.detect(judge, orig)[0]
        boxes["clean"] = clean
        row.update(faces_clean=len(clean), no_face=len(clean) == 0, **distortion(adv, orig))
        if haar:
            haar_clean = faces_detect.haar(orig)
            row["haar_clean"] = len(haar_clean)
    more, view_boxes = count_views(judge, view_images(adv), clean, haar_clean, adv.shape[:2])
    row.update(more)
    boxes.update(view_boxes)
    if appeal is not None:
        from ppjax.attacks.objectives import appeal_score

        row["nima"] = float(appeal_score(appeal, imageio.to_float01(adv)[None])[0])
        if orig is not None:
            row["nima_clean"] = float(appeal_score(appeal, imageio.to_float01(orig)[None])[0])
    return row, boxes


def real_appeal(weights_dir, no_appeal: bool):
    """``(appeal judge or None, why unavailable)``: NIMA only with its real weights."""
    import ppjax
    from ppjax.judges import judge_dir

    name = data.get_task("faces").appeal_judge
    if no_appeal:
        return None, "skipped (no_appeal)"
    if not (judge_dir(name, weights_dir) / "metadata.json").exists():
        return None, (f"unavailable: {name}'s real weights are not converted here (ppjax fetch "
                      f"{name}); a stand-in NIMA figure would mean nothing, so none is reported")
    try:
        return ppjax.load_judge(name, weights_dir), None
    except Exception as e:  # the appeal figure is optional: say why it is missing
        return None, f"unavailable: {type(e).__name__}: {e}"


def _decode(f, max_pixels=None):
    """``(protected, original or None, notes)`` of a run file, or raises DecodeError."""
    adv, notes = imageio.load_rgb(f.path, max_pixels)
    orig = None
    if f.original is not None:
        lo = data.load_item(f.original, "faces", max_pixels=max_pixels)
        if lo.error:
            notes.append(f"original unusable: {lo.error}")
        elif lo.image.shape != adv.shape:
            raise imageio.DecodeError(
                f"protected image is {adv.shape[1]}x{adv.shape[0]}, its original (as protect "
                f"sees it) {lo.image.shape[1]}x{lo.image.shape[0]}: not the same photo?")
        else:
            orig = lo.image
    return adv, orig, list(f.notes) + notes


def score_files(judge, appeal, files, errors: list, progress: bool = True, haar: bool = True):
    """Rows of every decodable file (errors appended to ``errors``) and the figure's panels
    ``(name, original, protected, boxes)`` of the first :data:`N_FIGURE`."""
    from tqdm import tqdm

    rows, panels = [], []
    for f in tqdm(files, unit="img", desc="evaluate faces", file=sys.stderr,
                  disable=not progress, dynamic_ncols=True):
        try:
            adv, orig, notes = _decode(f)
        except imageio.DecodeError as e:
            log.error("%s: %s", f.name, e)
            errors.append({"name": f.name, "error": str(e)})
            continue
        row, boxes = measure(judge, adv, orig, appeal, haar)
        rows.append({"name": f.name, "file": Path(f.path).name, "notes": notes, **row})
        if len(panels) < N_FIGURE:
            panels.append((f.name, orig, adv, boxes))
    return rows, panels


def _rate(rows, num: str, den: str):
    d = sum(r.get(den) or 0 for r in rows if r.get(num) is not None)
    return sum(r[num] for r in rows if r.get(num) is not None) / d if d else None


def protection(rows: list[dict]) -> dict:
    """The summary rates of a faces run (see the module docstring)."""
    with_faces = [r for r in rows if r.get("faces_clean")]
    out = {"faces_clean": sum(r.get("faces_clean") or 0 for r in rows),
           "images_with_faces": len(with_faces),
           "no_face": sum(1 for r in rows if r.get("no_face"))}
    for k in VIEWS:
        out[f"found_rate_{k}"] = _rate(rows, f"found_{k}", "faces_clean")
        out[f"hidden_images_{k}"] = (sum(1 for r in with_faces if r.get(f"found_{k}") == 0)
                                     / len(with_faces) if with_faces else None)
    out["haar_faces_clean"] = sum(r.get("haar_clean") or 0 for r in rows)
    for k in VIEWS:
        out[f"haar_found_rate_{k}"] = _rate(rows, f"haar_found_{k}", "haar_clean")
    return out


def _mean(rows, k):
    v = [r[k] for r in rows if r.get(k) is not None]
    return float(np.mean(v)) if v else None


def summarise(rows, errors, *, run, cfg, run_code, judge, appeal, appeal_err, warnings) -> dict:
    """``report.json`` of a faces run."""
    return {
        "task": "faces", "run": str(run), "run_code": run_code or cfg.get("run_code"),
        "standin": False, "judge": judge.label,
        "appeal_judge": appeal.label if appeal is not None else None,
        "appeal_unavailable": appeal_err, "procedure": PROCEDURE, "protect_config": cfg or None,
        "n_images": len(rows), "n_failed": len(errors), "protection": protection(rows),
        "appeal": {"nima_mean": _mean(rows, "nima"), "nima_mean_clean": _mean(rows, "nima_clean")},
        "quality": {"linf_levels_max": max((r["linf_levels"] for r in rows
                                            if "linf_levels" in r), default=None),
                    "l2_mean": _mean(rows, "l2"), "ssim_mean": _mean(rows, "ssim"),
                    "ciede2000_mean": _mean(rows, "ciede2000")},
        "warnings": warnings, "errors": errors, "per_image": rows,
    }


def evaluate_faces(files, errors, cfg, out: Path, *, run, run_code=None, warnings=(),
                   weights_dir=None, no_appeal=False, judge=None, progress=True) -> dict:
    """Evaluate a faces run (``files`` from :func:`ppjax.runs.layout.collect_run`); writes
    ``report.json``, ``report.md`` and ``faces_boxes.png`` to ``out``; returns the report."""
    import ppjax
    from ppjax.runs import faces_report

    judge = judge or ppjax.load_judge(data.get_task("faces").judge, weights_dir)
    appeal, appeal_err = real_appeal(weights_dir, no_appeal)
    if appeal_err:
        log.warning("appeal %s", appeal_err)
    haar_err = faces_detect.haar_unavailable()
    if haar_err:
        log.warning("Haar counts left out: %s", haar_err)
    rows, panels = score_files(judge, appeal, files, errors, progress, haar=haar_err is None)
    rep = summarise(rows, errors, run=run, cfg=cfg, run_code=run_code, judge=judge,
                    appeal=appeal, appeal_err=appeal_err, warnings=list(warnings))
    rep["haar_unavailable"] = haar_err
    rep["figures"] = faces_report.figures(out, panels)
    report.write_json(out / "report.json", rep)
    (out / "report.md").write_text(faces_report.markdown(rep), encoding="utf-8")
    return rep
