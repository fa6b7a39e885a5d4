"""Objectives: per-image, unreduced losses (to MINIMISE) and success tests.

An :class:`Objective` is built from an :class:`~ppjax.attacks.config.AttackConfig` by a factory
registered in :data:`OBJECTIVES`. Its ``evaluate(models, x, aux, hp)`` sees:

* ``models``: a dict of judges (pytrees), ``models["judge"]`` being the attacked one; extra
  judges (e.g. ``models["appeal"]``, a NIMA) ride along without the loop knowing them;
* ``x``: [B, H, W, 3] float32 in [0, 1], the image the judge sees (8-bit rounded, or passed
  through an EOT transform);
* ``aux``: per-batch data: ``labels`` [B] int32 (true classes), ``targets`` [B] int32,
  ``group`` [C] bool (class set of the group objective);
* ``hp``: traced hyperparameters (f32 scalars: ``kappa``, ``threshold``, ``margin``, ...).

and returns :class:`Terms`. New objectives (an appeal term, quality camouflage, ...) are added by
registering a factory; the loop is untouched. :func:`with_appeal` shows the pattern.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.registry import Registry


class Terms(NamedTuple):
    """What an objective reports for a batch (all [B])."""

    loss: jnp.ndarray  # float32, to minimise
    success: jnp.ndarray  # bool: the judge is fooled
    score: jnp.ndarray  # float32, a readable per-image figure (label margin, judge score)
    appeal: jnp.ndarray | None = None  # float32, higher is better (None: no appeal term)


def fill_labels(z: jnp.ndarray, aux: dict) -> dict:
    """Missing labels (< 0) become the clean top-1 of the logits ``z`` [B, C] float32."""
    labels = jnp.where(aux["labels"] < 0, jnp.argmax(z, -1), aux["labels"])
    return {**aux, "labels": labels.astype(jnp.int32)}


def fill_least_likely(z: jnp.ndarray, aux: dict) -> dict:
    """:func:`fill_labels`, and the targets become the clean bottom-1."""
    return {**fill_labels(z, aux), "targets": jnp.argmin(z, -1).astype(jnp.int32)}


class Objective(NamedTuple):
    """``evaluate(models, x, aux, hp) -> Terms``; ``output`` is the judge output it needs;
    ``prepare(z, aux) -> aux`` fills ``aux`` from the judge's clean logits ``z`` [B, C] float32
    (default :func:`fill_labels`; None: no labelling pass; used with ``output="logits"``)."""

    evaluate: Callable[..., Terms]
    output: str = "logits"  # "logits" | "score"
    prepare: Callable[[jnp.ndarray, dict], dict] | None = fill_labels


#: Objective factories by name (``AttackConfig.objective``): ``factory(cfg) -> Objective``.
OBJECTIVES: Registry = Registry("objective")

#: ``"<name>" + APPEAL_SUFFIX`` is objective ``name`` with an appeal term (:func:`with_appeal`).
APPEAL_SUFFIX = "+appeal"


def register(name: str):
    """Decorator: register an objective factory ``factory(cfg) -> Objective`` under ``name``
    (``OBJECTIVES.register``)."""
    return OBJECTIVES.register(name)


def objective_factory(name: str) -> Callable[[Any], Objective]:
    """The factory ``name`` stands for: a registered objective, or ``"<base>+appeal"``,
    composed as ``with_appeal(<base>)`` for any registered base (nothing is registered for
    it). Raises :class:`ppjax.registry.UnknownName` naming the known objectives."""
    if name not in OBJECTIVES and name.endswith(APPEAL_SUFFIX):
        return with_appeal(objective_factory(name.removesuffix(APPEAL_SUFFIX)))
    return OBJECTIVES[name]


def make_objective(cfg) -> Objective:
    """The objective ``cfg.objective`` names, built for ``cfg``."""
    return objective_factory(cfg.objective)(cfg)


# ----------------------------------------------------------------------------- logit helpers


def _logits(models, x) -> jnp.ndarray:
    out = models["judge"](x)
    if out.ndim != 2:
        raise TypeError(f"this objective needs a judge that outputs logits [B, C]; got {out.shape}")
    return out.astype(jnp.float32)


def _pick(z: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    return jnp.take_along_axis(z, idx[:, None].astype(jnp.int32), axis=-1)[:, 0]


def label_margin(z: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """``z_y - max_{j != y} z_j``: [B]; negative means the label is no longer top-1."""
    onehot = jax.nn.one_hot(labels, z.shape[-1], dtype=bool)
    other = jnp.max(jnp.where(onehot, -jnp.inf, z), axis=-1)
    return _pick(z, labels) - other


def cross_entropy(z: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-image cross-entropy [B] of logits ``z`` [B, C] against integer ``labels`` [B]."""
    return -_pick(jax.nn.log_softmax(z, axis=-1), labels)


