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
import dataclasses
import itertools
import json
import logging
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("ppjax")

RESULT_FIELDS = ("key", "attack", "preset", "settings", "images", "protection", "success_rate",
                 "mean_steps", "mean_linf", "mean_l2", "mean_psnr", "mean_appeal",
                 "mean_appeal_before", "seconds", "recompiles")
# Grid keys that are not AttackConfig fields.
ALIASES = {"eot_quality": ("eot_quality_lo", "eot_quality_hi")}


@dataclasses.dataclass(frozen=True)
class Grid:
    """One grid: an attack (and preset) and its axes ``((field, (v1, v2, ...)), ...)``."""

    attack: str
    preset: str = "default"
    axes: tuple[tuple[str, tuple[Any, ...]], ...] = ()

    def points(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every combination, as ``((field, value), ...)`` with aliases expanded."""
        names = [n for n, _ in self.axes]
        out = []
        for combo in itertools.product(*(vals for _, vals in self.axes)):
            settings = []
            for name, value in zip(names, combo, strict=True):
                if name in ALIASES:
                    settings += list(zip(ALIASES[name], value, strict=True))
                else:
                    settings.append((name, value))
            out.append(tuple(settings))
        return out


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """A whole sweep (see the module docstring for the file format)."""

    judge: str
    images: tuple[str, ...]
    grids: tuple[Grid, ...]
    output: str = "sweep-out"
    standin: bool = False
    weights_dir: str | None = None
    max_images: int = 64
    batch: int = 8
    seed: int = 0
    appeal_judge: str | None = None
    driver: str = "auto"
    dtype: str = "float32"  # judge compute dtype; "bfloat16" = oneDNN/AMX on CPU (ppjax.accel.onednn)


def _as_tuple(v) -> tuple:
    return tuple(v) if isinstance(v, list | tuple) else (v,)


def parse_config(data: dict, base: Path | None = None) -> SweepConfig:
    """A :class:`SweepConfig` from the decoded TOML/JSON ``data``; relative paths resolve
    against ``base`` (the config file's directory)."""
    from ppjax.attacks import AttackConfig, get_attack

    data = dict(data)
    for required in ("judge", "images", "grid"):
        if required not in data:
            raise ValueError(f"sweep config: missing {required!r}")
    base = base or Path.cwd()
    fields = {f.name for f in dataclasses.fields(AttackConfig)} - {"name", "hyper"}
    grids = []
    for i, g in enumerate(_as_tuple(data.pop("grid"))):
        g = dict(g)
        if "attack" not in g:
            raise ValueError(f"sweep config: grid {i} has no 'attack'")
        attack, preset = g.pop("attack"), g.pop("preset", "default")
        get_attack(attack, preset)  # unknown names fail here, before any compilation
        axes = []
        for name, values in g.items():
            values = _as_tuple(values)
            if name in ALIASES:
                values = tuple(tuple(v) for v in values)
                if any(len(v) != len(ALIASES[name]) for v in values):
                    raise ValueError(f"sweep config: grid {i}: {name} takes pairs "
                                     f"{list(ALIASES[name])}, got {list(values)}")
            elif name != "appeal_weight" and name not in fields:
                raise ValueError(f"sweep config: grid {i}: unknown setting {name!r}; settings are "
                                 f"AttackConfig fields, eot_quality or appeal_weight")
            axes.append((name, values))
        grids.append(Grid(attack, preset, tuple(axes)))
    images = tuple(str((base / p) if not Path(p).is_absolute() else p)
                   for p in _as_tuple(data.pop("images")))
    output = data.pop("output", "sweep-out")
    output = str(base / output) if not Path(output).is_absolute() else output
    known = {f.name for f in dataclasses.fields(SweepConfig)} - {"grids", "images", "output"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"sweep config: unknown key(s) {', '.join(unknown)}")
    if data.get("dtype", "float32") not in ("float32", "bfloat16"):
        raise ValueError(f"sweep config: dtype must be 'float32' or 'bfloat16', got "
                         f"{data['dtype']!r}")
    return SweepConfig(images=images, grids=tuple(grids), output=output, **data)


def load_config(path: str | Path) -> SweepConfig:
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    return parse_config(data, path.parent)


def row_key(grid: Grid, settings) -> str:
    """Stable identity of a grid point (the resume key)."""
    return json.dumps({"attack": grid.attack, "preset": grid.preset,
                       "settings": [[k, v] for k, v in settings]}, sort_keys=True)


def read_done(csv_path: Path) -> dict[str, dict]:
    if not csv_path.exists():
        return {}
    with csv_path.open(newline="") as f:
        return {r["key"]: r for r in csv.DictReader(f)}


def list_images(paths) -> list[Path]:
    """Image files named by ``paths`` (files, or folders under ``ppjax.runs.data``'s folder rules:
    hidden files and non-images skipped and logged)."""
    from ppjax.errors import SetupError
    from ppjax.runs import data

    out, missing = [], []
    for p in map(Path, paths):
        if p.is_dir():
            out += [Path(it.path) for it in data.scan_folder(p)[0]]
        elif p.is_file():
            out.append(p)
        else:
            missing.append(f"sweep: no such image or folder: {p}")
    if missing:
        raise SetupError(missing)
    if not out:
        raise SetupError(f"sweep: no images found in {', '.join(map(str, paths))}")
    return out


def load_images(paths, hw: tuple[int, int], max_images: int, errors: list | None = None
                ) -> np.ndarray:
    """[N, H, W, 3] float32 in [0, 1] on the 8-bit grid: the first ``max_images`` readable images
    (decoded by :func:`ppjax.image.io.load_rgb`, Pillow bicubic resize to ``hw``). A file that
    cannot be read is skipped and appended to ``errors`` as ``{"name", "error"}``."""
    from PIL import Image

    from ppjax.errors import SetupError
    from ppjax.image import io as imageio
    from ppjax.runs import data

    out = []
    for p in list_images(paths):
        if len(out) == max_images:
            break
        why = data.refusal_reason(p, p.parent)
        try:
            if why:
                raise imageio.DecodeError(why)
            img, _ = imageio.load_rgb(p)
        except imageio.DecodeError as e:
            log.error("sweep: %s: %s", p, e)
            if errors is not None:
                errors.append({"name": str(p), "error": str(e)})
            continue
        if img.shape[:2] != tuple(hw):
            img = imageio.resize_plain(img, hw, Image.BICUBIC)
        out.append(imageio.to_float01(img))
    if not out:
        raise SetupError(f"sweep: none of the images could be read ({len(errors or [])} failed)")
    return np.stack(out)


def _attack_config(grid: Grid, settings, has_appeal: bool):
    from ppjax.attacks import OBJECTIVES, get_attack, with_appeal
    from ppjax.attacks.objectives import register

    s = dict(settings)
    weight = s.pop("appeal_weight", None)
    cfg = get_attack(grid.attack, grid.preset, **s)
    if weight is not None:
        if not has_appeal:
            raise ValueError("sweep: appeal_weight needs appeal_judge in the config")
        name = f"{cfg.objective}+appeal"
        if name not in OBJECTIVES:
            register(name)(with_appeal(OBJECTIVES[cfg.objective]))
        hyper = dict(cfg.hyper) | {"appeal_weight": float(weight)}
        cfg = cfg.replace(objective=name, hyper=tuple(sorted(hyper.items())))
    return cfg


def run_point(cfg, judge, images: np.ndarray, batch: int, seed: int, appeal=None,
              driver: str = "auto", dtype: str = "float32") -> dict:
    """Attack all ``images`` [N, H, W, 3] with ``cfg`` through the streaming engine
    (:func:`ppjax.attacks.stream`, ``batch`` slots: a finished image's slot takes the next at
    once); per-image results (numpy) in input order. Image i's seed is
    ``default_seeds(N, seed)[i]``. The programs are compiled once per static configuration, so
    points that change only values never recompile. ``driver`` is kept for older configs:
    sweeps always stream."""
    import jax.numpy as jnp

    from ppjax.attacks import StreamItem, default_seeds, stream
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
    x0 = np.round(np.asarray(images, np.float32) * 255) / 255
    out["psnr"] = np.asarray(psnr(jnp.asarray(adv), jnp.asarray(x0)))
    if appeal is not None:  # scored in fixed-size batches (one compile)
        out["appeal"], out["appeal_before"] = (_appeal_scores(appeal, a, batch)
                                               for a in (adv, x0))
    return out


def _appeal_scores(appeal, images: np.ndarray, batch: int) -> np.ndarray:
    """The appeal judge's score of each image, in batches of ``batch`` (the last padded by
    :func:`ppjax.parallel.pad_batch`, so every call has one shape)."""
    import jax.numpy as jnp

    from ppjax.attacks.objectives import appeal_score
    from ppjax.parallel import pad_batch

    return np.concatenate([
        np.asarray(appeal_score(appeal, jnp.asarray(pad_batch(images[i:i + batch], batch))))
        [:len(images[i:i + batch])] for i in range(0, len(images), batch)])


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
    from ppjax.attacks import TRACES
    from ppjax.errors import SetupError
    from ppjax.runs.protect import OutputLock

    points = check_points(cfg, appeal is not None or bool(cfg.appeal_judge))
    out = Path(cfg.output)
    if out.exists() and not out.is_dir():
        raise SetupError(f"sweep output {out} exists and is not a folder")
    judge = judge or load_judge(cfg.judge, cfg.weights_dir, standin=cfg.standin)
    if appeal is None and cfg.appeal_judge:
        appeal = load_judge(cfg.appeal_judge, cfg.weights_dir, standin=cfg.standin)
    file_errors: list[dict] = []
    images = load_images(cfg.images, judge.spec.input_hw, cfg.max_images, file_errors)
    batch = min(cfg.batch, len(images))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create the sweep output {out}: {e.strerror}") from None
    with OutputLock(out):
        csv_path = out / "results.csv"
        done = read_done(csv_path)
        new_file = not csv_path.exists()
        with csv_path.open("a", newline="") as f:
            writer = csv.DictWriter(f, RESULT_FIELDS)
            if new_file:
                writer.writeheader()
            for grid, settings, acfg in points:
                key = row_key(grid, settings)
                if key in done:
                    continue
                before = sum(TRACES.values())
                t0 = time.perf_counter()
                per_image = run_point(acfg, judge, images, batch, cfg.seed, appeal, cfg.driver,
                                      cfg.dtype)
                row = summarise(grid, settings, per_image, time.perf_counter() - t0,
                                sum(TRACES.values()) - before)
                writer.writerow(row)
                f.flush()
                done[key] = row
                log.info("%ssweep %s %s: protection %.3f, PSNR %.2f dB, %d recompiles",
                         "STAND-IN: " if judge.standin else "", grid.attack, dict(settings),
                         row["protection"], row["mean_psnr"], row["recompiles"])
        rows = [typed_row(r) for r in read_done(csv_path).values()]
        from ppjax.runs.report import write_json

        write_json(out / "results.json", {"judge": judge.label, "standin": judge.standin,
                                          "images": len(images), "errors": file_errors,
                                          "rows": rows})
        pareto_plot(rows, out / "pareto.png", label=judge.label, standin=judge.standin)
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated when ``x`` is minimised and ``y`` maximised, ordered
    by ``x``."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -np.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _point_label(row: dict) -> str:
    """Short setting label of a row: ``attack[/preset] k=v ...`` (floats with 3 digits)."""
    st = row.get("settings") or {}
    if isinstance(st, str):
        st = json.loads(st)
    vals = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in st.items())
    preset = row.get("preset")
    head = row["attack"] + (f"/{preset}" if preset and preset != "default" else "")
    return f"{head} {vals}".strip()


def pareto_plot(rows: list[dict], path: Path, label: str = "", x_key: str = "mean_l2",
                y_key: str = "protection", size=(720, 480), standin: bool = False) -> None:
    """Scatter of protection (success rate) against distortion (mean L2), points coloured by
    attack and labelled with their settings, the Pareto front as a line (matplotlib, Agg);
    ``size`` in pixels at 100 dpi."""
    from ppjax.runs.report import figure, save_figure, wrap_title

    pts = [(float(r[x_key]), float(r[y_key]), r["attack"], _point_label(r)) for r in rows
           if r.get(x_key) not in ("", None) and r.get(y_key) not in ("", None)]
    fig = figure(size[0] / 100, size[1] / 100)
    ax = fig.subplots()
    fig.suptitle(wrap_title(f"{'STAND-IN: ' if standin else ''}Pixel Privacy sweep: {label}",
                            size[0] - 20), fontsize=10)
    ax.set_xlabel("distortion: mean L2 of the change (pixels in [0, 1])")
    ax.set_ylabel("protection (attack success rate)")
    ax.set_ylim(-0.05, 1.1)
    ax.grid(alpha=0.3)
    if pts:
        front = pareto_front([(p[0], p[1]) for p in pts])
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="#888888", lw=1.5,
                zorder=1, label="Pareto front")
        for attack in sorted({p[2] for p in pts}):
            sel = [p for p in pts if p[2] == attack]
            ax.scatter([p[0] for p in sel], [p[1] for p in sel], s=36, edgecolor="black",
                       zorder=2, label=attack)
        for x, y, _, text in pts:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=7)
        ax.set_xlim(0, max(p[0] for p in pts) * 1.25 or 1.0)
        fig.legend(loc="outside lower center", ncols=6, fontsize=8, frameon=False)  # not over points
    save_figure(fig, path)
