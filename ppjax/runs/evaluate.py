"""``ppjax evaluate``: score a submission run exactly as the organisers did, plus quality metrics.

Procedure (see ``docs/TASKS.md`` of the shared docs):

* **2019**: top-1 of ResNet-50-Places365 on the submitted 8-bit PNGs, as they are (no resize: a
  PNG not at 256x256 is a per-file error). Accuracy = share of images whose top-1 equals the
  label; with the originals, the clean accuracy on them and the drop. Appeal: NIMA mean score
  (``nima_mobilenet``), with the image brought to NIMA as its original does
  (:func:`ppjax.attacks.appeal.appeal_input`: titu1994's script scores at native size).
* **2020**: each PNG is saved as JPEG quality 90 with Pillow and decoded
  (:func:`ppjax.image.jpeg.pil_jpeg`), then scored by KonCept512; accuracy = share of images scored
  > 50. The originals go through the same procedure for the clean figure.
* Quality vs originals (when given): PSNR, SSIM, mean CIEDE2000 (:mod:`ppjax.image.metrics`).
* What the organisers reported besides: 2019 the *relative* accuracy drop; 2020 whether the run
  cut the accuracy by at least 50% (``ranked``: only such runs were ranked on appeal).
* Submitted images may be ``.png``, ``.jpg`` or ``.jpeg``; a JPEG run is evaluated with a
  warning (saving as JPEG re-quantises the image and weakens the protection).

Labels: the list/labels files when given, else the label the protect run recorded, else the
judge's clean prediction on the original.

Outputs in ``--out``: ``report.json`` (every number, per image too), ``report.md``, and figures
(``grid.png``, ``heatmap.png``, ``hist_protection.png``, ``hist_nima.png``).
``ppjax evaluate --compare A B ... --out D`` writes ``compare.md`` / ``compare.json`` with the runs
(folders holding a ``report.json``) side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np

from ppjax.image import io as imageio
from ppjax.image import metrics
from ppjax.registry import Registry
from ppjax.runs import data, html_report, plots, report
from ppjax.runs.layout import RunFile, collect_run, verify_run
from ppjax.runs.progress import redirected

log = logging.getLogger("ppjax.runs.evaluate")

N_FIGURE_IMAGES = 8
JPEG_WARNING = ("{n} submitted image(s) are JPEG files: saving as JPEG re-quantises the "
                "protected pixels and weakens the protection; submit PNG")
RANKED_REDUCTION = 0.5  # 2020: runs that cut the accuracy by at least 50% were ranked on appeal


@functools.cache
def jitted_judge_calls():
    """``(logits, score)``: the jitted judge calls ``(judge, x) -> output``, made once per process
    so repeated evaluations (and ``ppjax.runs.transfer``) reuse their compilations."""
    import jax

    return jax.jit(lambda j, x: j(x)), jax.jit(lambda j, x: j.score(x))


def _mean(v):
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


def _accuracy(per_image: list[dict]) -> dict:
    """Accuracy on the labelled rows, clean accuracy and (relative) drop on rows with both."""
    lab = [r for r in per_image if r.get("correct") is not None]
    both = [r for r in lab if r.get("correct_clean") is not None]
    acc = (sum(r["correct"] for r in lab) / len(lab)) if lab else None
    acc_both = (sum(r["correct"] for r in both) / len(both)) if both else None
    acc_clean = (sum(r["correct_clean"] for r in both) / len(both)) if both else None
    drop = (acc_clean - acc_both) if both else None
    return {"acc": acc, "clean": acc_clean, "drop": drop, "n_labelled": len(lab),
            "rel": drop / acc_clean if both and acc_clean else None}


class TaskScorer:
    """How one task judges a batch of submitted images and summarises the run (one subclass per
    task, registered in :data:`SCORERS`). ``xa`` / ``xo`` are the submitted and original images
    ``[batch_size, H, W, 3]`` uint8 (padded); ``rows`` the report rows of the first ``len(rows)``
    images, filled in place (``score``, ``score_clean``, ``correct``, ``correct_clean``, ...)."""

    procedure: str = ""
    hist_title: str = ""
    hist_axis: str = ""

    def __init__(self, spec: data.TaskSpec):
        self.spec = spec

    def score(self, judge, xa: np.ndarray, xo: np.ndarray, rows: list[dict],
              have_o: list[bool]) -> None:
        raise NotImplementedError

    def protection(self, per_image: list[dict]) -> dict:
        raise NotImplementedError


SCORERS: Registry[type[TaskScorer]] = Registry("task scorer")


@SCORERS.register("2019")
class Top1Scorer(TaskScorer):
    """2019: top-1 of the scene classifier on the PNGs as submitted; accuracy = share with
    top-1 == label (the clean prediction on the original when no label is known); the organisers
    reported the relative drop too."""

    procedure = ("top-1 of the judge on the submitted 8-bit PNGs (no resize); accuracy = "
                 "share with top-1 == label")
    hist_title = "P(true label): before (clean) vs after (protected)"
    hist_axis = "probability"

    def score(self, judge, xa, xo, rows, have_o) -> None:
        import jax
        import jax.numpy as jnp

        logits_fn, n = jitted_judge_calls()[0], len(rows)
        la = np.asarray(logits_fn(judge, jnp.asarray(imageio.to_float01(xa))))[:n]
        lc = np.asarray(logits_fn(judge, jnp.asarray(imageio.to_float01(xo))))[:n]
        pa, pc = la.argmax(-1), lc.argmax(-1)
        prob_a = np.asarray(jax.nn.softmax(jnp.asarray(la), -1))
        prob_c = np.asarray(jax.nn.softmax(jnp.asarray(lc), -1))
        for i, row in enumerate(rows):
            if row["label"] is None and have_o[i]:
                row["label"], row["label_source"] = int(pc[i]), "clean prediction"
            row["pred"] = int(pa[i])
            row["pred_clean"] = int(pc[i]) if have_o[i] else None
            lab = row["label"]
            row["correct"] = None if lab is None else bool(pa[i] == lab)
            row["correct_clean"] = None if lab is None or not have_o[i] else bool(pc[i] == lab)
            row["score"] = None if lab is None else float(prob_a[i, lab])
            row["score_clean"] = None if lab is None or not have_o[i] else float(prob_c[i, lab])

    def protection(self, per_image) -> dict:
        a = _accuracy(per_image)
        return {"top1_accuracy": a["acc"], "top1_accuracy_clean": a["clean"],
                "accuracy_drop": a["drop"], "relative_accuracy_drop": a["rel"],
                "n_labelled": a["n_labelled"]}


@SCORERS.register("2020")
class BiqaScorer(TaskScorer):
    """2020: each image saved as Pillow JPEG (the task's quality) and decoded, then scored by the
    BIQA judge; accuracy = share scored above the threshold; a run is ``ranked`` (on appeal)
    when it cut the accuracy by at least :data:`RANKED_REDUCTION`."""

    hist_axis = "score"

    def __init__(self, spec: data.TaskSpec):
        super().__init__(spec)
        self.procedure = (f"Pillow JPEG quality {spec.jpeg_quality}, decode, judge score; "
                          f"accuracy = share scored > {spec.threshold:g}")
        self.hist_title = f"BIQA score after JPEG-{spec.jpeg_quality}: before vs after"

    def score(self, judge, xa, xo, rows, have_o) -> None:
        import jax.numpy as jnp

        from ppjax.image.jpeg import pil_jpeg

        score_fn, n, q, t = jitted_judge_calls()[1], len(rows), self.spec.jpeg_quality, self.spec.threshold
        sa = np.asarray(score_fn(judge, jnp.asarray(pil_jpeg(xa, q))))[:n]
        sc = np.asarray(score_fn(judge, jnp.asarray(pil_jpeg(xo, q))))[:n]
        for i, row in enumerate(rows):
            row["score"] = float(sa[i])
            row["score_clean"] = float(sc[i]) if have_o[i] else None
            row["correct"] = bool(sa[i] > t)
            row["correct_clean"] = bool(sc[i] > t) if have_o[i] else None

    def protection(self, per_image) -> dict:
        a = _accuracy(per_image)
        return {"biqa_accuracy_jpeg90": a["acc"], "biqa_accuracy_clean_jpeg90": a["clean"],
                "accuracy_drop": a["drop"], "relative_accuracy_drop": a["rel"],
                "ranked": None if a["rel"] is None else bool(a["rel"] >= RANKED_REDUCTION - 1e-12),
                "mean_score_jpeg90": _mean([r["score"] for r in per_image]),
                "mean_score_clean_jpeg90": _mean([r.get("score_clean") for r in per_image])}


def task_scorer(task: int) -> TaskScorer:
    """The :class:`TaskScorer` of ``task`` (2019 or 2020)."""
    return SCORERS[str(task)](data.get_task(task))


@dataclasses.dataclass
class Decoded:
    """A submitted image and its original, decoded (in a worker: :func:`decode_pair`)."""

    item: RunFile
    row: dict
    adv: np.ndarray | None
    orig: np.ndarray | None
    error: str | None = None


def decode_pair(f: RunFile, task: int, rule: str, max_pixels=None) -> Decoded:
    """Decode one submitted PNG (at the task's size: evaluation never resizes) and its
    original (by the run's resize rule); the report row's notes and label."""
    hw = data.get_task(task).hw
    row = {"name": f.name, "file": os.path.basename(f.path), "notes": list(f.notes)}
    try:
        a, notes = imageio.load_rgb(f.path, max_pixels)
        if a.shape[:2] != hw:
            raise imageio.DecodeError(
                f"submitted image is {a.shape[1]}x{a.shape[0]}, task {task} needs "
                f"{hw[1]}x{hw[0]} (evaluation never resizes)")
        row["notes"] += notes
    except imageio.DecodeError as e:
        return Decoded(f, row, None, None, str(e))
    o = None
    if f.original is not None:
        lo = data.load_item(f.original, task, rule, max_pixels)
        if lo.error:
            row["notes"].append(f"original unusable: {lo.error}")
        else:
            o = lo.image
            if not f.notes:  # a protect run's manifest says it already; a plain folder does not
                row["notes"] += [f"original: {n}" for n in lo.notes]
    row["label"] = f.original.label if f.original and f.original.label is not None else f.label
    row["label_source"] = ("list" if f.original and f.original.label is not None
                           else f.label_source if f.label is not None else None)
    return Decoded(f, row, a, o)


def padded_pair(decoded: list[Decoded], batch_size: int):
    """``(xa, xo, have_o)``: the submitted images and their originals (the submitted image where
    the original is missing) ``[batch_size, H, W, 3]`` uint8, padded by
    :func:`ppjax.parallel.pad_batch` so every judge call has one shape."""
    from ppjax.parallel import pad_batch

    have_o = [d.orig is not None for d in decoded]
    xa = pad_batch(np.stack([d.adv for d in decoded]), batch_size)
    xo = pad_batch(np.stack([d.orig if d.orig is not None else d.adv for d in decoded]), batch_size)
    return xa, xo, have_o


@dataclasses.dataclass
class _Judging:
    """What scores a run: the task's scorer, the judge, the appeal judge and its resize rule."""

    scorer: TaskScorer
    judge: object
    appeal: object | None
    appeal_rule: str | None
    batch_size: int

    def rows(self, ok: list[Decoded]) -> list[dict]:
        """Score one batch of decoded pairs; their report rows."""
        rows = [d.row for d in ok]
        xa, xo, have_o = padded_pair(ok, self.batch_size)
        self.scorer.score(self.judge, xa, xo, rows, have_o)
        if self.appeal is not None:
            from ppjax.attacks.appeal import appeal_scores

            na, nc = (appeal_scores(self.appeal, imageio.to_float01(x), self.batch_size,
                                    self.appeal_rule) for x in (xa, xo))
            for i, row in enumerate(rows):
                row["nima"] = float(na[i])
                row["nima_clean"] = float(nc[i]) if have_o[i] else None
        if any(have_o):
            m = metrics.all_metrics(imageio.to_float01(xo), imageio.to_float01(xa))
            for i, row in enumerate(rows):
                for k in ("psnr", "ssim", "ciede2000"):
                    row[k] = float(m[k][i]) if have_o[i] else None
        return rows


def _score_files(how: _Judging, files, task: int, rule: str, errors: list, bar):
    """Decode (worker pool) and score every file: ``(report rows, figure pairs)``; a file that
    cannot be read is appended to ``errors``."""
    from ppjax.runs import pipeline

    per_image, pairs, thumbs = [], [], {}
    decoded = pipeline.prefetch(files, task, rule, loader=decode_pair)
    for chunk in data.batched(decoded, how.batch_size):
        errors += [{"name": d.item.name, "error": d.error} for d in chunk if d.error is not None]
        ok = [d for d in chunk if d.error is None]
        if ok:
            per_image += how.rows(ok)
            pairs += [(d.row["name"], d.orig, d.adv) for d in ok
                      if d.orig is not None][:N_FIGURE_IMAGES - len(pairs)]
            thumbs.update({d.row["name"]: html_report.thumbnails(d.orig, d.adv) for d in ok
                           if d.orig is not None and len(thumbs) < html_report.MAX_GALLERY})
        bar.update(len(chunk))  # after the batch is scored: the bar tells what is done
    return per_image, pairs, thumbs


def _judges(task, judge, appeal, no_appeal, weights_dir, standin):
    """The task's judge and appeal judge (unless given); why the appeal score is missing."""
    import ppjax

    spec = data.get_task(task)
    if judge is None:
        judge = ppjax.load_judge(spec.judge, weights_dir, standin=standin)
    appeal_err = "skipped (no_appeal)" if no_appeal else None
    if appeal is None and not no_appeal:
        try:
            appeal = ppjax.load_judge(spec.appeal_judge, weights_dir, standin=standin or judge.standin)
        except Exception as e:  # the appeal score is optional: report why it is missing
            appeal_err = f"{type(e).__name__}: {e}"
    if appeal_err:
        log.warning("%sappeal judge unavailable: %s",
                    "STAND-IN: " if standin or judge.standin else "", appeal_err)
    return judge, appeal, appeal_err


def run_evaluate(task: int | str | None, run: str | os.PathLike, out: str | os.PathLike, *,
                 images=None, list_file=None, labels_file=None, run_code=None, standin=False,
                 weights_dir=None, batch_size: int = 4, judge=None, appeal=None,
                 no_appeal: bool = False, appeal_resize: str = "auto",
                 progress: bool = True, trust_files: bool = False) -> dict:
    """Evaluate one run; writes ``report.json``, ``report.md`` and figures to ``out`` and returns
    the report dict. ``judge`` / ``appeal`` (loaded :class:`ppjax.Judge` objects) replace the
    task's judges when given; ``no_appeal`` skips the appeal score; ``appeal_resize`` is how the
    appeal judge sees the images ("auto": as its original,
    :attr:`ppjax.judges.JudgeSpec.appeal_resize`; the report records the rule used).

    The files of a ``ppjax protect`` run are checked first (:func:`ppjax.runs.layout.verify_run`:
    each PNG against its manifest sha256, the zip against the PNGs); a file that fails is a
    per-file error and is not scored. ``trust_files`` skips the check."""
    from tqdm import tqdm

    from ppjax.attacks.appeal import appeal_resize_rule

    run, out = Path(run).resolve(), Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files, errors, cfg = collect_run(run, images, list_file, labels_file, run_code)
    if cfg and not trust_files:
        files, bad = verify_run(run, files, cfg)
        for e in bad:
            log.error("%s: %s", e["name"], e["error"])
        errors = errors + bad
    n_jpeg = sum(1 for f in files if Path(f.path).suffix.lower() in (".jpg", ".jpeg"))
    warnings = [JPEG_WARNING.format(n=n_jpeg)] if n_jpeg else []
    for w in warnings:
        log.warning(w)
    task = data.task_key(task or cfg.get("task") or 0)
    if data.get_task(task).hw is None:  # photos at their own size (task faces)
        from ppjax.runs.faces_eval import evaluate_faces

        return evaluate_faces(files, errors, cfg, out, run=run, run_code=run_code,
                              warnings=warnings, weights_dir=weights_dir, no_appeal=no_appeal,
                              judge=judge, progress=progress)
    judge, appeal, appeal_err = _judges(task, judge, appeal, no_appeal, weights_dir, standin)
    standin = standin or judge.standin
    tag = "STAND-IN: " if standin else ""
    how = _Judging(task_scorer(task), judge, appeal, None if appeal is None else
                   appeal_resize_rule(appeal, appeal_resize), batch_size)
    with redirected(progress), tqdm(total=len(files), unit="img", desc=f"{tag}evaluate",
                                    file=sys.stderr, disable=not progress,
                                    dynamic_ncols=True) as bar:
        per_image, pairs, thumbs = _score_files(how, files, task, cfg.get("resize", "auto"),
                                                errors, bar)
    rep = summarise(task, per_image, errors, run=run, cfg=cfg, run_code=run_code, judge=judge,
                    appeal=appeal, appeal_err=appeal_err, standin=standin)
    rep["warnings"] = warnings
    rep["files_verified"] = bool(cfg) and not trust_files
    rep["appeal"]["resize"] = how.appeal_rule
    rep["figures"] = _figures(out, how.scorer, per_image, pairs, appeal is not None,
                              "STAND-IN (random weights): " if standin else "")
    report.write_json(out / "report.json", rep)
    (out / "report.md").write_text(report.markdown_report(rep), encoding="utf-8")
    html_report.write_html(out, rep, thumbs)
    log.info("%sevaluated %d images (%d failed): %s", tag, rep["n_images"], rep["n_failed"],
             ", ".join(f"{k}={report.fmt_value(v)}" for k, v in rep["protection"].items()))
    return rep


def summarise(task: int, per_image: list[dict], errors: list[dict], *, run="", cfg=None,
              run_code=None, judge=None, appeal=None, appeal_err=None, standin=False) -> dict:
    """The report of a run from its scored rows (``per_image``, as :class:`TaskScorer` fills
    them) and per-file ``errors``: protection (the task's measures), appeal, quality."""
    cfg = cfg or {}
    appeal_d = ({"nima_mean": _mean([r.get("nima") for r in per_image]),
                 "nima_mean_clean": _mean([r.get("nima_clean") for r in per_image])}
                if appeal is not None else {"nima_mean": None})
    psnrs = [r.get("psnr") for r in per_image if r.get("psnr") is not None]
    quality = {"psnr_mean": _mean(psnrs),
               "n_identical": sum(1 for v in psnrs if not math.isfinite(v)),
               "ssim_mean": _mean([r.get("ssim") for r in per_image]),
               "ciede2000_mean": _mean([r.get("ciede2000") for r in per_image])}
    scorer = task_scorer(task)
    return {
        "task": task, "run": str(run), "run_code": run_code or cfg.get("run_code"),
        "standin": bool(standin or cfg.get("standin")), "judge": getattr(judge, "label", None),
        "appeal_judge": appeal.label if appeal is not None else None,
        "appeal_unavailable": appeal_err, "procedure": scorer.procedure,
        "protect_config": cfg or None,
        "n_images": len(per_image), "n_failed": len(errors),
        "protection": scorer.protection(per_image), "appeal": appeal_d, "quality": quality,
        "errors": errors, "per_image": per_image,
    }


def _figures(out: Path, scorer: TaskScorer, per_image, pairs, have_nima, tag: str = ""
             ) -> list[str]:
    """Figures of the report; ``tag`` prefixes every title (STAND-IN runs say so on the image)."""
    figs = []
    if pairs:
        captions = {r["name"]: report.image_caption(r) for r in per_image}
        plots.before_after_grid(pairs, out / "grid.png", captions=captions,
                                 title=tag + "original | protected | |difference|")
        plots.perturbation_heatmap(pairs, out / "heatmap.png", tag=tag)
        plots.diff_histogram(pairs, out / "hist_change.png", tag=tag)
        figs += ["grid.png", "heatmap.png", "hist_change.png"]
    before = [r.get("score_clean") for r in per_image]
    after = [r.get("score") for r in per_image]
    names = [r["name"] for r in per_image]
    if any(v is not None for v in before + after):
        plots.histogram(before, after, out / "hist_protection.png", tag + scorer.hist_title,
                         scorer.hist_axis, threshold=scorer.spec.threshold, names=names)
        figs.append("hist_protection.png")
    if have_nima:
        plots.histogram([r.get("nima_clean") for r in per_image],
                         [r.get("nima") for r in per_image], out / "hist_nima.png",
                         tag + "NIMA mean score: before vs after", "NIMA score", names=names)
        figs.append("hist_nima.png")
    return figs


def run_compare(runs, out) -> dict:
    """Runs side by side: each of ``runs`` is a folder with ``report.json`` (or the file)."""
    reps = []
    for r in runs:
        p = Path(r)
        p = p / "report.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"{r}: no report.json; run `ppjax evaluate --run ...` first")
        rep = json.loads(p.read_text(encoding="utf-8"))
        rep.pop("per_image", None)
        rep["_source"] = str(r)
        reps.append(rep)
    tasks = sorted({rep.get("task") for rep in reps}, key=str)
    if len(tasks) > 1:
        by_task = "; ".join(f"{t}: " + ", ".join(x["_source"] for x in reps if x.get("task") == t)
                            for t in tasks)
        raise ValueError(f"--compare mixes tasks ({by_task}); 2019 accuracy (top-1 of the scene "
                         "classifier) and 2020 accuracy (share scored > 50 after JPEG-90) are "
                         "different measures: compare runs of one task at a time")
    for rep in reps:
        rep.pop("_source")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = report.compare_markdown(reps)
    (out / "compare.md").write_text(table, encoding="utf-8")
    keys = ("task", "run", "run_code", "standin", "judge", "n_images", "n_failed", "protection",
            "appeal", "quality")
    res = {"runs": [{k: r.get(k) for k in keys} for r in reps]}
    report.write_json(out / "compare.json", res)
    return res
