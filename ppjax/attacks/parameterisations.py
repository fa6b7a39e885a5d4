"""Parameterisations of the change: how optimised parameters become an image.

A :class:`Parameterisation` is a NamedTuple of pure functions (all per image, batched on the
leading axis):

* ``init(x0, keys, cfg) -> params``: start point (``keys``: [B] per-image PRNG keys);
* ``render(params, x0) -> x``: the continuous image [B, H, W, 3] in [0, 1];
* ``project(params, x0, cfg) -> params``: back into the feasible set after an update;
* ``reg(params) -> [B]``: a regulariser (ACE's curve smoothness; 0 otherwise);
* ``quantize(x, x0, cfg) -> x8``: the 8-bit image (values k/255) that is judged and returned;
  it never leaves the constraint (a rounded Linf perturbation is clipped to the largest grid
  step inside eps; a rounded L2 perturbation that grew past eps is truncated toward x0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppjax.registry import Registry

#: The constraints a parameterisation projects onto (``AttackConfig.norm``).
NORMS = ("linf", "l2", "none")


class Parameterisation(NamedTuple):
    init: Callable
    render: Callable
    project: Callable
    reg: Callable
    quantize: Callable


def round8(x: jnp.ndarray) -> jnp.ndarray:
    """Nearest 8-bit value: ``round(255 x) / 255`` clipped to [0, 1]."""
    return jnp.clip(jnp.round(x * 255.0), 0.0, 255.0) / 255.0


def round8_ste(x: jnp.ndarray) -> jnp.ndarray:
    """8-bit rounding in the forward pass, identity in the backward pass (straight-through)."""
    return x + jax.lax.stop_gradient(round8(x) - x)


def clip01(x: jnp.ndarray) -> jnp.ndarray:
    """``clip(x, 0, 1)`` in the forward pass, identity gradient. The parameterisations keep their
    images in [0, 1] by projection, so this clip only guards rounding error; ``jnp.clip`` would
    halve the gradient of every pixel sitting exactly at 0 or 1 (saturated photo pixels), where
    the originals differentiate the model's input directly."""
    return x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)


def per_image_norm(d: jnp.ndarray) -> jnp.ndarray:
    """L2 norm [B] of each image of ``d`` [B, ...] (over everything but the leading axis)."""
    return jnp.sqrt(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1))


def expand_to(v: jnp.ndarray, like: jnp.ndarray) -> jnp.ndarray:
    """Per-image values ``v`` [B] reshaped to broadcast against ``like`` [B, ...]."""
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def quantize_within(x: jnp.ndarray, x0: jnp.ndarray, norm: str, eps) -> jnp.ndarray:
    """8-bit image closest to ``x`` that still satisfies ``norm(x8 - x0) <= eps`` (``x0`` on the
    8-bit grid). ``x``, ``x0``: [B, H, W, 3] in [0, 1]."""
    x8 = round8(x)
    if norm == "linf":
        r = jnp.floor(eps * 255.0 + 1e-3) / 255.0
        x8 = jnp.clip(x8, x0 - r, x0 + r)
    elif norm == "l2":
        trunc = jnp.clip(x0 + jnp.trunc((x - x0) * 255.0) / 255.0, 0.0, 1.0)
        over = per_image_norm(x8 - x0) > eps
        x8 = jnp.where(expand_to(over, x8), trunc, x8)
    return x8


def project_delta(delta: jnp.ndarray, x0: jnp.ndarray, norm: str, eps) -> jnp.ndarray:
    """Project ``delta`` onto the eps ball of ``norm`` and keep ``x0 + delta`` in [0, 1]."""
    if norm == "linf":
        delta = jnp.clip(delta, -eps, eps)
    elif norm == "l2":
        n = per_image_norm(delta)
        delta = delta * expand_to(jnp.minimum(1.0, eps / jnp.maximum(n, 1e-12)), delta)
    return jnp.clip(x0 + delta, 0.0, 1.0) - x0


#: Parameterisations by name (``AttackConfig.param``): ``factory(cfg) -> Parameterisation``.
PARAMETERISATIONS: Registry = Registry("parameterisation")