# ----------------------------------------------------------------------------- classifiers


@register("ce")
def untargeted_ce(cfg) -> Objective:
    """Untargeted: raise the cross-entropy of the true label; success = top-1 != label, and with
    a confidence ``kappa`` > 0 also ``z_y - max_{j!=y} z_j <= -kappa`` (PerC-AL's test)."""

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        m = label_margin(z, aux["labels"])
        succ = (jnp.argmax(z, -1) != aux["labels"]) & ((hp["kappa"] <= 0) | (m <= -hp["kappa"]))
        return Terms(-cross_entropy(z, aux["labels"]), succ, m)

    return Objective(evaluate)


@register("margin")
def untargeted_margin(cfg) -> Objective:
    """C&W margin ``max(z_y - max_{j!=y} z_j, -kappa)``; success = margin < -kappa (kappa >= 0),
    which for kappa = 0 is top-1 != label."""

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        m = label_margin(z, aux["labels"])
        return Terms(jnp.maximum(m, -hp["kappa"]), m < -hp["kappa"], m)

    return Objective(evaluate)


@register("targeted")
def targeted(cfg) -> Objective:
    """Targeted: lower the cross-entropy of ``aux["targets"]``; success = top-1 == target."""

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        t = aux["targets"]
        return Terms(cross_entropy(z, t), jnp.argmax(z, -1) == t, -label_margin(z, t))

    return Objective(evaluate)


@register("least_likely")
def least_likely(cfg) -> Objective:
    """Iterative least-likely class (Kurakin et al.): descend the cross-entropy of the clean
    image's least likely class (``aux["targets"]``, filled in by the loop); success = top-1 !=
    the true label."""

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        return Terms(cross_entropy(z, aux["targets"]), jnp.argmax(z, -1) != aux["labels"],
                     label_margin(z, aux["labels"]))

    return Objective(evaluate, prepare=fill_least_likely)


@register("topk")
def topk(cfg) -> Objective:
    """The true label must leave the top-k (``cfg.topk``): loss ``max(z_y - z_(k), -kappa)``
    where ``z_(k)`` is the k-th largest other logit; success = at least k classes above it."""
    k = int(cfg.topk)

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        y = aux["labels"]
        onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
        kth = jax.lax.top_k(jnp.where(onehot, -jnp.inf, z), k)[0][:, k - 1]
        m = _pick(z, y) - kth
        above = jnp.sum(z > _pick(z, y)[:, None], axis=-1)
        return Terms(jnp.maximum(m, -hp["kappa"]), above >= k, m)

    return Objective(evaluate)


