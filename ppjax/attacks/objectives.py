"""Objectives: per-image, unreduced losses (to MINIMISE) and success tests.

An :class:`Objective` is built from an :class:`~ppjax.attacks.config.AttackConfig` by a factory
registered in :data:`OBJECTIVES`. Its ``evaluate(models, x, aux, cfg)`` sees:

* ``models``: a dict of judges (pytrees), ``models["judge"]`` being the attacked one; extra
  judges (e.g. ``models["appeal"]``, a NIMA) ride along without the loop knowing them;
* ``x``: [B, H, W, 3] float32 in [0, 1], the image the judge sees (8-bit rounded, or passed
  through an EOT transform);
* ``aux``: per-batch data: ``labels`` [B] int32 (true classes), ``targets`` [B] int32,
  ``group`` [C] bool (class set of the group objective);
* ``cfg``: the :class:`~ppjax.attacks.config.AttackConfig` (inside the programs its traced
  values, ``cfg.kappa``, ``cfg.threshold``, ``cfg.margin``, ..., are f32 scalars; extra ones
  registered objectives need come from ``cfg.hyper_value(name)``).

and returns :class:`Terms`. New objectives (an appeal term, quality camouflage, ...) are added by
registering a factory; the loop is untouched. :func:`with_appeal` shows the pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppjax.attacks.appeal import appeal_score
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


class Input(NamedTuple):
    """A per-image input an objective reads from ``aux``: ``aux[name]`` is [B, *shape] of
    ``dtype``; an image that was given none gets ``fill``. ``ppjax.attack`` (keyword ``name`` or
    ``inputs={name: ...}``), :class:`ppjax.attacks.StreamItem` (``inputs={name: ...}``) and the
    stream's slots carry whatever the objective declares."""

    name: str
    shape: tuple[int, ...] = ()
    dtype: str = "int32"
    fill: float = -1


#: The classifier inputs: ``labels`` (true classes; -1 = the clean top-1) and ``targets``.
LABELS = (Input("labels"), Input("targets"))


class Objective(NamedTuple):
    """``evaluate(models, x, aux, cfg) -> Terms``; ``output`` is the judge output it needs;
    ``prepare(z, aux) -> aux`` fills ``aux`` from the judge's clean logits ``z`` [B, C] float32
    (default :func:`fill_labels`; None: no labelling pass; used with ``output="logits"``).

    ``inputs``: the per-image arrays it reads from ``aux`` (:class:`Input`; default
    :data:`LABELS`). ``aux`` may also hold shared (not per-image) inputs, e.g. ``group``.

    ``terms(out, models, x, aux, cfg) -> Terms`` (optional, :func:`from_output`): ``evaluate``
    given the attacked judge's output ``out = models["judge"](x)``, so a caller that already has
    it (the loop, with the clean logits its labelling pass made) passes it explicitly instead
    of running the judge again. Without it the loop judges ``x`` through ``evaluate``.
    """

    evaluate: Callable[..., Terms]
    output: str = "logits"  # "logits" | "score"
    prepare: Callable[[jnp.ndarray, dict], dict] | None = fill_labels
    terms: Callable[..., Terms] | None = None
    inputs: tuple[Input, ...] = LABELS


def from_output(terms: Callable[..., Terms], prepare=fill_labels,
                inputs: tuple[Input, ...] = LABELS) -> Objective:
    """A logits objective defined by its ``terms(out, models, x, aux, cfg)`` (see
    :class:`Objective`): ``evaluate`` runs the attacked judge and passes its output on."""

    def evaluate(models, x, aux, cfg):
        return terms(models["judge"](x), models, x, aux, cfg)

    return Objective(evaluate, "logits", prepare, terms, inputs)


#: Objective factories by name (``AttackConfig.objective``): ``factory(cfg) -> Objective``.
OBJECTIVES: Registry = Registry("objective")

#: ``"<name>" + APPEAL_SUFFIX`` is objective ``name`` with an appeal term (:func:`with_appeal`).
APPEAL_SUFFIX = "+appeal"


def register(name: str):
    """Decorator: register an objective factory ``factory(cfg) -> Objective`` under ``name``
    (``OBJECTIVES.register``)."""
    return OBJECTIVES.register(name)


def appeal_objective(name: str) -> str:
    """Objective ``name`` with an appeal term (idempotent): the one spelling of the grammar."""
    return name if name.endswith(APPEAL_SUFFIX) else f"{name}{APPEAL_SUFFIX}"


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


def as_logits(out) -> jnp.ndarray:
    """The attacked judge's output ``out`` as logits [B, C] float32 (a clear error otherwise)."""
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

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        m = label_margin(z, aux["labels"])
        succ = (jnp.argmax(z, -1) != aux["labels"]) & ((cfg.kappa <= 0) | (m <= -cfg.kappa))
        return Terms(-cross_entropy(z, aux["labels"]), succ, m)

    return from_output(terms)


