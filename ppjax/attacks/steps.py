"""Step rules as optax ``GradientTransformation``s that return a DESCENT DIRECTION per image.

The gradient probe (:mod:`ppjax.attacks.probes`) runs the rule on each image on its own
(:func:`per_image_rule`) and then :func:`scale_by_step_size`, which applies the per-image step
size (it may differ per image and follow a schedule) through optax, so these transforms carry
no learning rate. All statistics are per image: leaves are [B, ...] and norms are taken over
everything but the leading axis.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ppjax.attacks.parameterisations import expand_to
from ppjax.registry import Registry


def _per_image(fn):
    """Apply ``fn(g)`` to every leaf, with norms reduced over all but the leading axis."""
    return lambda updates: jax.tree.map(fn, updates)


def _norm(g: jnp.ndarray, ord_: int) -> jnp.ndarray:
    flat = g.reshape(g.shape[0], -1)
    n = jnp.sum(jnp.abs(flat), -1) if ord_ == 1 else jnp.sqrt(jnp.sum(flat**2, -1))
    return n.reshape((g.shape[0],) + (1,) * (g.ndim - 1))


def sign() -> optax.GradientTransformation:
    """``sign(g)`` (FGSM / I-FGSM / PGD-Linf)."""
    return optax.stateless(lambda updates, params=None: jax.tree.map(jnp.sign, updates))


def normalize(ord_: int = 2) -> optax.GradientTransformation:
    """``g / ||g||_ord`` per image (0 where the gradient is 0)."""

    def f(g):
        n = _norm(g, ord_)
        return jnp.where(n > 0, g / jnp.where(n > 0, n, 1.0), 0.0)

    return optax.stateless(lambda updates, params=None: _per_image(f)(updates))


def momentum_sign(mu) -> optax.GradientTransformation:
    """MI-FGSM (Dong et al. 2018): ``m <- mu m + g / ||g||_1``, direction ``sign(m)``.
    ``mu`` may be a traced scalar."""
    return optax.chain(normalize(1), optax.trace(decay=mu, nesterov=False), sign())


def adam(b1=0.9, b2=0.999) -> optax.GradientTransformation:
    """Adam's scaled direction (``optax.scale_by_adam``; the loop applies the learning rate)."""
    return optax.scale_by_adam(b1=b1, b2=b2)


def gaussian_kernel(size: int, nsig) -> jnp.ndarray:
    """TI's kernel (Dong et al. 2019; torchattacks ``TIFGSM.gkern``): the outer product of the
    standard normal density at ``size`` points evenly spaced on [-nsig, nsig], normalised to sum
    1. [size, size] float32; ``nsig`` may be traced."""
    x = jnp.linspace(-nsig, nsig, size).astype(jnp.float32)
    k1 = jnp.exp(-0.5 * x * x)  # the density's constant cancels in the normalisation
    k = jnp.outer(k1, k1)
    return k / jnp.sum(k)