@register("group")
def group(cfg) -> Objective:
    """Group protection: the top-1 must leave a set of classes (``aux["group"]`` [C] bool, e.g.
    the 60 sensitive categories or all indoor classes). Loss = margin between the best class
    inside the set and the best outside, floored at ``-kappa``; success = top-1 outside."""

    def evaluate(models, x, aux, hp):
        z = _logits(models, x)
        g = aux["group"].astype(bool)[None, :]
        m = jnp.max(jnp.where(g, z, -jnp.inf), -1) - jnp.max(jnp.where(g, -jnp.inf, z), -1)
        top_in = jnp.take(aux["group"].astype(bool), jnp.argmax(z, -1))
        return Terms(jnp.maximum(m, -hp["kappa"]), ~top_in, m)

    return Objective(evaluate, prepare=None)  # no labels: the class set decides


# ----------------------------------------------------------------------------- ensembles

ENSEMBLE_PREFIX = "ens"


def ensemble_keys(models) -> list[str]:
    """The ensemble's members in ``models``: ``"judge"`` first, then every ``ens*`` key sorted
    (``ensemble_members`` names them ``ens01``, ``ens02``, ...)."""
    return ["judge"] + sorted(k for k in models if k.startswith(ENSEMBLE_PREFIX))


def member_logits(judge, x: jnp.ndarray) -> jnp.ndarray:
    """Logits [B, C] float32 of one member on ``x`` [B, H, W, 3] in [0, 1]: its own
    preprocessing runs inside its module; an image of another size is first resized bilinearly
    (antialiased) to the member's input size."""
    spec = getattr(judge, "spec", None)
    if spec is not None and spec.input_hw is not None and tuple(x.shape[1:3]) != tuple(spec.input_hw):
        x = jax.image.resize(x, (x.shape[0], *spec.input_hw, x.shape[3]), "linear", antialias=True)
    z = judge(x)
    if z.ndim != 2:
        raise TypeError(f"ensemble members must output logits [B, C]; got {z.shape}")
    return z.astype(jnp.float32)


def _ensemble(reduce: str):
    """Untargeted ensemble over the members :func:`ensemble_keys` finds in ``models``.

    Member ``k`` has the traced weight ``hp["w_<k>"]`` (default 1; weights are normalised to
    sum to 1, so changing them never recompiles). ``reduce``:
      * ``"logits"``: ``z = sum_k w_k z_k``, loss ``-CE(z, y)`` (Liu et al. 2017's logit
        ensemble);
      * ``"losses"``: loss ``-sum_k w_k CE(z_k, y)``.
    Success: ``hp["success_on"] < 0`` (default) needs top-1 != y on every member; ``i >= 0``
    only on member ``i`` (the order of :func:`ensemble_keys`). Score: the weighted label margin.
    """

    def factory(cfg) -> Objective:
        def evaluate(models, x, aux, hp):
            keys = ensemble_keys(models)
            y = aux["labels"]
            zs = [member_logits(models[k], x) for k in keys]
            if len({z.shape[-1] for z in zs}) != 1:
                raise ValueError(f"ensemble members disagree on the number of classes: "
                                 f"{dict(zip(keys, [z.shape[-1] for z in zs], strict=True))}")
            w = jnp.stack([jnp.asarray(hp.get(f"w_{k}", 1.0), jnp.float32) for k in keys])
            w = w / jnp.sum(w)
            if reduce == "logits":
                loss = -cross_entropy(sum(wk * z for wk, z in zip(w, zs, strict=True)), y)
            else:
                loss = -sum(wk * cross_entropy(z, y) for wk, z in zip(w, zs, strict=True))
            fooled = jnp.stack([jnp.argmax(z, -1) != y for z in zs])  # [K, B]
            on = jnp.asarray(hp.get("success_on", -1.0), jnp.float32).astype(jnp.int32)
            chosen = jnp.take(fooled, jnp.clip(on, 0, len(keys) - 1), axis=0)
            success = jnp.where(on < 0, jnp.all(fooled, axis=0), chosen)
            margin = sum(wk * label_margin(z, y) for wk, z in zip(w, zs, strict=True))
            return Terms(loss, success, margin)

        return Objective(evaluate)

    return factory


