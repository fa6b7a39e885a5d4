"""Transfer: one protected run scored by several judges, and the matrix of many runs.

A photo protected against one classifier (white-box) meets others in practice. Two entry points:

* :func:`score_with_judges` (``ppjax evaluate --run R --judges A,B,C``) scores one 2019 run with
  each judge: top-1 accuracy on the submitted PNGs, on the originals, and the drop. Labels follow
  ``ppjax evaluate``: the list/labels files, else the label the protect run recorded, else (per
  judge) the judge's own clean prediction on the original, so the drop is then the share of
  images whose top-1 the protection changed. The images are judged as submitted (no resize).
* :func:`transfer_matrix` (``ppjax evaluate --compare R1 R2 ...``) puts the runs evaluated with
  ``--judges`` into a table "protected against X (rows) x judged by Y (columns)" of top-1
  accuracy drops, as Markdown, JSON and a heat-map figure (``transfer_matrix.{md,json,png}``).
  The diagonal is white-box protection; everything off it is transfer.

Stand-in judges (random weights) are labelled everywhere, with the warning that transfer rates
between random networks are meaningless: random networks share no features.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("ppjax.runs.transfer")

TRANSFER_STANDIN = (
    "STAND-IN: judges on RANDOM weights. Transfer rates between random networks are meaningless "
    "(random networks share no features); these figures only exercise the pipeline.")
MATRIX_FILES = ("transfer_matrix.md", "transfer_matrix.json", "transfer_matrix.png")


def parse_judges(text: str | None) -> list[str]:
    """``"A,B,C"`` -> ``["A", "B", "C"]``, each a known 2019 classifier judge, no repeats.

    Raises:
      ValueError: naming every unknown or unsuitable judge.
    """
    from ppjax.judges import JUDGES

    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if not names:
        raise ValueError("--judges needs at least one judge name (comma-separated)")
    bad = [n for n in names if n not in JUDGES]
    if bad:
        raise ValueError(f"unknown judge(s) {', '.join(bad)}; classifier judges: "
                         f"{', '.join(classifier_judges())}")
    wrong = [n for n in names if JUDGES[n].output != "logits"]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: not a classifier (top-1 needs logits); classifier "
                         f"judges: {', '.join(classifier_judges())}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"judge(s) named twice: {', '.join(dup)}")
    return names


def load_judges(text: str, weights_dir=None, standin: bool = False) -> list:
    """:func:`parse_judges`, then load each (real weights, or stand-ins when ``standin``), so
    that a missing judge fails before any evaluation work."""
    import ppjax

    return [ppjax.load_judge(n, weights_dir, standin=standin) for n in parse_judges(text)]


def classifier_judges() -> list[str]:
    from ppjax.judges import JUDGES

    return sorted(n for n, s in JUDGES.items() if s.output == "logits")


def _check_judges(judges, task: int, run: Path) -> None:
    """Every judge a classifier at the task's size, the run a 2019 run."""
    from ppjax.runs import data

    if task != 2019:
        raise ValueError(f"--judges scores scene classifiers: a 2019 run is needed, {run} is a "
                         f"{task} run")
    hw = data.get_task(task).hw
    for j in judges:
        if j.spec.output != "logits":
            raise ValueError(f"judge {j.spec.name!r} is not a classifier")
        if tuple(j.spec.input_hw) != tuple(hw):
            raise ValueError(f"judge {j.spec.name!r} takes {j.spec.input_hw}, the run's images "
                             f"are {hw}")


