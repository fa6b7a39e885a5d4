"""``ppjax evaluate``: score a submission run exactly as the organisers did, plus quality metrics.

Procedure (see ``docs/TASKS.md`` of the shared docs):

* **2019**: top-1 of ResNet-50-Places365 on the submitted 8-bit PNGs, as they are (no resize: a
  PNG not at 256x256 is a per-file error). Accuracy = share of images whose top-1 equals the
  label; with the originals, the clean accuracy on them and the drop. Appeal: NIMA mean score
  (``nima_mobilenet``), with the image brought to NIMA as its original does
  (:func:`ppjax.attacks.objectives.appeal_input`: titu1994's script scores at native size).
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
from ppjax.runs import data, report, transfer
from ppjax.runs.protect import CONFIG, IMAGES, read_manifests, safe_stem

log = logging.getLogger("ppjax.runs.evaluate")

N_FIGURE_IMAGES = 8
RUN_SUFFIXES = (".png", ".jpg", ".jpeg")
JPEG_WARNING = ("{n} submitted image(s) are JPEG files: saving as JPEG re-quantises the "
                "protected pixels and weakens the protection; submit PNG")
RANKED_REDUCTION = 0.5  # 2020: runs that cut the accuracy by at least 50% were ranked on appeal


@dataclasses.dataclass(frozen=True)
class RunFile:
    """One submitted image: its ``name`` (original name when known), the PNG ``path``, the
    matching original :class:`ppjax.runs.data.Item` (or None) and the label recorded by protect."""

    name: str
    path: str
    original: data.Item | None
    label: int | None = None
    label_source: str | None = None
    notes: tuple[str, ...] = ()


def _strip_run_code(stem: str, run_code: str | None) -> str:
    if run_code and stem.startswith(run_code + "_"):
        return stem[len(run_code) + 1:]
    return stem


def collect_run(run: Path, images=None, list_file=None, labels_file=None, run_code=None
                ) -> tuple[list[RunFile], list[dict], dict]:
    """The files of a run folder: a ``ppjax protect`` output (``config.json`` + manifest) or a
    plain folder of ``<runcode>_<stem>.png``. Returns ``(files, errors, config)``."""
    cfg = {}
    if (run / CONFIG).exists():
        cfg = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    images = images or cfg.get("images")
    if images and not (list_file or labels_file) and images == cfg.get("images"):
        list_file, labels_file = cfg.get("list_file"), cfg.get("labels_file")
    originals = data.dataset_items(images, list_file, labels_file) if images else []
    run_code = run_code or cfg.get("run_code")
    errors: list[dict] = []
    files: list[RunFile] = []
    manifest = read_manifests(run)
    if cfg and manifest:
        by_name = {it.name: it for it in originals}
        for name, e in sorted(manifest.items()):
            if e.get("status") != "ok":
                errors.append({"name": name, "error": f"not in the run (protect: {e.get('error')})"})
                continue
            files.append(RunFile(name, str(run / IMAGES / e["output"]), by_name.get(name),
                                 e.get("label"), e.get("label_source"),
                                 tuple(e.get("notes") or ())))
        files.sort(key=lambda f: f.name)
        return files, errors, cfg
    folder = run / IMAGES if (run / IMAGES).is_dir() else run
    by_stem = {safe_stem(it.name): it for it in originals}
    found = [q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in RUN_SUFFIXES]
    for p in sorted(found, key=lambda q: q.name):
        stem = _strip_run_code(p.stem, run_code)
        orig = by_stem.get(stem)
        if orig is None and not run_code:
            # unknown run code: the longest suffix after an underscore that names an original
            parts = p.stem.split("_")
            for k in range(1, len(parts)):
                orig = by_stem.get("_".join(parts[k:]))
                if orig is not None:
                    break
        files.append(RunFile(orig.name if orig else p.name, str(p), orig))
    return files, errors, cfg


@functools.cache
def _jitted():
    """Jitted judge calls, made once per process so repeated evaluations reuse compilations."""
    import jax

    from ppjax.attacks.objectives import appeal_score

    return (jax.jit(lambda j, x: j(x)), jax.jit(lambda j, x: j.score(x)),
            jax.jit(appeal_score, static_argnums=2))


def _load_appeal(name, weights_dir, standin):
    import ppjax

    try:
        return ppjax.load_judge(name, weights_dir, standin=standin), None
    except Exception as e:  # the appeal score is optional: report why it is missing
        return None, f"{type(e).__name__}: {e}"


def _mean(v):
    v = [x for x in v if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else None


@dataclasses.dataclass
class _Decoded:
    """A submitted image and its original, decoded (in a worker: :func:`_decode_pair`)."""

    item: RunFile
    row: dict
    adv: np.ndarray | None
    orig: np.ndarray | None
    error: str | None = None


def _decode_pair(f: RunFile, task: int, rule: str, max_pixels=None) -> _Decoded:
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
        return _Decoded(f, row, None, None, str(e))
    o = None
    if f.original is not None:
        lo = data.load_item(f.original, task, rule, max_pixels)
        if lo.error:
            row["notes"].append(f"original unusable: {lo.error}")
        else:
            o = lo.image
    row["label"] = f.original.label if f.original and f.original.label is not None else f.label
    row["label_source"] = ("list" if f.original and f.original.label is not None
                           else f.label_source if f.label is not None else None)
    return _Decoded(f, row, a, o)


def run_evaluate(task: int | None, run: str | os.PathLike, out: str | os.PathLike, *,
                 images=None, list_file=None, labels_file=None, run_code=None, standin=False,
                 weights_dir=None, batch_size: int = 4, judge=None, appeal=None,
                 no_appeal: bool = False, appeal_resize: str = "auto",
                 progress: bool = True) -> dict:
    """Evaluate one run; writes ``report.json``, ``report.md`` and figures to ``out`` and returns
    the report dict. ``judge`` / ``appeal`` (loaded :class:`ppjax.Judge` objects) replace the
    task's judges when given; ``no_appeal`` skips the appeal score; ``appeal_resize`` is how the
    appeal judge sees the images ("auto": as its original,
    :data:`ppjax.attacks.objectives.APPEAL_RESIZE`; the report records the rule used)."""
    import jax
    import jax.numpy as jnp

    import ppjax
    from ppjax.attacks.objectives import appeal_resize_rule

    run = Path(run).resolve()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    files, errors, cfg = collect_run(run, images, list_file, labels_file, run_code)
    warnings = []
    n_jpeg = sum(1 for f in files if Path(f.path).suffix.lower() in (".jpg", ".jpeg"))
    if n_jpeg:
        warnings.append(JPEG_WARNING.format(n=n_jpeg))
        log.warning(warnings[-1])
    task = int(task or cfg.get("task") or 0)
    spec = data.get_task(task)
    if judge is None:
        judge = ppjax.load_judge(spec.judge, weights_dir, standin=standin)
    standin = standin or judge.standin
    tag = "STAND-IN: " if standin else ""
    appeal_err = "skipped (no_appeal)" if no_appeal else None
    if appeal is None and not no_appeal:
        appeal, appeal_err = _load_appeal(spec.appeal_judge, weights_dir, standin)
    if appeal_err:
        log.warning("%sappeal judge unavailable: %s", tag, appeal_err)
    rule = cfg.get("resize", "auto")

    logits_fn, score_fn, appeal_fn = _jitted()
    appeal_rule = appeal_resize_rule(appeal, appeal_resize) if appeal is not None else None
    per_image: list[dict] = []
    pairs = []
    from tqdm import tqdm

    from ppjax.runs import pipeline

    bar = tqdm(total=len(files), unit="img", desc=f"{tag}evaluate", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    decoded = pipeline.prefetch(files, task, rule, loader=_decode_pair)
    for chunk in data.batched(decoded, batch_size):
        rows, adv, orig = [], [], []
        for d in chunk:
            bar.update(1)
            if d.error is not None:
                errors.append({"name": d.item.name, "error": d.error})
                continue
            rows.append(d.row)
            adv.append(d.adv)
            orig.append(d.orig)
        if not rows:
            continue
        n = len(rows)
        pad = batch_size - n
        xa = np.stack(adv + [adv[-1]] * pad)
        have_o = [o is not None for o in orig]
        xo = np.stack([o if o is not None else a for o, a in zip(orig, adv, strict=True)]
                      + [adv[-1]] * pad)
        if task == 2019:
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
                row["score_clean"] = (None if lab is None or not have_o[i]
                                      else float(prob_c[i, lab]))
        else:
            from ppjax.image.jpeg import pil_jpeg

            q = spec.jpeg_quality
            sa = np.asarray(score_fn(judge, jnp.asarray(pil_jpeg(xa, q))))[:n]
            sc = np.asarray(score_fn(judge, jnp.asarray(pil_jpeg(xo, q))))[:n]
            for i, row in enumerate(rows):
                row["score"] = float(sa[i])
                row["score_clean"] = float(sc[i]) if have_o[i] else None
                row["correct"] = bool(sa[i] > spec.threshold)
                row["correct_clean"] = bool(sc[i] > spec.threshold) if have_o[i] else None
        if appeal is not None:
            na = np.asarray(appeal_fn(appeal, jnp.asarray(imageio.to_float01(xa)), appeal_rule))[:n]
            nc = np.asarray(appeal_fn(appeal, jnp.asarray(imageio.to_float01(xo)), appeal_rule))[:n]
            for i, row in enumerate(rows):
                row["nima"] = float(na[i])
                row["nima_clean"] = float(nc[i]) if have_o[i] else None
        if any(have_o):
            m = metrics.all_metrics(imageio.to_float01(xo), imageio.to_float01(xa))
            for i, row in enumerate(rows):
                for k in ("psnr", "ssim", "ciede2000"):
                    row[k] = float(m[k][i]) if have_o[i] else None
        for i, row in enumerate(rows):
            if have_o[i] and len(pairs) < N_FIGURE_IMAGES:
                pairs.append((row["name"], orig[i], adv[i]))
        per_image.extend(rows)

    bar.close()
    rep = _summarise(task, spec, run, cfg, run_code, judge, appeal, appeal_err, standin,
                     per_image, errors)
    rep["warnings"] = warnings
    rep["appeal"]["resize"] = appeal_rule
    figs = _figures(out, task, spec, per_image, pairs, appeal is not None,
                    "STAND-IN (random weights): " if standin else "")
    rep["figures"] = figs
    report.write_json(out / "report.json", rep)
    (out / "report.md").write_text(report.markdown_report(rep), encoding="utf-8")
    p = rep["protection"]
    log.info("%sevaluated %d images (%d failed): %s", tag, rep["n_images"], rep["n_failed"],
             ", ".join(f"{k}={report._fmt(v)}" for k, v in p.items()))
    return rep


def _summarise(task, spec, run, cfg, run_code, judge, appeal, appeal_err, standin, per_image,
               errors) -> dict:
    lab = [r for r in per_image if r.get("correct") is not None]
    both = [r for r in lab if r.get("correct_clean") is not None]
    acc = (sum(r["correct"] for r in lab) / len(lab)) if lab else None
    acc_both = (sum(r["correct"] for r in both) / len(both)) if both else None
    acc_clean = (sum(r["correct_clean"] for r in both) / len(both)) if both else None
    drop = (acc_clean - acc_both) if both else None
    rel = drop / acc_clean if both and acc_clean else None
    if task == 2019:
        procedure = ("top-1 of the judge on the submitted 8-bit PNGs (no resize); accuracy = "
                     "share with top-1 == label")
        prot = {"top1_accuracy": acc, "top1_accuracy_clean": acc_clean,
                "accuracy_drop": drop, "relative_accuracy_drop": rel,
                "n_labelled": len(lab)}
    else:
        procedure = (f"Pillow JPEG quality {spec.jpeg_quality}, decode, judge score; accuracy = "
                     f"share scored > {spec.threshold:g}")
        prot = {"biqa_accuracy_jpeg90": acc, "biqa_accuracy_clean_jpeg90": acc_clean,
                "accuracy_drop": drop, "relative_accuracy_drop": rel,
                "ranked": None if rel is None else bool(rel >= RANKED_REDUCTION - 1e-12),
                "mean_score_jpeg90": _mean([r["score"] for r in per_image]),
                "mean_score_clean_jpeg90": _mean([r.get("score_clean") for r in per_image])}
    appeal_d = ({"nima_mean": _mean([r.get("nima") for r in per_image]),
                 "nima_mean_clean": _mean([r.get("nima_clean") for r in per_image])}
                if appeal is not None else {"nima_mean": None})
    psnrs = [r.get("psnr") for r in per_image if r.get("psnr") is not None]
    quality = {"psnr_mean": _mean(psnrs),
               "n_identical": sum(1 for v in psnrs if not math.isfinite(v)),
               "ssim_mean": _mean([r.get("ssim") for r in per_image]),
               "ciede2000_mean": _mean([r.get("ciede2000") for r in per_image])}
    return {
        "task": task, "run": str(run), "run_code": run_code or cfg.get("run_code"),
        "standin": bool(standin or cfg.get("standin")), "judge": judge.label,
        "appeal_judge": appeal.label if appeal is not None else None,
        "appeal_unavailable": appeal_err, "procedure": procedure,
        "protect_config": cfg or None,
        "n_images": len(per_image), "n_failed": len(errors),
        "protection": prot, "appeal": appeal_d, "quality": quality,
        "errors": errors, "per_image": per_image,
    }


def _figures(out: Path, task, spec, per_image, pairs, have_nima, tag: str = "") -> list[str]:
    """Figures of the report; ``tag`` prefixes every title (STAND-IN runs say so on the image)."""
    figs = []
    if pairs:
        report.before_after_grid(pairs, out / "grid.png",
                                 title=tag + "original | protected | |difference|")
        report.perturbation_heatmap(pairs, out / "heatmap.png", tag=tag)
        figs += ["grid.png", "heatmap.png"]
    before = [r.get("score_clean") for r in per_image]
    after = [r.get("score") for r in per_image]
    if any(v is not None for v in before + after):
        if task == 2019:
            report.histogram(before, after, out / "hist_protection.png",
                             tag + "P(true label): before (clean) vs after (protected)", "probability")
        else:
            report.histogram(before, after, out / "hist_protection.png",
                             tag + "BIQA score after JPEG-90: before vs after", "score",
                             threshold=spec.threshold)
        figs.append("hist_protection.png")
    if have_nima:
        report.histogram([r.get("nima_clean") for r in per_image],
                         [r.get("nima") for r in per_image], out / "hist_nima.png",
                         tag + "NIMA mean score: before vs after", "NIMA score")
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


def _cmd(args) -> int:
    try:
        if args.compare:
            run_compare(args.compare, args.out)
            print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
            matrix = transfer.transfer_matrix(args.compare, args.out)  # runs scored with --judges
            if matrix is not None:
                print(transfer.matrix_markdown(matrix))
            return 0
        if not args.run:
            print("error: give --run DIR (or --compare RUN ...)", file=sys.stderr)
            return 2
        if args.task is None and not (Path(args.run) / CONFIG).exists():
            print("error: --task is needed for a run folder without config.json", file=sys.stderr)
            return 2
        judges = (transfer.load_judges(args.judges, args.weights_dir, args.standin)
                  if args.judges else None)
        rep = run_evaluate(args.task, args.run, args.out, images=args.images,
                           list_file=args.list, labels_file=args.labels, run_code=args.run_code,
                           standin=args.standin, weights_dir=args.weights_dir,
                           batch_size=args.batch_size, appeal_resize=args.appeal_resize,
                           progress=not args.no_progress)
        if judges:
            rep = transfer.add_judges_to_report(
                rep, args.out, judges, images=args.images, list_file=args.list,
                labels_file=args.labels, run_code=args.run_code, batch_size=args.batch_size)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tag = "STAND-IN " if rep["standin"] else ""
    prot = ", ".join(f"{k}={report._fmt(v)}" for k, v in rep["protection"].items())
    print(f"{tag}{rep['run_code'] or rep['run']}: {rep['n_images']} images, {rep['n_failed']} "
          f"failed; {prot}; report {Path(args.out) / 'report.md'}")
    if rep.get("judged_by", {}).get("note"):
        print(rep["judged_by"]["note"])
    for r in rep.get("judged_by", {}).get("judges", []):
        print(f"{tag}judged by {r['label']}: top-1 {report._fmt(r['top1_accuracy'])} (clean "
              f"{report._fmt(r['top1_accuracy_clean'])}), drop {report._fmt(r['accuracy_drop'])}")
    for e in rep["errors"]:
        print(f"{tag}error: {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if rep["n_failed"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run as the organisers did; or --compare runs")
    p.add_argument("--task", type=int, default=None, choices=sorted(data.TASKS),
                   help="default: the task of the protect run")
    p.add_argument("--run", default=None, help="a `ppjax protect` output folder or a PNG folder")
    p.add_argument("--images", default=None, help="the original images (default: the run's)")
    p.add_argument("--list", default=None,
                   help="MEPP list (CSV) of the originals (default: the protect run's, when "
                        "--images is the run's)")
    p.add_argument("--labels", default=None,
                   help="Places365 labels file (places365_val.txt) when the list has no labels "
                        "(default: the protect run's, when --images is the run's)")
    p.add_argument("--run-code", default=None, help="strip this prefix to match originals")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="evaluated folders (with report.json) to put side by side")
    p.add_argument("--judges", default=None, metavar="A,B,C",
                   help="also score the run with these classifier judges (top-1 and drop per "
                        "judge; e.g. the Places365 zoo); --compare then builds the transfer matrix")
    p.add_argument("--out", required=True,
                   help="folder for report.md, report.json and the figures")
    p.add_argument("--standin", action="store_true",
                   help="use random-weight STAND-IN judges (tests/demos only)")
    p.add_argument("--weights-dir", default=None,
                   help="converted weights (default: $PPJAX_WEIGHTS_DIR or ~/.cache/ppjax/weights)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per judge call (does not change results; default: %(default)s)")
    p.add_argument("--appeal-resize", default="auto",
                   choices=("auto", "native", "nearest", "bilinear"),
                   help="how NIMA sees the images; auto = as its original (Keras NIMA: native "
                        "size; nima.pytorch: bilinear 224x224; default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