OBJECTIVES.register("ensemble_logits", _ensemble("logits"))
OBJECTIVES.register("ensemble_losses", _ensemble("losses"))


def ensemble_members(judges, weights=None, success_on: int | str | None = None
                     ) -> tuple[Any, dict, dict]:
    """Arguments for an ensemble attack over ``judges`` (the first is the attacked judge).

    Returns ``(judge, extra_judges, hyper)`` for ``ppjax.attack(cfg, judge, x,
    extra_judges=extra_judges, objective="ensemble_logits" | "ensemble_losses", hyper=hyper)``.
    ``weights``: one per judge (default equal). ``success_on``: None = success on every member,
    else the index or spec name of the one member whose top-1 must change.
    """
    judges = list(judges)
    if not judges:
        raise ValueError("an ensemble needs at least one judge")
    weights = [1.0] * len(judges) if weights is None else [float(w) for w in weights]
    if len(weights) != len(judges) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"ensemble weights: one non-negative weight per judge, not all zero "
                         f"({len(judges)} judges, weights {weights})")
    keys = ["judge"] + [f"{ENSEMBLE_PREFIX}{i:02d}" for i in range(1, len(judges))]
    if success_on is None:
        on = -1
    elif isinstance(success_on, str):
        names = [getattr(getattr(j, "spec", None), "name", None) for j in judges]
        if success_on not in names:
            raise ValueError(f"success_on={success_on!r} is not a member ({names})")
        on = names.index(success_on)
    else:
        on = int(success_on)
        if not 0 <= on < len(judges):
            raise ValueError(f"success_on={on} is not a member index (0..{len(judges) - 1})")
    hyper = {f"w_{k}": w for k, w in zip(keys, weights, strict=True)}
    hyper["success_on"] = float(on)
    return judges[0], dict(zip(keys[1:], judges[1:], strict=True)), hyper


# ----------------------------------------------------------------------------- score judges


def _score(models, x) -> jnp.ndarray:
    return models["judge"].score(x).astype(jnp.float32)


@register("score_below")
def score_below(cfg) -> Objective:
    """Regression judges (``judge.score(x)`` [B]): push the score below ``threshold`` with a
    ``margin``: loss = ``max(score - (threshold - margin), 0)``; success = score < threshold."""

    def evaluate(models, x, aux, hp):
        s = _score(models, x)
        return Terms(jnp.maximum(s - (hp["threshold"] - hp["margin"]), 0.0), s < hp["threshold"], s)

    return Objective(evaluate, output="score")


@register("score_mse")
def score_mse(cfg) -> Objective:
    """Pull the score toward the target ``threshold - margin`` (squared error, as the 2020 I-FGSM
    baseline pulled KonCept512 toward 30: ``threshold = 50``, ``margin = 20``); success = score <
    threshold. Both are traced, so a sweep over the target does not recompile."""

    def evaluate(models, x, aux, hp):
        s = _score(models, x)
        return Terms((s - (hp["threshold"] - hp["margin"])) ** 2, s < hp["threshold"], s)

    return Objective(evaluate, output="score")


# ----------------------------------------------------------------------------- extensions


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices [n_out] int32 of Pillow's ``Image.resize(..., NEAREST)`` along one axis.

    Pillow (``ImagingScaleAffine``) starts at ``a / 2`` with ``a = n_in / n_out``, adds ``a`` in
    double precision for every output pixel and truncates; the accumulated rounding makes some
    indices differ from ``floor((i + 0.5) * a)`` (256 -> 224: 3 of every 7 rows), so the loop is
    copied as is."""
    a = n_in / n_out
    v, out = a * 0.5, []
    for _ in range(n_out):
        out.append(int(v))
        v += a
    return np.minimum(np.asarray(out, np.int32), n_in - 1)


def resize_nearest(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Nearest-neighbour resize ``x`` [B, H, W, C] -> [B, h, w, C] with Pillow's sampling grid
    (what Keras ``load_img(target_size=...)`` and :func:`ppjax.image.io.resize_plain` do). A plain
    gather: differentiable in ``x`` (each output pixel's gradient lands on its source pixel)."""
    h, w = hw
    if tuple(x.shape[1:3]) == (h, w):
        return x
    rows = pil_nearest_indices(x.shape[1], h)
    cols = pil_nearest_indices(x.shape[2], w)
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)


