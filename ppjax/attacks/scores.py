"""Objectives for score judges (a regression judge's MOS, e.g. KonCept512: the 2020 quality
camouflage), registered in :data:`ppjax.attacks.objectives.OBJECTIVES` when
:mod:`ppjax.attacks` is imported."""

from __future__ import annotations

import jax.numpy as jnp

from ppjax.attacks.objectives import Objective, Terms, register


def _score(models, x) -> jnp.ndarray:
    return models["judge"].score(x).astype(jnp.float32)


@register("score_below")
def score_below(cfg) -> Objective:
    """Regression judges (``judge.score(x)`` [B]): push the score below ``threshold`` with a
    ``margin``: loss = ``max(score - (threshold - margin), 0)``; success = score < threshold."""

    def evaluate(models, x, aux, cfg):
        s = _score(models, x)
        return Terms(jnp.maximum(s - (cfg.threshold - cfg.margin), 0.0), s < cfg.threshold, s)

    return Objective(evaluate, output="score")


@register("score_mse")
def score_mse(cfg) -> Objective:
    """Pull the score toward the target ``threshold - margin`` (squared error, as the 2020 I-FGSM
    baseline pulled KonCept512 toward 30: ``threshold = 50``, ``margin = 20``); success = score <
    threshold. Both are traced, so a sweep over the target does not recompile."""

    def evaluate(models, x, aux, cfg):
        s = _score(models, x)
        return Terms((s - (cfg.threshold - cfg.margin)) ** 2, s < cfg.threshold, s)

    return Objective(evaluate, output="score")