@register("margin")
def untargeted_margin(cfg) -> Objective:
    """C&W margin ``max(z_y - max_{j!=y} z_j, -kappa)``; success = margin < -kappa (kappa >= 0),
    which for kappa = 0 is top-1 != label."""

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        m = label_margin(z, aux["labels"])
        return Terms(jnp.maximum(m, -cfg.kappa), m < -cfg.kappa, m)

    return from_output(terms)


@register("targeted")
def targeted(cfg) -> Objective:
    """Targeted: lower the cross-entropy of ``aux["targets"]``; success = top-1 == target."""

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        t = aux["targets"]
        return Terms(cross_entropy(z, t), jnp.argmax(z, -1) == t, -label_margin(z, t))

    return from_output(terms)


@register("least_likely")
def least_likely(cfg) -> Objective:
    """Iterative least-likely class (Kurakin et al.): descend the cross-entropy of the clean
    image's least likely class (``aux["targets"]``, filled in by the loop); success = top-1 !=
    the true label."""

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        return Terms(cross_entropy(z, aux["targets"]), jnp.argmax(z, -1) != aux["labels"],
                     label_margin(z, aux["labels"]))

    return from_output(terms, prepare=fill_least_likely)


@register("topk")
def topk(cfg) -> Objective:
    """The true label must leave the top-k (``cfg.topk``): loss ``max(z_y - z_(k), -kappa)``
    where ``z_(k)`` is the k-th largest other logit; success = at least k classes above it."""
    k = int(cfg.topk)

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        y = aux["labels"]
        onehot = jax.nn.one_hot(y, z.shape[-1], dtype=bool)
        kth = jax.lax.top_k(jnp.where(onehot, -jnp.inf, z), k)[0][:, k - 1]
        m = _pick(z, y) - kth
        above = jnp.sum(z > _pick(z, y)[:, None], axis=-1)
        return Terms(jnp.maximum(m, -cfg.kappa), above >= k, m)

    return from_output(terms)


@register("group")
def group(cfg) -> Objective:
    """Group protection: the top-1 must leave a set of classes (``aux["group"]`` [C] bool, e.g.
    the 60 sensitive categories or all indoor classes). Loss = margin between the best class
    inside the set and the best outside, floored at ``-kappa``; success = top-1 outside."""

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        g = aux["group"].astype(bool)[None, :]
        m = jnp.max(jnp.where(g, z, -jnp.inf), -1) - jnp.max(jnp.where(g, -jnp.inf, z), -1)
        top_in = jnp.take(aux["group"].astype(bool), jnp.argmax(z, -1))
        return Terms(jnp.maximum(m, -cfg.kappa), ~top_in, m)

    return from_output(terms, prepare=None)  # no labels: the class set decides


# ----------------------------------------------------------------------------- appeal


def with_appeal(base: Callable[[Any], Objective], judge_key: str = "appeal",
                weight: str = "appeal_weight") -> Callable[[Any], Objective]:
    """Wrap an objective factory with an appeal term: ``appeal = appeal_score(models[judge_key],
    x)`` (e.g. NIMA's mean score, on ``x`` resized as the evaluation does) and
    ``loss -= cfg.hyper_value(weight) * appeal``; the weight is a traced value passed through
    ``AttackConfig.hyper`` (changing it does not recompile). Every registered objective is
    also reachable as ``"<name>+appeal"`` (e.g. ``"score_below+appeal"``,
    :func:`objective_factory`); set ``best="appeal"`` to keep the most appealing success.
    The result reports ``appeal_before`` / ``appeal_after`` per image."""

    def factory(cfg) -> Objective:
        inner = base(cfg)

        def appealing(t: Terms, models, x, cfg) -> Terms:
            if judge_key not in models:
                raise KeyError(f"objective {cfg.objective!r} needs an appeal judge: pass "
                               f"extra_judges={{{judge_key!r}: judge}} (e.g. a NIMA)")
            if cfg.hyper_value(weight) is None:
                raise KeyError(f"objective {cfg.objective!r} needs a traced {weight!r}: set "
                               f"hyper={{{weight!r}: w}} in the attack config")
            a = appeal_score(models[judge_key], x, getattr(cfg, "appeal_resize", "auto"))
            return t._replace(loss=t.loss - cfg.hyper_value(weight) * a, appeal=a)

        def evaluate(models, x, aux, cfg):
            return appealing(inner.evaluate(models, x, aux, cfg), models, x, cfg)

        def terms(out, models, x, aux, cfg):
            return appealing(inner.terms(out, models, x, aux, cfg), models, x, cfg)

        return Objective(evaluate, inner.output, inner.prepare,
                         None if inner.terms is None else terms, inner.inputs)

    return factory
