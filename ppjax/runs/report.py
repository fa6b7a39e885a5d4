"""Reports of ``ppjax evaluate``: ``report.json`` (numbers as numbers, NaN as null, written
atomically) and ``report.md``; the figures are :mod:`ppjax.runs.plots`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ppjax.image.io import atomic_write_bytes
from ppjax.runs.provenance import MAIN_SETTINGS, attack_line, fmt_setting

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


def success_of(row: dict) -> bool | None:
    """Whether the protection worked on this image: the judge no longer right (2019: top-1 not
    the label; 2020: score not above the threshold); None when unknown (no label)."""
    return None if row.get("correct") is None else not row["correct"]


def _arrow(before, after, digits: int) -> str:
    f = (lambda v: "n/a" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    return f"{f(before)} -> {f(after)}"


def image_caption(row: dict) -> str:
    """One line per image: the judge's class (2019) or score before -> after, and success."""
    ok = success_of(row)
    verdict = "n/a" if ok is None else "protected" if ok else "NOT protected"
    if "pred" in row:
        return (f"class {_arrow(row.get('pred_clean'), row.get('pred'), 0)} (label "
                f"{row.get('label')}), P(label) {_arrow(row.get('score_clean'), row.get('score'), 2)}"
                f": {verdict}")
    return f"score {_arrow(row.get('score_clean'), row.get('score'), 1)}: {verdict}"


#: Columns of the per-image table: (header, row key or function).
PER_IMAGE_COLUMNS = (
    ("image", "name"), ("class before", "pred_clean"), ("class after", "pred"),
    ("label", "label"), ("score before", "score_clean"), ("score after", "score"),
    ("success", success_of), ("PSNR dB", "psnr"), ("SSIM", "ssim"), ("CIEDE2000", "ciede2000"),
    ("appeal before", "nima_clean"), ("appeal after", "nima"), ("what was done", "notes"))


def per_image_table(per_image: Sequence[dict]) -> tuple[list[str], list[list]]:
    """``(header, rows)`` of the per-image table (columns no image has are left out)."""
    cols = [(h, k) for h, k in PER_IMAGE_COLUMNS
            if callable(k) or any(r.get(k) not in (None, [], "") for r in per_image)]
    rows = [[k(r) if callable(k) else "; ".join(r.get(k) or []) if k == "notes" else r.get(k)
             for _, k in cols] for r in per_image]
    return [h for h, _ in cols], rows


def attack_of(rep: dict) -> dict | None:
    """The run's recorded attack (``config.json``'s ``attack_resolved``), when there is one."""
    return (rep.get("protect_config") or {}).get("attack_resolved")


def markdown_report(rep: dict) -> str:
    """``report.md`` for one evaluated run (``rep`` as written to ``report.json``)."""
    out = []
    tag = " (STAND-IN)" if rep.get("standin") else ""
    out.append(f"# Pixel Privacy {rep['task']} evaluation: {rep.get('run_code') or rep['run']}{tag}")
    if rep.get("standin"):
        out += ["", STANDIN_BANNER]
    out += ["", f"- run: `{rep['run']}`", f"- attack: {attack_line(attack_of(rep))}",
            f"- judge: {rep['judge']}",
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
    if rep.get("per_image"):
        out += ["", "## Per image", "", "success: the judge is no longer right (2019: top-1 is "
                "not the label; 2020: score not above the threshold). What was done to each "
                "photo before the judge saw it is in the last column.", ""]
        out.append(markdown_table(*per_image_table(rep["per_image"])))
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
    attacks = [attack_of(r) or {} for r in reports]
    rows = [["task"] + [r["task"] for r in reports],
            ["attack"] + [f"{a['name']}/{a['preset']}" if a else "n/a" for a in attacks]]
    rows += [[k] + [fmt_setting(k, a["resolved"][k]) if k in a.get("resolved", {}) else "n/a"
                    for a in attacks] for k in MAIN_SETTINGS]
    rows += [["images"] + [r["n_images"] for r in reports],
             ["failed"] + [r["n_failed"] for r in reports]]
    rows += [[k] + [r.get(s, {}).get(k) for r in reports] for s, k in keys]
    title = "# Runs compared"
    if any(r.get("standin") for r in reports):
        title += "\n\n" + STANDIN_BANNER
    return title + "\n\n" + markdown_table(header, rows) + "\n"
