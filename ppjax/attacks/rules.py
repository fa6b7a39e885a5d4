"""The loop's small registered parts: distortions, formulations, best-rules and EOT views.

Each is a pure function looked up by the name an :class:`~ppjax.attacks.config.AttackConfig`
field holds; adding one is registering a function here (or from outside), with no edit in the
loop and no list of choices to update (the config validates against these registries).

* :data:`DISTORTIONS` (``cfg.distortion``): ``fn(x, x0, params, par) -> [B]``, how far ``x`` is
  from ``x0`` (``par`` the parameterisation, for a regulariser).
* :data:`FORMULATIONS` (``cfg.formulation``): a :class:`Formulation`, what is differentiated and
  the per-image step size.
* :data:`BEST_RULES` (``cfg.best``): ``fn(cfg, candidate, best_key, ever) -> (take, key)``,
  which judged iterate is kept per image.
* :data:`EOT_VIEWS` (``cfg.eot``): ``fn(cfg, x, keys, sample) -> x'``, what the gradient
  pass's judges see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppjax.attacks.objectives import Terms
from ppjax.attacks.parameterisations import per_image_norm
from ppjax.image.color import ciede2000_l2
from ppjax.image.jpeg import jpeg
from ppjax.image.upload import UPLOAD_SCALES, upload_view
from ppjax.registry import Registry

DISTORTIONS: Registry = Registry("distortion")
DISTORTIONS.register("linf", lambda x, x0, params, par: jnp.max(
    jnp.abs(x - x0).reshape(x.shape[0], -1), -1))
DISTORTIONS.register("l2", lambda x, x0, params, par: per_image_norm(x - x0))
DISTORTIONS.register("l2sq", lambda x, x0, params, par: jnp.sum(
    (x - x0).reshape(x.shape[0], -1) ** 2, -1))
DISTORTIONS.register("ciede2000", lambda x, x0, params, par: ciede2000_l2(x, x0))
DISTORTIONS.register("reg", lambda x, x0, params, par: par.reg(params))


def distortion(cfg, x, x0, params, par) -> jnp.ndarray:
    """Per-image distortion [B] of ``x`` from ``x0`` as ``cfg.distortion`` defines it."""
    return DISTORTIONS[cfg.distortion](x, x0, params, par)


# ----------------------------------------------------------------------------- formulations


class Formulation(NamedTuple):
    """What the loop differentiates, per image, and the step size it takes.

    loss: ``(loss, dist, const, adv) -> [B]`` from the objective's loss [B], a thunk giving the
      distortion [B] of the continuous iterate, the C&W constant [B] and the (gradient-free)
      judgement [B] bool.
    step_size: ``(lr, lr2, success) -> lr`` (scalars or [B]; ``success`` [B] of the judged
      iterate).
    reads_success: ``loss`` or ``step_size`` depends on the judgement of the iterate (then
      every iterate is judged, :func:`ppjax.attacks.probes.judges_between`).
    """

    loss: Callable
    step_size: Callable = lambda lr, lr2, success: lr
    reads_success: bool = False


FORMULATIONS: Registry = Registry("formulation")
# the objective's loss (PGD, FGSM, ACE, ...)
FORMULATIONS.register("attack", Formulation(lambda loss, dist, const, adv: loss))
# C&W: distortion + const * objective loss
FORMULATIONS.register("penalty", Formulation(lambda loss, dist, const, adv: dist() + const * loss))
# PerC-AL: the objective loss while not adversarial, the distortion once adversarial, with the
# step sizes step_size and step_size2 respectively
FORMULATIONS.register("alternate", Formulation(
    lambda loss, dist, const, adv: jnp.where(adv, dist(), loss),
    lambda lr, lr2, success: jnp.where(success, lr2, lr), reads_success=True))


# ----------------------------------------------------------------------------- best-rules


class Candidate(NamedTuple):
    """The judged iterate a best-rule ranks (all [B])."""

    terms: Terms  # its judgement
    succ: jnp.ndarray  # bool: success of an image still running
    live: jnp.ndarray  # bool: the image ran this iteration
    distortion: Callable[[], jnp.ndarray]  # thunk: its distortion from x0


def ranked(cfg, cand: Candidate, key, best_key, ever):
    """Keep a success that ranks at least as well (smaller ``key``) as the kept one, and the
    first success; with ``unfooled="last"`` an image never fooled follows its iterate."""
    take = cand.succ & (key <= best_key)
    if cfg.unfooled == "last":
        take = take | (cand.live & ~ever & ~cand.succ)
    return take | (cand.succ & ~ever), key


def _by_appeal(cfg, cand: Candidate, best_key, ever):
    if cand.terms.appeal is None:
        raise ValueError(f"attack {cfg.objective!r}: best='appeal' needs an objective with "
                         "an appeal term (see objectives.with_appeal)")
    return ranked(cfg, cand, -cand.terms.appeal, best_key, ever)


def _newest(cand: Candidate):
    return jnp.full(cand.succ.shape, -jnp.inf, jnp.float32)


BEST_RULES: Registry = Registry("best-rule")
# the smallest distortion among successes
BEST_RULES.register("distortion", lambda cfg, cand, best_key, ever: ranked(
    cfg, cand, cand.distortion(), best_key, ever))
# the highest appeal among successes
BEST_RULES.register("appeal", _by_appeal)
# the last success
BEST_RULES.register("last", lambda cfg, cand, best_key, ever: ranked(
    cfg, cand, _newest(cand), best_key, ever))
# the final iterate, successful or not
BEST_RULES.register("final", lambda cfg, cand, best_key, ever: (cand.live, _newest(cand)))


# ----------------------------------------------------------------------------- EOT


def _eot_quality(cfg, keys, sample: int):
    """A random per-image JPEG quality in [eot_quality_lo, eot_quality_hi] ([B], whole numbers),
    drawn from the image's key and ``sample``."""
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, sample), ()))(keys)
    return jnp.round(cfg.eot_quality_lo + (cfg.eot_quality_hi - cfg.eot_quality_lo) * u)


