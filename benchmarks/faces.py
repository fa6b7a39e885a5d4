"""Faces: does the protection hide real faces from a real, trained detector (MTCNN)?

``python -m benchmarks.faces --json PATH [--smoke] [--set KEY=VALUE ...]`` on the face set of
``ppjax fetch-data faces`` (built here when ``--data`` is not given): about 100 true face boxes.

* Controls (the network is real): ``clean_detect_rate`` (true faces MTCNN finds on the clean
  set), ``noise_detect_rate`` (after uniform noise of the attack's Linf, 8/255 by default),
  ``haar_clean_detect_rate`` (OpenCV's Haar cascade), and the clean rate after each pipeline
  (``controls.pipelines``). Each should be >= 0.95.
* ``rows``: the faces attack at eps 2, 4, 8, 16/255, with and without EOT over the ``upload``
  view; per row the rate of true faces still found on the PNG, after Pillow JPEG-90 and after
  the upload pipeline (MTCNN), by Haar on the PNG, the mean SSIM, the largest Linf in levels, and
  the rates after the held-out pipelines (``held_out``); ``per_image``: each photo's true faces
  and those found on the PNG, after JPEG-90 and after the upload, and its SSIM (RESULTS.md names
  the photos whose faces an upload gives back); ``settings``: the ``--set`` attack settings of
  an experiment (none: the task's default attack).
* ``smallest_eps``: the smallest eps (levels) whose EOT row reaches each goal rate with SSIM >=
  0.90; ``smallest_eps_any_ssim``: the same whatever the SSIM.
* ``--rows 16:eot,8:none`` runs only those rows; ``--merge A.json B.json ...`` writes one
  result from the rows of several runs on the same face set (one row per eps and EOT, the
  later file's winning; controls and ``ratio_vs_torch`` from the first file that has them),
  each row keeping the date and CPU of its run (``machine``).
* ``ratio_vs_torch``: img*it/s of the same attack (P-Net at every pyramid scale plus R-Net and
  O-Net on the clean proposals, MI-FGSM, no EOT) written in torch on facenet-pytorch's own nets,
  over ppjax's, on the same images in the same run (steady state: compile time apart).

A detection rate is the fraction of TRUE faces (``faces.json``) that a detection matches
(:func:`ppjax.faces.haar.count_found`).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from benchmarks._results import (
    load_results,
    machine,
    markdown_table,
    merged_sources,
    update_section,
    write_json,
)
from ppjax.cli.overrides import parse_overrides

EPS_LEVELS = (2, 4, 8, 16)
GOALS = {"detect_rate_jpeg90": 0.05, "detect_rate_upload": 0.10}
CONTROL_MIN = 0.95


def face_set(data_dir, n: int | None, smallest: bool = False):
    """``[(FaceImage, uint8 image)]`` of the set at ``data_dir`` (built in a temporary folder
    when None); the first ``n`` images when given (the ``n`` smallest with ``smallest``)."""
    from ppjax.faces import dataset

    if data_dir is None:
        data_dir = tempfile.mkdtemp(prefix="ppjax-faces-")
        dataset.write_face_set(data_dir)
    items = dataset.load_face_images(data_dir)
    if smallest:
        items = sorted(items, key=lambda t: t[1].shape[0] * t[1].shape[1])
    return items[:n] if n else items


def found_per_image(judge, images, truths, view=None, haar: bool = False) -> list[int]:
    """True faces found (MTCNN, or Haar) on each image (through ``view`` first: a pipeline
    ``fn(uint8) -> uint8``)."""
    from ppjax.runs import faces_detect

    found = []
    for img, truth in zip(images, truths, strict=True):
        v = img if view is None else view(img)
        boxes = faces_detect.haar(v) if haar else faces_detect.detect(judge, v)[0]
        boxes = faces_detect.rescale(boxes, v.shape[:2], img.shape[:2])
        found.append(int(faces_detect.count_found(truth, boxes)))
    return found


def rate(found: list[int], truths) -> float:
    """Faces found over all true faces (NaN without faces)."""
    total = sum(len(t) for t in truths)
    return sum(found) / total if total else float("nan")


def detect_rate(judge, images, truths, view=None, haar: bool = False) -> float:
    """True faces found (see :func:`found_per_image`) over all true faces."""
    return rate(found_per_image(judge, images, truths, view, haar), truths)


def uniform_noise(images, eps_levels: int, seed: int = 0):
    """Each image plus uniform noise in [-eps, eps] levels, rounded and clipped to 8 bits."""
    rng = np.random.default_rng(seed)
    return [np.clip(np.round(x + rng.uniform(-eps_levels, eps_levels, x.shape)), 0, 255)
            .astype(np.uint8) for x in images]


def controls(judge, images, truths, eps_levels: int) -> dict:
    """The controls: clean, noise and every pipeline on the clean set (MTCNN), and Haar."""
    from ppjax.runs import faces_detect

    out = {"clean_detect_rate": detect_rate(judge, images, truths),
           "noise_detect_rate": detect_rate(judge, uniform_noise(images, eps_levels), truths),
           "haar_unavailable": faces_detect.haar_unavailable()}
    out["haar_clean_detect_rate"] = (None if out["haar_unavailable"] else
                                     detect_rate(judge, images, truths, haar=True))
    names = faces_detect.pipeline_names() + faces_detect.pipeline_names(held_out=True)
    out["pipelines"] = {k: detect_rate(judge, images, truths, faces_detect.pipeline(k))
                        for k in dict.fromkeys(names)}
    out["passed"] = bool(min(out["clean_detect_rate"], out["noise_detect_rate"],
                             *out["pipelines"].values()) >= CONTROL_MIN)
    return out


def attack_row(judge, images, truths, eps_levels: int, eot: bool, steps: int,
               canvas: str = "square", boxes=None, names=None, settings=()) -> dict:
    """One row: the faces attack at ``eps_levels``/255 (EOT over the upload view or none), the
    photos grouped on ``canvas`` ("square": :func:`ppjax.runs.faces.square_canvas`, few
    compilations for this set of many sizes; "bucket": the task's buckets), around ``boxes`` (each
    photo's clean faces; default: detected here); ``per_image`` names the photos by ``names``;
    ``settings``: more attack settings (``--set``), recorded in the row."""
    from ppjax.attacks import resolve_attack
    from ppjax.runs import faces, faces_detect, faces_eval
    from ppjax.runs.faces_protect import protect_images

    acfg = resolve_attack("faces", "default" if eot else "plain",
                          {**dict(settings), "eps": eps_levels / 255, "steps": steps})
    t0 = time.perf_counter()
    res = protect_images(acfg, judge, images, seeds=np.arange(len(images)),
                         canvas=faces.square_canvas if canvas == "square" else faces.bucket_hw,
                         boxes=boxes)
    seconds = time.perf_counter() - t0
    adv = [r["image"] for r in res]
    found = {k: found_per_image(judge, adv, truths, None if k == "png" else
                                faces_detect.pipeline(k)) for k in ("png", "jpeg90", "upload")}
    row = {"eps_levels": eps_levels, "eot": eot, "steps": steps, "seconds": round(seconds, 2),
           "machine": machine(), "objective": acfg.objective,
           **({"settings": dict(settings)} if settings else {}),
           **{f"detect_rate_{k}": rate(v, truths) for k, v in found.items()},
           "haar_detect_rate": None if faces_detect.haar_unavailable() else detect_rate(
               judge, adv, truths, haar=True)}
    dist = [faces_eval.distortion(a, x) for a, x in zip(adv, images, strict=True)]
    row["ssim_mean"] = float(np.mean([d["ssim"] for d in dist]))
    row["linf_levels"] = int(max(d["linf_levels"] for d in dist))
    row["held_out"] = {k: detect_rate(judge, adv, truths, faces_detect.pipeline(k))
                       for k in faces_detect.pipeline_names(held_out=True)}
    # per photo: where the faces that stay found are
    row["per_image"] = [{"image": names[i] if names else i, "hw": list(images[i].shape[:2]),
                         "faces": len(truths[i]), **{f"found_{k}": v[i] for k, v in found.items()},
                         "ssim": round(float(dist[i]["ssim"]), 4)} for i in range(len(images))]
    return row


def parse_rows(text: str) -> list[tuple[int, bool]]:
    """``"16:eot,8:none"`` -> ``[(16, True), (8, False)]`` (eps in levels, EOT or not)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        eps, _, how = part.partition(":")
        if not eps.isdigit() or int(eps) < 1 or how not in ("eot", "none"):
            raise ValueError(f"--rows: {part!r} is not EPS:eot or EPS:none (EPS in levels, "
                             "e.g. 8:eot)")
        out.append((int(eps), how == "eot"))
    if not out:
        raise ValueError("--rows: no row given")
    return out


def merge(results: list[dict]) -> dict:
    """One result from several runs' (:func:`run`) on the same face set: their rows, one per
    (eps, EOT), a later run's replacing an earlier one's, ordered as a full run orders them;
    the controls and ``ratio_vs_torch`` of the first run that has them (a run stopped after some
    rows, which has neither a total time nor the torch side, merges too). Each row keeps its run's
    ``machine`` (date, CPU). Runs of different sets or step counts, and rows of one kind (EOT or
    not) run with different objectives, are refused."""
    if not results:
        raise ValueError("merge: no results")
    keys = {(r["n_images"], r["n_faces"], r["steps"], bool(r["smoke"])) for r in results}
    if len(keys) > 1:
        raise ValueError(f"merge: the runs differ in (images, faces, steps, smoke): {sorted(keys)}")
    if any(r.get("settings") for res in results for r in res["rows"]):
        raise ValueError("merge: a row was run with --set settings (an experiment), not the "
                         "task's default attack")
    for eot in (True, False):  # rows before the field: objective "faces" (both presets)
        used = {r.get("objective", "faces") for res in results for r in res["rows"]
                if r["eot"] == eot}
        if len(used) > 1:
            raise ValueError(f"merge: the {'EOT' if eot else 'no-EOT'} rows were run with other "
                             f"objectives {sorted(used)} (the default attack changed between runs)")
    rows = {}
    for res in results:
        for r in res["rows"]:
            rows[(r["eps_levels"], r["eot"])] = {**r, "machine": r.get("machine", res["machine"])}
    first = results[0]
    timed = next((r for r in results if r.get("ratio_vs_torch") is not None), first)
    out = {**first, "rows": [rows[k] for k in sorted(rows, key=lambda k: (not k[1], k[0]))],
           "ratio_vs_torch": timed.get("ratio_vs_torch"), "torch": timed.get("torch"),
           "contended": any(r["contended"] for r in results),
           # a run stopped after some rows (each row is saved as it ends) has no total: its rows'
           "seconds": sum(r.get("seconds", sum(w.get("seconds", 0.0) for w in r["rows"]))
                          for r in results),
           "merged_from": merged_sources(results)}
    out["smallest_eps"] = smallest_eps(out["rows"])
    out["smallest_eps_any_ssim"] = smallest_eps(out["rows"], None)
    out["goals"] = goals_met(out)
    return out


def smallest_eps(rows: list[dict], ssim: float | None = 0.9) -> dict:
    """Per goal, the smallest eps (levels) whose EOT row reaches it with SSIM >= ``ssim`` (None:
    whatever the SSIM), or None."""
    out = {}
    for key, goal in GOALS.items():
        ok = [r["eps_levels"] for r in rows if r["eot"] and r[key] <= goal
              and (ssim is None or r["ssim_mean"] >= ssim)]
        out[key] = min(ok) if ok else None
    return out


def ssim_at(rows: list[dict], eps_levels: int) -> float:
    """The SSIM of the EOT row at ``eps_levels``."""
    return next(r["ssim_mean"] for r in rows if r["eot"] and r["eps_levels"] == eps_levels)


def goals_met(res: dict) -> dict:
    """Each goal of the issue, True/False."""
    row8 = next((r for r in res["rows"] if r["eps_levels"] == 8 and r["eot"]), None)
    return {
        "controls": res["clean_detect_rate"] >= CONTROL_MIN
        and res["noise_detect_rate"] >= CONTROL_MIN,
        "eps8_eot_jpeg90": row8 is not None and row8["detect_rate_jpeg90"] <= GOALS[
            "detect_rate_jpeg90"],
        "eps8_eot_upload": row8 is not None and row8["detect_rate_upload"] <= GOALS[
            "detect_rate_upload"],
        "eps8_eot_ssim": row8 is not None and row8["ssim_mean"] >= 0.90,
        "ratio_vs_torch": res["ratio_vs_torch"] is not None and res["ratio_vs_torch"] >= 1.0}


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def survivors(row: dict, key: str) -> list[str]:
    """``"photo found/faces"`` for each photo of ``row["per_image"]`` where ``key`` (e.g.
    ``found_upload``) is not 0."""
    return [f"{p['image'].rsplit('.', 1)[0]} {p[key]}/{p['faces']}"
            for p in row.get("per_image", ()) if p[key]]


def results_md(res: dict) -> str:
    """The RESULTS.md section."""
    m = res["machine"]
    held = sorted({k for r in res["rows"] for k in r["held_out"]})
    lines = [
        "## faces: hiding real faces from MTCNN (real, trained weights)", "",
        f"`python -m benchmarks.faces{' --smoke' if res['smoke'] else ''}` on "
        f"{res['n_images']} images, {res['n_faces']} true faces; {m['cpu'].get('model', '?')}, "
        f"{m['cpus']} CPUs{', CONTENDED (shared machine)' if res['contended'] else ''}; "
        f"{res['seconds']:.0f} s in all.", "",
        f"Controls (>= 0.95): clean {res['clean_detect_rate']:.3f}, noise ±"
        f"{res['attack_linf_levels']}/255 {res['noise_detect_rate']:.3f}, Haar clean "
        f"{_fmt(res['haar_clean_detect_rate'])}; after each pipeline: "
        + ", ".join(f"{k} {v:.3f}" for k, v in res["controls"]["pipelines"].items()), "",
        markdown_table(["eps", "EOT", "steps", "png", "jpeg90", "upload", "haar", "ssim", "linf",
                        *held, "s"],
                       [[r["eps_levels"], "upload" if r["eot"] else "none", r["steps"],
                         r["detect_rate_png"], r["detect_rate_jpeg90"], r["detect_rate_upload"],
                         r["haar_detect_rate"], r["ssim_mean"], r["linf_levels"],
                         *[r["held_out"].get(k) for k in held], r["seconds"]]
                        for r in res["rows"]]), "",
        *[f"Still found after the upload, eps {r['eps_levels']} "
          f"{'EOT' if r['eot'] else 'no EOT'}"
          + (f" with {r['settings']}" if r.get("settings") else "")
          + " (photo: found / true faces): "
          + (", ".join(survivors(r, "found_upload")) or "none") + "." for r in res["rows"]
          if r.get("per_image")], "",
        "Rates: true faces still found (lower is better). Smallest eps (EOT, SSIM >= 0.90) "
        "reaching each goal: " + ", ".join(f"{k} <= {GOALS[k]}: {v}" for k, v in
                                            res["smallest_eps"].items())
        + "; whatever the SSIM: " + ", ".join(
            f"{k}: {v}" + (f" (SSIM {ssim_at(res['rows'], v):.3f})" if v else "")
            for k, v in smallest_eps(res["rows"], None).items()) + ".", "",
        *([f"Merged from {len(res['merged_from'])} runs; each row's run: "
           + "; ".join(f"eps {r['eps_levels']} {'EOT' if r['eot'] else 'no EOT'} "
                       f"{r['machine'].get('date', '?')} {r['machine']['cpu'].get('model', '?')}"
                       for r in res["rows"] if r.get("machine")) + ".", ""]
          if res.get("merged_from") else []),
        f"ratio_vs_torch {res['ratio_vs_torch']}: {res['torch']}", "",
        *([f"Haar unavailable here: {res['controls']['haar_unavailable']}", ""]
          if res["controls"]["haar_unavailable"] else []),
        "Goals: " + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in
                              res["goals"].items())]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--smoke", action="store_true",
                   help="the 3 smallest images, few steps (a quick check)")
    p.add_argument("--data", default=None, help="face set folder (default: built here)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--steps", type=int, default=None,
                   help="attack steps (default: 100, the preset's; smoke 4)")
    p.add_argument("--n", type=int, default=None, help="first N images only")
    p.add_argument("--only", default=None,
                   help="comma-separated image names of the set (e.g. astronaut,lfw_03)")
    p.add_argument("--canvas", default="square", choices=("square", "bucket"),
                   help="how photos of many sizes share compiled programs (see attack_row)")
    p.add_argument("--eps", default=None, help="comma-separated eps levels (default 2,4,8,16)")
    p.add_argument("--eot-only", action="store_true",
                   help="only the rows with EOT (the goals' rows), not those without")
    p.add_argument("--rows", default=None, metavar="EPS:eot|none,...",
                   help="run only these rows (e.g. 16:eot,8:none; overrides --eps/--eot-only)")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no run: merge these results' rows into one (--json, RESULTS.md)")
    p.add_argument("--contended", action="store_true", help="say the machine was shared")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another attack setting for every row (an experiment; recorded in each "
                        "row as 'settings')")
    p.add_argument("--no-results-md", action="store_true")
    a = p.parse_args(argv)
    if a.merge:
        try:
            res = merge(load_results(a.merge))
        except (OSError, ValueError, KeyError) as e:
            p.error(f"--merge: {type(e).__name__}: {e}")
        write_json(a.json, res)
        if not a.no_results_md and not res["smoke"]:
            update_section("faces", results_md(res))
        print(results_md(res))
        return 0
    try:
        a.rows = parse_rows(a.rows) if a.rows else None
    except ValueError as e:
        p.error(str(e))
    a.settings = parse_overrides(a.set)
    clash = sorted({k for k, _ in a.settings} & {"eps", "steps"})
    if clash:
        p.error(f"--set {', '.join(clash)}: use --eps / --steps (each row sets them)")
    try:  # every problem of the settings now, not after the controls
        from ppjax.attacks import resolve_attack

        resolve_attack("faces", "default", dict(a.settings))
    except ValueError as e:
        p.error(str(e))
    res = run(a)
    write_json(a.json, res)
    if not a.no_results_md and not a.smoke:
        update_section("faces", results_md(res))
    print(results_md(res))
    return 0