@PARAMETERISATIONS.register("delta")
def additive(cfg) -> Parameterisation:
    """``x = clip(x0 + delta)``, delta in the ``cfg.norm`` ball of radius ``eps`` (optionally a
    random start). The iterate stays continuous; only the judged and returned copy is rounded
    to 8 bits (:func:`quantize_within`)."""
    norm = cfg.norm

    def init(x0, keys, cfg):
        if not cfg.random_start:
            return jnp.zeros_like(x0)
        eps = cfg.eps
        shape = x0.shape[1:]
        if norm == "l2":
            def one(key):
                kd, kr = jax.random.split(key)
                d = jax.random.normal(kd, shape, jnp.float32)
                r = jax.random.uniform(kr, (), jnp.float32)
                return d / jnp.maximum(jnp.linalg.norm(d.ravel()), 1e-12) * r * eps
        else:
            def one(key):
                return jax.random.uniform(key, shape, jnp.float32, -1.0, 1.0) * eps
        return project_delta(jax.vmap(one)(keys), x0, norm, eps)

    def render(delta, x0):
        return clip01(x0 + delta)

    def project(delta, x0, cfg):
        return project_delta(delta, x0, norm, cfg.eps)

    def reg(delta):
        return jnp.zeros(delta.shape[0], jnp.float32)

    def quantize(x, x0, cfg):
        return quantize_within(x, x0, norm, cfg.eps)

    return Parameterisation(init, render, project, reg, quantize)


@PARAMETERISATIONS.register("tanh")
def tanh_space(cfg) -> Parameterisation:
    """C&W change of variables ``x = (tanh(w) + 1) / 2``: unconstrained ``w``, x in (0, 1)."""

    def init(x0, keys, cfg):
        return jnp.arctanh(jnp.clip(2.0 * x0 - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))

    def render(w, x0):
        return (jnp.tanh(w) + 1.0) / 2.0

    def project(w, x0, cfg):
        return w

    def reg(w):
        return jnp.zeros(w.shape[0], jnp.float32)

    def quantize(x, x0, cfg):
        return round8(x)

    return Parameterisation(init, render, project, reg, quantize)


def ace_curve(x0: jnp.ndarray, theta: jnp.ndarray) -> jnp.ndarray:
    """ACE colour filter (Zhao, Liu & Larson, BMVC 2020), per channel:
    ``CF(x) = (K / sum(theta)) * sum_k clamp(x - k/K, 0, 1/K) * theta_k``.

    Evaluated by gathering the piece of each pixel instead of summing K terms:
    ``CF(x) = (cumsum_{<i}(theta) + K (x - i/K) theta_i) / sum(theta)``, ``i = floor(K x)``.
    ``x0``: [B, H, W, 3] in [0, 1]; ``theta``: [B, 3, K] >= 0 -> [B, H, W, 3] in [0, 1]."""
    k = theta.shape[-1]
    idx = jnp.clip(jnp.floor(x0 * k), 0, k - 1).astype(jnp.int32)
    frac = x0 - idx.astype(x0.dtype) / k
    csum = jnp.cumsum(theta, axis=-1) - theta
    total = jnp.sum(theta, axis=-1)  # [B, 3]
    ch = jnp.arange(3)[None, None, :]

    def one(i, f, th, cs, tot):
        return (cs[ch, i] + k * f * th[ch, i]) / tot[None, None, :]

    return jax.vmap(one)(idx, frac, theta, csum, total)


@PARAMETERISATIONS.register("ace")
def ace(cfg) -> Parameterisation:
    """ACE: per-channel monotone piecewise-linear curve with ``cfg.k`` pieces, theta clipped to
    [theta_min, theta_max] (>= 1e-6 so the curve stays defined). Regulariser:
    ``sum_c sum_k (theta_ck / sum_k theta_ck - 1/K)^2``."""
    k = int(cfg.k)

    def init(x0, keys, cfg):
        return jnp.full((x0.shape[0], 3, k), 1.0 / k, jnp.float32)

    def render(theta, x0):
        return clip01(ace_curve(x0, theta))

    def project(theta, x0, cfg):
        return jnp.clip(theta, jnp.maximum(cfg.theta_min, 1e-6), cfg.theta_max)

    def reg(theta):
        p = theta / jnp.sum(theta, axis=-1, keepdims=True)
        return jnp.sum((p - 1.0 / k) ** 2, axis=(1, 2))

    def quantize(x, x0, cfg):
        return round8(x)

    return Parameterisation(init, render, project, reg, quantize)


def make_parameterisation(cfg) -> Parameterisation:
    """The parameterisation ``cfg.param`` names, built for ``cfg``."""
    return PARAMETERISATIONS[cfg.param](cfg)
