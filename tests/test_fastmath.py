"""ppjax.image.fastmath against numpy's float64 elementary functions, over the ranges ppjax
uses them on and beyond (every octant and quadrant, the axes, signed zeros)."""

from __future__ import annotations

import jax
import numpy as np

from ppjax.image.fastmath import atan2, cbrt, pow_pos, sincos


def test_cbrt_and_pow_are_float32_accurate():
    rng = np.random.default_rng(0)
    t = np.concatenate([rng.uniform(1e-3, 2.0, 200_000), 10.0 ** rng.uniform(-6, 6, 50_000),
                        [1.0, 8.0, 0.008856, 1e-6]]).astype(np.float32)
    got = np.asarray(jax.jit(cbrt)(t), np.float64)
    np.testing.assert_allclose(got, np.cbrt(t.astype(np.float64)), rtol=4e-7, atol=0)
    u = rng.uniform(0.05, 1.0, 200_000).astype(np.float32)
    for p in (2.4, 1 / 2.4, 0.5):
        got = np.asarray(jax.jit(lambda v, p=p: pow_pos(v, p))(u), np.float64)
        np.testing.assert_allclose(got, u.astype(np.float64) ** p, rtol=2e-6, atol=0)


def test_atan2_in_every_quadrant_and_on_the_axes():
    rng = np.random.default_rng(1)
    y = np.concatenate([rng.normal(0, 40, 200_000), rng.normal(0, 1e-3, 20_000),
                        [0.0, 0.0, 1.0, -1.0, 3.0, -3.0, 2.0, -2.0]]).astype(np.float32)
    x = np.concatenate([rng.normal(0, 40, 200_000), rng.normal(0, 1e-3, 20_000),
                        [1.0, -1.0, 0.0, 0.0, 3.0, -3.0, -2.0, 2.0]]).astype(np.float32)
    got = np.asarray(jax.jit(atan2)(y, x), np.float64)
    np.testing.assert_allclose(got, np.arctan2(y.astype(np.float64), x.astype(np.float64)),
                               rtol=0, atol=1e-6)
    # the documented edge values: 0 at (0, 0), +pi on the negative x axis whatever zero's sign
    edge = jax.jit(atan2)(np.float32([0.0, -0.0, 0.0, -0.0]), np.float32([0.0, 0.0, -2.0, -2.0]))
    np.testing.assert_allclose(np.asarray(edge), [0.0, 0.0, np.pi, np.pi], atol=1e-6)


def test_sincos_over_several_turns():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-20, 20, 300_000), np.arange(-16, 17) * np.pi / 4,
                        [0.0, -0.0, 1e-8]]).astype(np.float32)
    s, c = jax.jit(sincos)(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(s, np.float64), np.sin(x64), rtol=0, atol=3e-7)
    np.testing.assert_allclose(np.asarray(c, np.float64), np.cos(x64), rtol=0, atol=3e-7)