def _top1_hits(judges, files, task: int, rule: str, batch_size: int, errors: list):
    """Per judge, ``(correct protected, correct clean or None)`` of every labelled image (the
    label, else the judge's own clean prediction on the original), and the images judged."""
    import jax.numpy as jnp

    from ppjax.image import io as imageio
    from ppjax.runs import data
    from ppjax.runs.evaluate import decode_pair, jitted_judge_calls, padded_pair

    logits_fn = jitted_judge_calls()[0]  # one compilation per judge, not per batch
    results = {j.spec.name: [] for j in judges}
    n_images = 0
    for chunk in data.batched(files, batch_size):
        decoded = [decode_pair(f, task, rule) for f in chunk]
        errors += [{"name": d.item.name, "error": d.error} for d in decoded if d.error is not None]
        ok = [d for d in decoded if d.error is None]
        if not ok:
            continue
        n = len(ok)
        n_images += n
        xa, xo, have_o = padded_pair(ok, batch_size)
        xa, xo = (jnp.asarray(imageio.to_float01(x)) for x in (xa, xo))
        for j in judges:
            pa = np.asarray(logits_fn(j, xa))[:n].argmax(-1)
            pc = np.asarray(logits_fn(j, xo))[:n].argmax(-1) if any(have_o) else None
            for i, d in enumerate(ok):
                lab = d.row["label"]
                if lab is None and have_o[i]:
                    lab = int(pc[i])  # the judge's own clean prediction
                if lab is not None:
                    results[j.spec.name].append(
                        (bool(pa[i] == lab), bool(pc[i] == lab) if have_o[i] else None))
    return results, n_images


def _judge_row(j, r: list, n_images: int) -> dict:
    both = [(a, c) for a, c in r if c is not None]
    return {
        "judge": j.spec.name, "label": j.label, "standin": bool(j.standin),
        "top1_accuracy": (sum(a for a, _ in r) / len(r)) if r else None,
        "top1_accuracy_clean": (sum(c for _, c in both) / len(both)) if both else None,
        "accuracy_drop": ((sum(c for _, c in both) - sum(a for a, _ in both)) / len(both))
        if both else None,
        "n_labelled": len(r), "n_images": n_images,
    }


def score_with_judges(run, judges, *, images=None, list_file=None, labels_file=None,
                      run_code=None, batch_size: int = 4) -> dict:
    """Top-1 accuracy of every judge on one 2019 run, before and after protection.

    Args:
      run: a ``ppjax protect`` output folder or a folder of PNGs (see ``ppjax.runs.layout``).
      judges: loaded classifier :class:`ppjax.Judge` objects (logits ``[B, 365]``).
    Returns a dict: ``protected_against`` (the run's judge), ``standin``, ``judges``: one entry
    per judge with ``top1_accuracy``, ``top1_accuracy_clean``, ``accuracy_drop`` (clean minus
    protected, on the images that have both), ``n_labelled``, ``n_images``; and ``errors``.
    """
    from ppjax.runs.layout import collect_run

    run = Path(run).resolve()
    files, errors, cfg = collect_run(run, images, list_file, labels_file, run_code)
    task = int(cfg.get("task") or 2019)
    _check_judges(judges, task, run)
    results, n_images = _top1_hits(judges, files, task, cfg.get("resize", "resize"), batch_size,
                                   errors)
    standin = any(j.standin for j in judges) or bool(cfg.get("standin"))
    return {
        "run": str(run), "run_code": run_code or cfg.get("run_code"),
        "protected_against": cfg.get("judge"), "attack": cfg.get("attack"),
        "standin": standin, "note": TRANSFER_STANDIN if standin else None,
        "procedure": ("top-1 of each judge on the submitted 8-bit PNGs (no resize) and on the "
                      "originals; drop = clean accuracy - protected accuracy"),
        "judges": [_judge_row(j, results[j.spec.name], n_images) for j in judges],
        "errors": errors,
    }


def judges_markdown(res: dict) -> str:
    """The "judged by several judges" section of ``report.md``."""
    from ppjax.runs.report import markdown_table

    out = ["## Judged by several judges (transfer)", ""]
    if res.get("standin"):
        out += [f"**{TRANSFER_STANDIN}**", ""]
    out.append(f"- protected against: {res.get('protected_against') or 'unknown'}"
               + (f" (attack {res['attack']})" if res.get("attack") else ""))
    out.append(f"- procedure: {res['procedure']}")
    out += ["", markdown_table(
        ["judged by", "top-1 protected", "top-1 clean", "drop", "labelled"],
        [[r["label"], r["top1_accuracy"], r["top1_accuracy_clean"], r["accuracy_drop"],
          r["n_labelled"]] for r in res["judges"]])]
    return "\n".join(out) + "\n"