def run(a) -> dict:
    """Every measure of the module docstring, as one JSON-able dict."""
    from benchmarks import faces_torch
    from ppjax.runs import faces_detect
    from ppjax.runs.faces_detect import load_mtcnn

    t0 = time.perf_counter()
    items = face_set(a.data, 3 if a.smoke and not a.n else a.n, smallest=a.smoke)
    if a.only:
        names = a.only.split(",")
        items = [t for t in items if t[0].file.rsplit(".", 1)[0] in names]
    images = [img for _, img in items]
    truths = [it.boxes() for it, _ in items]
    steps = a.steps or (4 if a.smoke else 100)
    judge = load_mtcnn(a.weights_dir)
    ctl = controls(judge, images, truths, 8)
    res = {"machine": machine(), "smoke": bool(a.smoke), "contended": bool(a.contended),
           "canvas": a.canvas, "steps": steps,
           "n_images": len(images), "n_faces": int(sum(len(t) for t in truths)),
           "attack_linf_levels": 8, "clean_detect_rate": ctl["clean_detect_rate"],
           "noise_detect_rate": ctl["noise_detect_rate"],
           "haar_clean_detect_rate": ctl["haar_clean_detect_rate"], "controls": ctl,
           "rows": [], "ratio_vs_torch": None, "torch": None}
    eps = tuple(int(e) for e in a.eps.split(",")) if a.eps else EPS_LEVELS
    todo = a.rows or [(e, eot) for eot in ((True,) if a.eot_only else
                                                              (True, False)) for e in eps]
    clean_boxes = [faces_detect.detect(judge, img)[0] for img in images]  # once, for every row
    for e, eot in todo:
        res["rows"].append(attack_row(judge, images, truths, e, eot, steps, a.canvas,
                                      clean_boxes, [it.file for it, _ in items],
                                      a.settings))
        write_json(a.json, res)  # what is done so far survives a later failure
    try:
        res["torch"] = faces_torch.compare(judge, images, steps=2 if a.smoke else 10)
        res["ratio_vs_torch"] = res["torch"]["ratio_vs_torch"]
    except Exception as e:  # the torch side is a reference: its failure is reported, not fatal
        res["torch"] = {"error": f"{type(e).__name__}: {e}"}
    res["smallest_eps"] = smallest_eps(res["rows"])
    res["smallest_eps_any_ssim"] = smallest_eps(res["rows"], None)
    res["goals"] = goals_met(res)
    res["seconds"] = time.perf_counter() - t0
    return res


if __name__ == "__main__":
    raise SystemExit(main())
