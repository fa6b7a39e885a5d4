"""Float32 elementary functions that XLA vectorises on CPU.

XLA's CPU backend evaluates ``cbrt``, ``atan2``, ``atan``, ``sin``, ``cos`` and ``pow`` with a
real exponent one element at a time (a libm-style call per element), while ``exp``, ``log``,
``sqrt``, division and polynomials run in SIMD lanes, several times faster (measured by
``benchmarks.colour_speed``: ``benchmarks/RESULTS.md``, "CIEDE2000 gradient"). These versions
are written from those fast operations, to float32 accuracy (``tests/test_fastmath.py``
checks them against numpy in float64). They are values only: differentiate through them only
where their derivative is written by hand (``ppjax.image.color`` does so).
"""

from __future__ import annotations

import jax.numpy as jnp


def cbrt(t: jnp.ndarray) -> jnp.ndarray:
    """Cube root of t > 0: exp(log(t) / 3), then one Newton step (relative error ~2e-7)."""
    r = jnp.exp(jnp.log(t) * (1.0 / 3.0))
    return r - (r * r * r - t) / (3.0 * r * r)


def pow_pos(u: jnp.ndarray, p: float) -> jnp.ndarray:
    """u ** p for u > 0 (relative error ~1e-6)."""
    return jnp.exp(p * jnp.log(u))


_TAN_PI_8 = 0.41421356237309503


def _atan01(t: jnp.ndarray) -> jnp.ndarray:
    """atan on [0, 1]: above tan(pi/8), atan t = pi/4 + atan((t - 1) / (t + 1)); then the
    degree-9 odd minimax polynomial of Cephes' atanf (absolute error ~5e-7 rad)."""
    big = t > _TAN_PI_8
    z = jnp.where(big, (t - 1.0) / (t + 1.0), t)
    zz = z * z
    p = ((((8.05374449538e-2 * zz - 1.38776856032e-1) * zz + 1.99777106478e-1) * zz
          - 3.33329491539e-1) * zz * z + z)
    return jnp.where(big, p + jnp.pi / 4, p)


def atan2(y: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """atan2 in (-pi, pi]; 0 at (0, 0), and +pi (not -pi) at (-0, x < 0)."""
    ax, ay = jnp.abs(x), jnp.abs(y)
    hi, lo = jnp.maximum(ax, ay), jnp.minimum(ax, ay)
    a = _atan01(lo / jnp.where(hi > 0, hi, 1.0))
    a = jnp.where(ay > ax, jnp.pi / 2 - a, a)
    a = jnp.where(x < 0, jnp.pi - a, a)
    return jnp.where(y < 0, -a, a)


# pi / 4 in three parts (Cody & Waite), so that x - j pi / 4 is exact for |x| up to ~1e3
_PIO4_1, _PIO4_2, _PIO4_3 = 0.78515625, 2.4187564849853515625e-4, 3.77489497744594108e-8


def sincos(x: jnp.ndarray):
    """(sin x, cos x) for moderate |x| (the angles here are under 2 pi): reduction to
    [-pi/4, pi/4] by even octants, then Cephes' sinf / cosf polynomials (error ~1e-7)."""
    ax = jnp.abs(x)
    j = jnp.floor(ax * (4.0 / jnp.pi))
    j = j + (j - 2.0 * jnp.floor(j / 2.0))               # round odd octants up
    r = ((ax - j * _PIO4_1) - j * _PIO4_2) - j * _PIO4_3
    q = j - 8.0 * jnp.floor(j / 8.0)                     # 0, 2, 4 or 6
    z = r * r
    sp = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * r + r
    cp = (((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z
          - 0.5 * z + 1.0)
    swap = (q == 2.0) | (q == 6.0)
    s = jnp.where(swap, cp, sp)
    c = jnp.where(swap, sp, cp)
    s = jnp.where((q == 4.0) | (q == 6.0), -s, s)
    c = jnp.where((q == 2.0) | (q == 4.0), -c, c)
    return jnp.where(x < 0, -s, s), c