def add_judges_to_report(rep: dict, out, judges, *, images=None, list_file=None,
                         labels_file=None, run_code=None, batch_size: int = 4) -> dict:
    """``ppjax evaluate --judges``: score ``rep``'s run with every loaded judge in ``judges``
    (:func:`load_judges`) and add the result to ``report.json`` (key ``judged_by``) and
    ``report.md`` in ``out``."""
    from ppjax.runs import report

    res = score_with_judges(rep["run"], judges, images=images, list_file=list_file,
                            labels_file=labels_file, run_code=run_code, batch_size=batch_size)
    rep["judged_by"] = res
    rep["standin"] = bool(rep.get("standin") or res["standin"])
    out = Path(out)
    report.write_json(out / "report.json", rep)
    md = report.markdown_report(rep).rstrip("\n") + "\n\n" + judges_markdown(res)
    (out / "report.md").write_text(md, encoding="utf-8")
    tag = "STAND-IN " if res["standin"] else ""
    for r in res["judges"]:
        log.info("%sjudged by %s: top-1 %s (clean %s), drop %s", tag, r["label"],
                 report.fmt_value(r["top1_accuracy"]), report.fmt_value(r["top1_accuracy_clean"]),
                 report.fmt_value(r["accuracy_drop"]))
    return rep


def _read_report(r) -> dict:
    p = Path(r)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise FileNotFoundError(f"{r}: no report.json; run `ppjax evaluate --run ...` first")
    return json.loads(p.read_text(encoding="utf-8"))


def transfer_matrix(runs, out=None) -> dict | None:
    """Rows: what each run was protected against; columns: the judges that scored it (with
    ``--judges``); cells: top-1 accuracy drop. Writes ``transfer_matrix.{md,json,png}`` to ``out``
    when given. Returns None when no run was scored with ``--judges``."""
    reps = [(r, _read_report(r)) for r in runs]
    scored = [(r, rep) for r, rep in reps if rep.get("judged_by")]
    if not scored:
        return None
    cols: list[str] = []
    for _, rep in scored:
        for j in rep["judged_by"]["judges"]:
            if j["judge"] not in cols:
                cols.append(j["judge"])
    rows = []
    for r, rep in scored:
        res = rep["judged_by"]
        against = res.get("protected_against") or "unknown"
        rows.append({"protected_against": against,
                     "attack": res.get("attack"),
                     "run": res.get("run_code") or Path(res.get("run") or str(r)).name,
                     "cells": {j["judge"]: {k: j[k] for k in ("accuracy_drop", "top1_accuracy",
                                                              "top1_accuracy_clean",
                                                              "n_labelled")}
                               for j in res["judges"]}})
    names = [row["protected_against"] for row in rows]
    for row in rows:  # the same judge protected against twice: tell the runs apart
        row["row"] = (row["protected_against"] if names.count(row["protected_against"]) == 1
                      else f"{row['protected_against']} ({row['run']})")
    standin = any(rep.get("standin") or rep["judged_by"].get("standin") for _, rep in scored)
    drop = np.array([[np.nan if row["cells"].get(c, {}).get("accuracy_drop") is None
                      else row["cells"][c]["accuracy_drop"] for c in cols] for row in rows],
                    np.float64)
    res = {"standin": standin, "note": TRANSFER_STANDIN if standin else None,
           "metric": "top-1 accuracy drop (clean - protected)", "rows": [r["row"] for r in rows],
           "columns": cols, "drop": [[None if np.isnan(v) else float(v) for v in row]
                                     for row in drop],
           "runs": rows}
    if out is not None:
        from ppjax.runs import plots, report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report.write_json(out / "transfer_matrix.json", res)
        (out / "transfer_matrix.md").write_text(matrix_markdown(res), encoding="utf-8")
        plots.transfer_heatmap(res, out / "transfer_matrix.png")
    return res


def matrix_markdown(res: dict) -> str:
    from ppjax.runs.report import markdown_table

    out = ["# Transfer matrix: top-1 accuracy drop", ""]
    if res["standin"]:
        out += [f"**{res['note']}**", ""]
    out += ["Rows: protected against X; columns: judged by Y. The diagonal is white-box "
            "protection, the rest is transfer.", ""]
    header = ["protected against \\ judged by"] + res["columns"]
    body = [[r] + row for r, row in zip(res["rows"], res["drop"], strict=True)]
    out.append(markdown_table(header, body))
    return "\n".join(out) + "\n"