#: How each appeal judge's original brings an image to the network (``"auto"`` picks this;
#: judges not listed use ``"nearest"`` to their ``spec.input_hw``):
#: * ``nima_mobilenet`` (titu1994's Keras NIMA): its evaluation script scores images at their
#:   native size by default (MobileNet with global pooling takes any size); ``-resize true``
#:   resizes to 224x224 with nearest (rule ``"nearest"``);
#: * ``nima_mobilenetv2`` (nima.pytorch): ``Resize((224, 224))``, bilinear (rule ``"bilinear"``).
APPEAL_RESIZE = {"nima_mobilenet": "native", "nima_mobilenetv2": "bilinear"}


def resize_bilinear(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize ``x`` [B, H, W, C] -> [B, h, w, C] with a triangle filter widened when
    shrinking (antialiased, as Pillow's ``BILINEAR``, which torchvision's ``Resize`` calls on PIL
    images); differentiable."""
    h, w = hw
    if tuple(x.shape[1:3]) == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "linear", antialias=True)


def _native(judge, x):
    """The judge takes ``x`` at its own size (a judge with global pooling)."""
    hw = tuple(x.shape[1:3])
    if hw != tuple(judge.spec.input_hw):
        judge = judge.replace(spec=dataclasses.replace(judge.spec, input_hw=hw))
    return judge, x


#: How an appeal judge is shown an image, by rule name: ``fn(judge, x) -> (judge', x')``.
APPEAL_RESIZERS: Registry = Registry("appeal resize rule")
APPEAL_RESIZERS.register("native", _native)
APPEAL_RESIZERS.register("nearest", lambda judge, x: (
    judge, resize_nearest(x, tuple(judge.spec.input_hw))))
APPEAL_RESIZERS.register("bilinear", lambda judge, x: (
    judge, resize_bilinear(x, tuple(judge.spec.input_hw))))


def appeal_resize_rules() -> tuple[str, ...]:
    """The accepted ``appeal_resize`` values: ``"auto"`` and every registered rule."""
    return ("auto", *APPEAL_RESIZERS)


def appeal_resize_rule(judge, rule: str = "auto") -> str:
    """The resize rule used for ``judge`` (``rule`` unless "auto"; see :data:`APPEAL_RESIZE`)."""
    if rule not in appeal_resize_rules():
        raise ValueError(f"appeal resize rule {rule!r}; choose one of "
                         f"{', '.join(appeal_resize_rules())}")
    if rule != "auto":
        return rule
    spec = getattr(judge, "spec", None)
    return APPEAL_RESIZE.get(getattr(spec, "name", None), "nearest")


def appeal_input(judge, x: jnp.ndarray, rule: str = "auto"):
    """``(judge', x')``: the image ``x`` [B, H, W, 3] in [0, 1] as the appeal judge's original
    feeds it to the network (the single owner of that rule: the attack's appeal term, ``ppjax
    evaluate`` and ``ppjax sweep`` all call it). With ``"native"``, ``judge'`` accepts ``x`` at
    its own size."""
    rule = appeal_resize_rule(judge, rule)
    if getattr(judge, "spec", None) is None or judge.spec.input_hw is None:  # any size
        return judge, x
    return APPEAL_RESIZERS[rule](judge, x)


def appeal_score(judge, x: jnp.ndarray, rule: str = "auto") -> jnp.ndarray:
    """Appeal [B] float32 of ``x`` [B, H, W, 3] in [0, 1]: ``judge.score`` (the NIMA mean for a
    distribution judge) of the image brought to the judge as its original does
    (:func:`appeal_input`), so the attack optimises exactly the figure that is reported."""
    judge, x = appeal_input(judge, x, rule)
    return judge.score(x).astype(jnp.float32)


_appeal_score_jit = jax.jit(appeal_score, static_argnums=2)


def appeal_scores(judge, images, batch: int, rule: str = "auto") -> np.ndarray:
    """:func:`appeal_score` of every image of ``images`` [N, H, W, 3] in [0, 1] (numpy [N]),
    compiled once and run in batches of ``batch`` (the last padded by
    :func:`ppjax.parallel.pad_batch`, so every call has one shape): how ``ppjax evaluate`` and
    ``ppjax sweep`` score appeal."""
    from ppjax.parallel import pad_batch

    images = np.asarray(images, np.float32)
    return np.concatenate([
        np.asarray(_appeal_score_jit(judge, jnp.asarray(pad_batch(images[i:i + batch], batch)),
                                     rule))[:len(images[i:i + batch])]
        for i in range(0, len(images), batch)])


def with_appeal(base: Callable[[Any], Objective], judge_key: str = "appeal",
                weight: str = "appeal_weight") -> Callable[[Any], Objective]:
    """Wrap an objective factory with an appeal term: ``appeal = appeal_score(models[judge_key],
    x)`` (e.g. NIMA's mean score, on ``x`` resized as the evaluation does) and ``loss -= hp[weight]
    * appeal``; the weight is a traced value passed through ``AttackConfig.hyper`` (changing it
    does not recompile). Every registered objective is also reachable as ``"<name>+appeal"``
    (e.g. ``"score_below+appeal"``, :func:`objective_factory`); set ``best="appeal"`` to keep
    the most appealing success.
    The result reports ``appeal_before`` / ``appeal_after`` per image."""

    def factory(cfg) -> Objective:
        inner = base(cfg)

        def evaluate(models, x, aux, hp):
            if judge_key not in models:
                raise KeyError(f"objective {cfg.objective!r} needs an appeal judge: pass "
                               f"extra_judges={{{judge_key!r}: judge}} (e.g. a NIMA)")
            if weight not in hp:
                raise KeyError(f"objective {cfg.objective!r} needs a traced {weight!r}: set "
                               f"hyper={{{weight!r}: w}} in the attack config")
            t = inner.evaluate(models, x, aux, hp)
            a = appeal_score(models[judge_key], x, getattr(cfg, "appeal_resize", "auto"))
            return t._replace(loss=t.loss - hp[weight] * a, appeal=a)

        return Objective(evaluate, inner.output, inner.prepare)

    return factory


# ----------------------------------------------------------------------------- class sets


def read_sensitive_categories(path: str | Path) -> tuple[int, ...]:
    """Places365 indices of ``MEPP18senscats.txt`` (lines ``/b/bedroom 52``; the file starts
    with a UTF-8 byte-order mark and has trailing spaces)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected '<category> <index>', got {line!r}")
        out.append(int(parts[1]))
    return tuple(sorted(set(out)))


def read_indoor_classes(path: str | Path) -> tuple[int, ...]:
    """Indices of the indoor classes of ``IO_places365.txt`` (line i = class i, ``1`` = indoor,
    ``2`` = outdoor)."""
    out = []
    lines = [ln for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("1", "2"):
            raise ValueError(f"{path}:{i + 1}: expected '<category> 1|2', got {line!r}")
        if parts[1] == "1":
            out.append(i)
    return tuple(out)


def class_mask(indices, num_classes: int) -> np.ndarray:
    """Boolean mask [num_classes] with True at ``indices``."""
    idx = np.asarray(list(indices), np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes}); got {idx.min()}..{idx.max()}")
    m = np.zeros(num_classes, bool)
    m[idx] = True
    return m