def smooth(g: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """Depthwise 2-D convolution (cross-correlation, zero "same" padding) of every channel of
    ``g`` [B, H, W, C] with ``kernel`` [k, k] (torch ``F.conv2d(g, K, padding="same",
    groups=C)``)."""
    c = g.shape[-1]
    w = jnp.tile(kernel[:, :, None, None], (1, 1, 1, c)).astype(g.dtype)
    return jax.lax.conv_general_dilated(
        g, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def translation_invariant(size: int, nsig) -> optax.GradientTransformation:
    """TI: the gradient smoothed by a ``size`` x ``size`` Gaussian (:func:`gaussian_kernel`)
    before the step rule. Image-shaped leaves [B, H, W, 3] only."""
    def f(g):
        if g.ndim != 4 or g.shape[-1] != 3:
            raise ValueError(f"TI smooths image-shaped gradients [B, H, W, 3]; got {g.shape}")
        return smooth(g, gaussian_kernel(size, nsig))

    return optax.stateless(lambda updates, params=None: jax.tree.map(f, updates))


class VarianceState(NamedTuple):
    v: Any  # the variance term for the next step (params-shaped; 0 at the start)


def variance_tuning() -> optax.GradientTransformationExtraArgs:
    """VMI's variance tuning (Wang & He, CVPR 2021): the direction passed on is ``g_t + v_t``
    (then, as in the paper, normalised and accumulated by the momentum rule chained after this),
    and ``v_{t+1} = mean_i g(x_t + r_i) - g_t`` with the neighbours' mean gradient given as the
    extra argument ``neighbour_grad`` (see :func:`ppjax.attacks.boosters.neighbour_gradient`)."""

    def init(params):
        return VarianceState(jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None, *, neighbour_grad=None, **extra):
        if neighbour_grad is None:
            raise ValueError("variance_tuning needs neighbour_grad (the neighbours' mean gradient)")
        out = jax.tree.map(lambda g, v: g + v, updates, state.v)
        return out, VarianceState(jax.tree.map(lambda n, g: n - g, neighbour_grad, updates))

    return optax.GradientTransformationExtraArgs(init, update)


#: Base step rules by name (``AttackConfig.step``): ``factory(cfg) ->
#: GradientTransformation`` with traced hyperparameters from ``cfg``.
STEP_RULES: Registry = Registry("step rule")
STEP_RULES.register("sign", lambda cfg: sign())
STEP_RULES.register("l2", lambda cfg: normalize(2))
STEP_RULES.register("momentum", lambda cfg: momentum_sign(cfg.momentum))
STEP_RULES.register("adam", lambda cfg: adam(cfg.adam_b1, cfg.adam_b2))
STEP_RULES.register("sgd", lambda cfg: optax.identity())


def make_step_rule(cfg) -> optax.GradientTransformation:
    """The step rule of ``cfg`` with traced hyperparameters from ``cfg``: the base rule
    (``STEP_RULES[cfg.step]``) preceded by VMI's variance tuning (``vmi_samples > 0``) and TI's
    smoothing (``ti_kernel > 0``), in that order (TI smooths ``g + v``, as the VMI paper's TI
    variant). (The config refuses both with a score-based probe.)"""
    base = STEP_RULES[cfg.step](cfg)
    parts = []
    if cfg.vmi_samples > 0:
        parts.append(variance_tuning())
    if cfg.ti_kernel > 0:
        parts.append(translation_invariant(cfg.ti_kernel, cfg.ti_nsig))
    return optax.chain(*parts, base) if parts else base


def cosine(t, total: int, hi, lo):
    """Cosine annealing from ``hi`` (t = 0) toward ``lo``: ``lo + (hi - lo) (1 + cos(pi t /
    total)) / 2``, PerC-AL's schedule (its last step, t = total - 1, stays just above ``lo``)."""
    frac = jnp.asarray(t, jnp.float32) / max(total, 1)
    return lo + (hi - lo) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(frac, 1.0)))


#: Step-size schedules by name (``AttackConfig.schedule``): ``schedule(t, total, hi, lo)``, the
#: step size at iteration ``t`` of ``total`` starting from ``hi``.
SCHEDULES: Registry = Registry("schedule")
SCHEDULES.register("constant", lambda t, total, hi, lo: hi)
SCHEDULES.register("cosine", cosine)


# ----------------------------------------------------------------------------- per image


def per_image_rule(rule: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
    """``rule`` applied to each image on its own (``vmap`` over the leading axis; each call
    sees a batch of one), so every leaf of its state, counters included (Adam's step count),
    belongs to one image: an image's steps do not depend on when it entered the batch or who
    shares it. Extra per-image arguments of the update (e.g. VMI's ``neighbour_grad``) are
    split the same way; those the rule does not take are ignored."""
    rule = optax.with_extra_args_support(rule)

    def one(tree):
        return jax.tree.map(lambda a: a[None], tree)

    def init(params):
        return jax.vmap(lambda p: rule.init(one(p)))(params)

    def update(updates, state, params=None, **extra):
        def u(g, s, p, extra):
            d, s = rule.update(one(g), s, one(p), **one(extra))
            return jax.tree.map(lambda a: a[0], d), s
        return jax.vmap(u)(updates, state, params, extra)

    return optax.GradientTransformationExtraArgs(init, update)


def scale_by_step_size() -> optax.GradientTransformationExtraArgs:
    """The descent step: ``-step_size * direction`` per image, ``step_size`` [B] (or a scalar)
    given as the extra argument of ``update``; ``optax.apply_updates`` then adds it."""

    def update(updates, state, params=None, *, step_size, **extra):
        return jax.tree.map(lambda d: -(expand_to(step_size, d) * d), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)