def jpeg_view(cfg, x, keys, sample: int):
    """Differentiable JPEG (exact forward, ``cfg.eot_rounding`` gradient) at a random per-image
    quality in [eot_quality_lo, eot_quality_hi], drawn from the image's key and ``sample``."""
    return jpeg(x, _eot_quality(cfg, keys, sample), subsampling=cfg.subsampling,
                rounding=cfg.eot_rounding)


#: Folded into the first image's key for the upload view's per-batch draws.
_TAG_UPLOAD = 0x55504C44


def upload_eot_view(cfg, x, keys, sample: int):
    """What a photo service delivers (:func:`ppjax.image.upload.upload_view`), back at the
    input's size: a downscale by one of :data:`~ppjax.image.upload.UPLOAD_SCALES` (0.4-1.0x of
    the long side) and a JPEG (``cfg.subsampling``, ``cfg.eot_rounding``) at a per-image quality
    in [eot_quality_lo, eot_quality_hi] (70-95 for an upload), in either order. The scale and
    the order are drawn once per batch (from the first image's key and ``sample``: each is a
    static branch, only the drawn one runs), the quality per image."""
    k = jax.random.fold_in(jax.random.fold_in(keys[0], _TAG_UPLOAD), sample)
    k_scale, k_order = jax.random.split(k)
    index = jax.random.randint(k_scale, (), 0, len(UPLOAD_SCALES))
    first = jax.random.bernoulli(k_order)
    return upload_view(x, index, _eot_quality(cfg, keys, sample), first,
                       subsampling=cfg.subsampling, rounding=cfg.eot_rounding)


EOT_VIEWS: Registry = Registry("EOT transform")
EOT_VIEWS.register("none", lambda cfg, x, keys, sample: x)
EOT_VIEWS.register("jpeg", jpeg_view)
EOT_VIEWS.register("upload", upload_eot_view)
