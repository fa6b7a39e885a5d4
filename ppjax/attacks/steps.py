"""Step rules as optax ``GradientTransformation``s that return a DESCENT DIRECTION per image.

The loop multiplies the direction by ``-lr`` per image (``lr`` may differ per image and follow a
schedule), so these transforms carry no learning rate. All statistics are per image: leaves are
[B, ...] and norms are taken over everything but the leading axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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


def make_step_rule(cfg, hp) -> optax.GradientTransformation:
    """The step rule of ``cfg.step`` with traced hyperparameters from ``hp``."""
    if cfg.step == "sign":
        return sign()
    if cfg.step == "l2":
        return normalize(2)
    if cfg.step == "momentum":
        return momentum_sign(hp["momentum"])
    if cfg.step == "adam":
        return adam(hp["adam_b1"], hp["adam_b2"])
    if cfg.step == "sgd":
        return optax.identity()
    raise ValueError(f"unknown step rule {cfg.step!r}")


def cosine(t, total: int, hi, lo):
    """Cosine annealing from ``hi`` (t = 0) toward ``lo``: ``lo + (hi - lo) (1 + cos(pi t /
    total)) / 2``, PerC-AL's schedule (its last step, t = total - 1, stays just above ``lo``)."""
    frac = jnp.asarray(t, jnp.float32) / max(total, 1)
    return lo + (hi - lo) * 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(frac, 1.0)))
