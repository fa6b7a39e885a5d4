"""``ppjax sweep CONFIG``: a grid of attacks and values, one CSV/JSON row per grid point, and a
Pareto plot of protection against distortion.

A config (TOML or JSON) names the judge, the images and one or more grids::

    judge = "resnet50_places365"
    standin = false                  # true: random-weight stand-in (pipeline checks only)
    images = ["photos/"]             # files or directories (jpg/png); resized to the judge's size
    max_images = 64
    batch = 8
    output = "sweep-out"             # results.csv, results.json, pareto.png
    dtype = "bfloat16"               # optional (default float32): oneDNN/AMX convs on CPU
    appeal_judge = "nima_mobilenetv2"   # optional: scored on every result; enables appeal_weight

    [[grid]]
    attack = "pgd"                   # a name of ppjax.attacks.ATTACKS
    preset = "default"
    eps = [0.01, 0.02, 0.03]         # every list is an axis of the grid ...
    steps = [10]
    step_size = [0.004]
    eot_quality = [[80, 95], [60, 90]]  # -> eot_quality_lo / eot_quality_hi
    appeal_weight = [0.0, 0.1]       # the appeal term's weight (objective "<objective>+appeal")

Required keys: ``judge``, ``images`` and at least one ``[[grid]]`` with an ``attack``. Optional:
``standin``, ``weights_dir``, ``max_images`` (64), ``batch`` (8), ``seed`` (0), ``output``
("sweep-out", relative to the config file), ``appeal_judge``, ``driver`` ("auto"), ``dtype``
("float32"). Images follow ``ppjax protect``'s rules (:mod:`ppjax.runs.data`, :mod:`ppjax.image.io`): a
file that cannot be read is a per-file error (in ``results.json`` under ``errors``, exit code 1)
and every point runs on the other images. Every point's settings are checked before anything runs
(exit code 2 listing every problem). One sweep at a time per output folder (a lock, as protect).

Every key of a grid besides ``attack``/``preset`` is an :class:`~ppjax.attacks.AttackConfig`
field (a scalar is a one-value axis). Values of traced fields (eps, step sizes, JPEG quality
range, appeal weight, ...) enter the compiled program as arguments, so a grid over them compiles
once per static configuration: the ``recompiles`` column counts traces per row and reads 0 after
the first row of each static configuration. Rows already in ``results.csv`` (same ``key``) are
skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ppjax.runs.data import load_images
from ppjax.runs.plots import pareto_plot
from ppjax.runs.sweep_config import Grid, SweepConfig

log = logging.getLogger("ppjax")

RESULT_FIELDS = ("key", "attack", "preset", "settings", "images", "protection", "success_rate",
                 "mean_steps", "mean_linf", "mean_l2", "mean_psnr", "mean_appeal",
                 "mean_appeal_before", "seconds", "recompiles")


def row_key(grid: Grid, settings) -> str:
    """Stable identity of a grid point (the resume key)."""
    return json.dumps({"attack": grid.attack, "preset": grid.preset,
                       "settings": [[k, v] for k, v in settings]}, sort_keys=True)


def read_done(csv_path: Path) -> dict[str, dict]:
    if not csv_path.exists():
        return {}
    with csv_path.open(newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def _attack_config(grid: Grid, settings, has_appeal: bool):
    from ppjax.attacks import resolve_attack

    s = dict(settings)
    if "appeal_weight" in s and not has_appeal:
        raise ValueError("sweep: appeal_weight needs appeal_judge in the config")
    return resolve_attack(grid.attack, grid.preset, s, appeal_judge="appeal_weight" in s)


def run_point(cfg, judge, images: np.ndarray, batch: int, seed: int, appeal=None,
              driver: str = "auto", dtype: str = "float32") -> dict:
    """Attack all ``images`` [N, H, W, 3] with ``cfg`` through the streaming engine
    (:func:`ppjax.attacks.stream`, ``batch`` slots: a finished image's slot takes the next at
    once); per-image results (numpy) in input order, ``images`` the protected images (on the
    8-bit grid). Image i's seed is ``default_seeds(N, seed)[i]``. The programs are compiled
    once per static configuration, so points that change only values never recompile.
    ``driver`` is kept for older configs: sweeps always stream."""
    import jax.numpy as jnp

    from ppjax.attacks import StreamItem, default_seeds, stream
    from ppjax.attacks.appeal import appeal_scores
    from ppjax.image.metrics import psnr

    n = len(images)
    seeds = default_seeds(n, seed)
    extra = {"appeal": appeal} if appeal is not None and "appeal" in cfg.objective else None
    items = (StreamItem(i, images[i], int(seeds[i])) for i in range(n))
    cols = {k: [None] * n for k in ("success", "steps", "linf", "l2")}
    adv = np.empty((n, *images.shape[1:]), np.float32)
    for i, res in stream(cfg, judge, items, slots=batch, extra_judges=extra,
                         dtype=None if dtype == "float32" else jnp.bfloat16):
        for k in cols:
            cols[k][i] = getattr(res, k)
        adv[i] = res.images
    out = {k: np.asarray(v) for k, v in cols.items()}
    out["images"] = adv
    x0 = np.round(np.asarray(images, np.float32) * 255) / 255
    out["psnr"] = np.asarray(psnr(jnp.asarray(adv), jnp.asarray(x0)))
    if appeal is not None:  # scored as ppjax evaluate scores them
        out["appeal"], out["appeal_before"] = (appeal_scores(appeal, a, batch) for a in (adv, x0))
    return out


def summarise(grid: Grid, settings, per_image: dict, seconds: float, recompiles: int) -> dict:
    def mean(k):
        return float(np.mean(per_image[k])) if k in per_image else ""

    success = float(np.mean(per_image["success"]))
    return {"key": row_key(grid, settings), "attack": grid.attack, "preset": grid.preset,
            "settings": json.dumps(dict(settings)), "images": len(per_image["success"]),
            "protection": success, "success_rate": success, "mean_steps": mean("steps"),
            "mean_linf": mean("linf"), "mean_l2": mean("l2"), "mean_psnr": mean("psnr"),
            "mean_appeal": mean("appeal"), "mean_appeal_before": mean("appeal_before"),
            "seconds": seconds, "recompiles": recompiles}


NUMERIC = {"images": int, "recompiles": int, "protection": float, "success_rate": float,
           "mean_steps": float, "mean_linf": float, "mean_l2": float, "mean_psnr": float,
           "mean_appeal": float, "mean_appeal_before": float, "seconds": float}


def typed_row(row: dict) -> dict:
    """A ``results.csv`` row with numbers as numbers (empty cells as None) and ``settings`` as
    an object."""
    out = dict(row)
    for k, kind in NUMERIC.items():
        v = out.get(k)
        out[k] = None if v in ("", None) else kind(float(v)) if kind is int else kind(v)
    if isinstance(out.get("settings"), str):
        out["settings"] = json.loads(out["settings"])
    return out


def check_points(cfg: SweepConfig, has_appeal: bool) -> list[tuple[Grid, tuple, Any]]:
    """Every grid point with its :class:`AttackConfig`; every bad point is reported at once
    (:class:`~ppjax.errors.SetupError`) before anything runs."""
    from ppjax.errors import SetupError

    points, problems = [], []
    for grid in cfg.grids:
        for settings in grid.points():
            try:
                points.append((grid, settings, _attack_config(grid, settings, has_appeal)))
            except (KeyError, TypeError, ValueError) as e:
                problems.append(f"grid point {grid.attack} {dict(settings)}: "
                                f"{e.args[0] if e.args else e}")
    if problems:
        raise SetupError(problems)
    return points


def run_sweep(cfg: SweepConfig, judge=None, appeal=None) -> list[dict]:
    """Run every grid point not yet in ``<output>/results.csv``; append each row as it finishes
    (so an interrupted sweep resumes), then rewrite ``results.json`` and ``pareto.png``.
    ``judge`` / ``appeal`` override loading by name (tests). Files that cannot be read are listed
    in ``results.json`` (``errors``); the points run on the others."""
    from ppjax import load_judge
    from ppjax.errors import SetupError
    from ppjax.runs.layout import OutputLock
    from ppjax.runs.report import write_json

    points = check_points(cfg, appeal is not None or bool(cfg.appeal_judge))
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise SetupError(f"sweep output {out} exists and is not a folder")
    judge = judge or load_judge(cfg.judge, cfg.weights_dir, standin=cfg.standin)
    if appeal is None and cfg.appeal_judge:
        appeal = load_judge(cfg.appeal_judge, cfg.weights_dir, standin=cfg.standin)
    file_errors: list[dict] = []
    try:
        images = load_images(cfg.images, judge.spec.input_hw, cfg.max_images, file_errors)
    except SetupError as e:
        raise SetupError([f"sweep: {p}" for p in e.problems]) from None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create the sweep output {out}: {e.strerror}") from None
    with OutputLock(out):
        rows = _run_points(cfg, points, out / "results.csv", judge, appeal, images)
        write_json(out / "results.json", {"judge": judge.label, "standin": judge.standin,
                                          "images": len(images), "errors": file_errors,
                                          "rows": rows})
        pareto_plot(rows, out / "pareto.png", label=judge.label, standin=judge.standin)
    return rows


def _run_points(cfg: SweepConfig, points, csv_path: Path, judge, appeal, images) -> list[dict]:
    """Run the points not in ``csv_path`` yet, appending each row as it finishes; every row."""
    from ppjax.attacks import count_traces

    done = read_done(csv_path)
    new_file = not csv_path.exists()
    batch = min(cfg.batch, len(images))
    with csv_path.open("a", newline="") as f:
        writer = csv.DictWriter(f, RESULT_FIELDS)
        if new_file:
            writer.writeheader()
        for grid, settings, acfg in points:
            key = row_key(grid, settings)
            if key in done:
                continue
            t0 = time.perf_counter()
            with count_traces() as traces:
                per_image = run_point(acfg, judge, images, batch, cfg.seed, appeal, cfg.driver,
                                      cfg.dtype)
            row = summarise(grid, settings, per_image, time.perf_counter() - t0,
                            sum(traces.values()))
            writer.writerow(row)
            f.flush()
            done[key] = row
            log.info("%ssweep %s %s: protection %.3f, PSNR %.2f dB, %d recompiles",
                     "STAND-IN: " if judge.standin else "", grid.attack, dict(settings),
                     row["protection"], row["mean_psnr"], row["recompiles"])
    return [typed_row(r) for r in read_done(csv_path).values()]
