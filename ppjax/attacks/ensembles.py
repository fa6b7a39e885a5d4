"""Ensemble objectives (``ensemble_logits``, ``ensemble_losses``): one attack against several
judges at once, registered in :data:`ppjax.attacks.objectives.OBJECTIVES` when
:mod:`ppjax.attacks` is imported."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ppjax.attacks.objectives import (
    Objective,
    Terms,
    as_logits,
    cross_entropy,
    from_output,
    label_margin,
    register,
)

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

    Member ``k`` has the traced weight ``cfg.hyper_value("w_<k>")`` (default 1; weights are normalised to
    sum to 1, so changing them never recompiles). ``reduce``:
      * ``"logits"``: ``z = sum_k w_k z_k``, loss ``-CE(z, y)`` (Liu et al. 2017's logit
        ensemble);
      * ``"losses"``: loss ``-sum_k w_k CE(z_k, y)``.
    Success: ``cfg.hyper_value("success_on") < 0`` (default) needs top-1 != y on every member; ``i >= 0``
    only on member ``i`` (the order of :func:`ensemble_keys`). Score: the weighted label margin.
    """

    def factory(cfg) -> Objective:
        def terms(out, models, x, aux, cfg):
            keys = ensemble_keys(models)
            y = aux["labels"]
            zs = [as_logits(out)] + [member_logits(models[k], x) for k in keys[1:]]
            if len({z.shape[-1] for z in zs}) != 1:
                raise ValueError(f"ensemble members disagree on the number of classes: "
                                 f"{dict(zip(keys, [z.shape[-1] for z in zs], strict=True))}")
            w = jnp.stack([jnp.asarray(cfg.hyper_value(f"w_{k}", 1.0), jnp.float32) for k in keys])
            w = w / jnp.sum(w)
            if reduce == "logits":
                loss = -cross_entropy(sum(wk * z for wk, z in zip(w, zs, strict=True)), y)
            else:
                loss = -sum(wk * cross_entropy(z, y) for wk, z in zip(w, zs, strict=True))
            fooled = jnp.stack([jnp.argmax(z, -1) != y for z in zs])  # [K, B]
            on = jnp.asarray(cfg.hyper_value("success_on", -1.0), jnp.float32).astype(jnp.int32)
            chosen = jnp.take(fooled, jnp.clip(on, 0, len(keys) - 1), axis=0)
            success = jnp.where(on < 0, jnp.all(fooled, axis=0), chosen)
            margin = sum(wk * label_margin(z, y) for wk, z in zip(w, zs, strict=True))
            return Terms(loss, success, margin)

        return from_output(terms)

    return factory


register("ensemble_logits")(_ensemble("logits"))
register("ensemble_losses")(_ensemble("losses"))


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
