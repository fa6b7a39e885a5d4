"""The attack loop's state and the helpers its parts share: the per-image state
(:class:`State`), the iterate and what judging it learnt (:class:`Iterate`, :class:`Judged`),
per-image keys and selection, the config's static parts (:func:`parts`) and the judging view.
Used by :mod:`ppjax.attacks.loop` and :mod:`ppjax.attacks.probes`."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from ppjax.attacks import boosters
from ppjax.attacks.objectives import Terms, make_objective
from ppjax.attacks.parameterisations import expand_to, make_parameterisation
from ppjax.image.jpeg import jpeg


class Progress(NamedTuple):
    """Where each image is ([B] arrays)."""

    t: jnp.ndarray  # int32: iteration within the image's current round (0..steps)
    round: jnp.ndarray  # int32: the image's current round
    active: jnp.ndarray  # bool: the image runs the next iteration
    steps_used: jnp.ndarray  # int32: updates applied (all rounds)
    iterations: jnp.ndarray  # int32: iterations that judged this image (all rounds)
    success: jnp.ndarray  # bool: succeeded at least once
    success_step: jnp.ndarray  # int32: steps_used at the first success, -1 if none
    round_success: jnp.ndarray  # bool: success within this round
    stop_at: jnp.ndarray  # int32: steps_used at which an early-stopped image freezes
    plateau_loss: jnp.ndarray  # float32: loss at the last plateau check (cfg.plateau > 0)


class Best(NamedTuple):
    """The kept image per image and its judgement, taken in :func:`ppjax.attacks.loop.step`
    from the very forward pass that judged it (what a fresh forward pass of it would report;
    appeal None without an appeal term)."""

    x: jnp.ndarray  # [B, H, W, 3] 8-bit
    key: jnp.ndarray  # float32: its ranking key (smaller is better)
    score: jnp.ndarray  # float32
    success: jnp.ndarray  # bool
    appeal: jnp.ndarray | None  # float32


class Search(NamedTuple):
    """The binary search of the per-image constant of the penalty formulation ([B] float32)."""

    const: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray  # 1e10 = no upper bound yet


class Clean(NamedTuple):
    """The clean images' judgement (of ``judge_view(x0)``), made once by
    :func:`ppjax.attacks.loop.judge_clean`, or, when
    :func:`ppjax.attacks.loop.clean_in_first_step`, by the first iteration's own forward pass.

    aux: the batch's aux with missing labels filled (the judge's clean top-1) and, for the
      least-likely objective, the clean bottom-1 as targets.
    terms: the objective's :class:`~ppjax.attacks.objectives.Terms` of the clean images.
    pending: [B] bool, the images whose clean judgement the next iteration takes (None when
      :func:`ppjax.attacks.loop.judge_clean` judged them all).
    """

    aux: dict
    terms: Terms
    pending: jnp.ndarray | None = None


class State(NamedTuple):
    """Loop state; every array is per image ([B, ...]) except ``aux["group"]``."""

    params: Any  # the parameterisation's parameters
    probe_state: Any  # the probe's state (the step rule's, or a score-based search's)
    aux: dict  # labels [B] int32, targets [B] int32, group [C] bool
    progress: Progress
    best: Best
    search: Search
    clean: Clean  # terms.score / terms.appeal are reported as *_before


def image_keys(seeds: jnp.ndarray, *tags) -> jnp.ndarray:
    """One PRNG key per image from its own seed: ``fold_in(key(seed), tag)...``; a tag is a
    scalar or one value per image (e.g. the image's own round and iteration)."""

    def one(seed, *tags):
        k = jax.random.key(seed)
        for tag in tags:
            k = jax.random.fold_in(k, tag)
        return k

    tags = [jnp.broadcast_to(jnp.asarray(tag, jnp.int32), seeds.shape) for tag in tags]
    return jax.vmap(one)(seeds, *tags)


def select(mask, new, old):
    """Per-image ``where`` over pytrees; leaves without the batch axis take ``new``."""
    b = mask.shape[0]

    def pick(n, o):
        if getattr(n, "ndim", 0) >= 1 and n.shape[0] == b:
            return jnp.where(expand_to(mask, n), n, o)
        return n

    return jax.tree.map(pick, new, old)


def select_state(mask, new: State, old: State) -> State:
    """Per-image choice between two states of the same batch (``aux`` is taken from ``new``)."""
    picked = select(mask, new._replace(aux=None), old._replace(aux=None))
    return picked._replace(aux=new.aux)


class Parts(NamedTuple):
    """The parts of a config that are built from its static fields."""

    obj: Any  # its Objective
    par: Any  # its Parameterisation


def parts(cfg) -> Parts:
    """The objective and parameterisation of ``cfg``, built once per static part (its pytree
    structure) from the static fields only: their functions read traced values from the
    ``cfg`` they are called with."""
    return _static_parts(jax.tree.structure(cfg))


@functools.cache
def _static_parts(treedef) -> Parts:
    static = jax.tree.unflatten(treedef, [None] * treedef.num_leaves)
    return Parts(make_objective(static), make_parameterisation(static))


def judge_view(cfg, x8):
    """What the success test looks at: the 8-bit image, or its exact-forward JPEG."""
    if cfg.judge_jpeg:
        return jpeg(x8, cfg.judge_quality, subsampling=cfg.subsampling, rounding="ste")
    return x8


def fused(cfg) -> bool:
    """The gradient pass also judges the iterate (``fused_eval``, no input transform, or EOT
    with ``eot_clean``: the iterate is one of the views)."""
    return (cfg.fused_eval and (cfg.eot == "none" or cfg.eot_clean)
            and not boosters.transforms_input(cfg))



class Iterate(NamedTuple):
    """The current iterate of every image (see :func:`step`)."""

    keys: jnp.ndarray  # [B] PRNG keys of this iteration
    live: jnp.ndarray  # [B] bool: the image runs this iteration
    x: jnp.ndarray  # [B, H, W, 3] the continuous image
    x8: jnp.ndarray  # [B, H, W, 3] its 8-bit version (judged)


class Judged(NamedTuple):
    """What an iteration learnt: the judged 8-bit image, its judgement, the formulation's
    per-image loss, the step rule's input (gradient and extra arguments) or the probe's
    updated state; ``aux`` with the labels a pending clean judgement filled."""

    x8: jnp.ndarray
    terms: Terms
    loss: jnp.ndarray
    grads: Any = None
    extra: dict = {}
    probe_state: Any = None
    aux: dict | None = None
