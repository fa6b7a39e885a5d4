"""Colour science for perceptual distances: sRGB -> XYZ -> CIELAB (D65) and CIEDE2000.

All functions are pure, elementwise over leading axes, jit/vmap/grad-safe, and work in float32.
CIEDE2000 follows Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula:
implementation notes, supplementary test data, and mathematical observations". Its naive
gradient is NaN where a square root sees 0 (identical colours, neutral greys: C = 0) and where
atan2 sees (0, 0) (hue of a neutral colour); the gradients here are written by hand and give 0
at those points (as a "double where" does under autodiff), the value stays exact.

ppjax keeps the standard (it matches colour-science to 1e-4 in f32). The PerC authors' code
differs in two places: a neutral colour (a = b = 0) gets b = 1e-4 before the formula, and the
mean hue is 0 instead of h1' + h2' where a chroma is 0. The second changes nothing (there
dH' = 0, and the mean hue only enters through terms multiplied by dH'); the first moves dE on
neutral pixels only. Measured size on photos: ``benchmarks/RESULTS.md``, section "Fidelity"
(``benchmarks.methods.ciede2000_gap``).

Speed. PerC-AL differentiates the CIEDE2000 map of a whole batch on every step, so its cost
matters (``benchmarks/RESULTS.md``, "CIEDE2000 gradient"). Two things made it slow under XLA
on CPU, and both are avoided here:

* XLA evaluates ``cbrt``, ``atan2``, ``sin``, ``cos`` and a real ``pow`` one element at a time;
  :mod:`ppjax.image.fastmath` builds them from operations it vectorises (``exp``, ``log``,
  polynomials), to float32 accuracy.
* Autodiff's gradient ran through the whole chain again for each of the three colour channels
  it writes (XLA fuses the chain into the interleaving of the channels). The gradient is written
  by hand, from the forward values, and the per-channel planes are materialised first.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp

from ppjax.image.fastmath import atan2, cbrt, pow_pos, sincos

# sRGB (IEC 61966-2-1) linear RGB -> XYZ, D65 white, as published.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# D65 reference white (2 degree observer), Y normalised to 1.
D65_WHITE = (0.95047, 1.0, 1.08883)

_DELTA = 6.0 / 29.0
_K7 = 25.0**7
_RAD = jnp.pi / 180.0
_DEG = 180.0 / jnp.pi
_C30, _S30 = 0.8660254037844387, 0.5                      # cos, sin of 30 degrees
_C6, _S6 = 0.9945218953682733, 0.10452846326765347        # 6 degrees
_C63, _S63 = 0.45399049973954675, 0.8910065241883679      # 63 degrees


# ---------------------------------------------------------------- helpers


def _safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """sqrt with a zero (not infinite) gradient at 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _safe_div(n: jnp.ndarray, d: jnp.ndarray) -> jnp.ndarray:
    """n / d, and 0 where d == 0."""
    nz = d != 0
    return jnp.where(nz, n / jnp.where(nz, d, 1.0), 0.0)


def _materialise(planes: tuple, cotangent: jnp.ndarray) -> tuple:
    """``planes`` unchanged, but computed into memory before their consumers run: an XLA
    conditional whose predicate it cannot fold (``key == key``, ``key`` an element of the
    incoming ``cotangent``, is false only for NaN, and then the planes come back as NaN). XLA
    removes ``optimization_barrier`` before fusion on CPU; without this it fuses the whole
    gradient into the channel interleave, and runs it once per channel."""
    key = cotangent[(0,) * cotangent.ndim]
    return jax.lax.cond(key == key, lambda p: p, lambda p: tuple(q * key for q in p), planes)


# ---------------------------------------------------------------- sRGB -> CIELAB


def _lab_planes(r: jnp.ndarray, g: jnp.ndarray, b: jnp.ndarray):
    """sRGB planes in [0, 1] (clipped in the value only) -> ((L, a, b), derivative factors)."""
    lins, dlins = [], []
    for x in (r, g, b):
        xc = jnp.clip(x, 0.0, 1.0)
        lo = xc <= 0.04045
        hi = pow_pos((jnp.where(lo, 0.05, xc) + 0.055) / 1.055, 2.4)
        lins.append(jnp.where(lo, xc / 12.92, hi))
        # d/dx ((x + .055) / 1.055) ** 2.4 = 2.4 v / (x + .055): the power's value, reused
        dlins.append(jnp.where(lo, 1.0 / 12.92, 2.4 * hi / (xc + 0.055)))
    fs, dfs = [], []
    for k in range(3):
        m0, m1, m2 = _RGB_TO_XYZ[k]
        t = (m0 * lins[0] + m1 * lins[1] + m2 * lins[2]) / D65_WHITE[k]
        small = t <= _DELTA**3
        tt = jnp.where(small, 1.0, t)
        f = cbrt(tt)
        fs.append(jnp.where(small, t / (3 * _DELTA**2) + 4.0 / 29.0, f))
        dfs.append(jnp.where(small, 1.0 / (3 * _DELTA**2), f / (3.0 * tt)))   # cbrt' = f / 3t
    fx, fy, fz = fs
    return (116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), (dlins, dfs)


def _lab_planes_vjp(res, gl, ga, gb):
    """Cotangents of the (r, g, b) planes for cotangents (gl, ga, gb) of (L, a, b)."""
    dlins, (dfx, dfy, dfz) = res
    gt = (500.0 * ga * dfx / D65_WHITE[0],
          (116.0 * gl - 500.0 * ga + 200.0 * gb) * dfy / D65_WHITE[1],
          -200.0 * gb * dfz / D65_WHITE[2])
    return tuple(sum(_RGB_TO_XYZ[k][c] * gt[k] for k in range(3)) * dlins[c] for c in range(3))


def _channels(x: jnp.ndarray):
    return x[..., 0], x[..., 1], x[..., 2]


@jax.custom_vjp
def rgb_to_lab(x01: jnp.ndarray) -> jnp.ndarray:
    """sRGB [..., 3] in [0, 1] -> CIELAB [..., 3] under D65. Values outside [0, 1] are clipped
    in the value only: the gradient is the one at the clipped colour, passed straight through."""
    return jnp.stack(_lab_planes(*_channels(x01.astype(jnp.float32)))[0], axis=-1)


def _rgb_to_lab_fwd(x01):
    return rgb_to_lab(x01), x01


def _rgb_to_lab_bwd(x01, g):
    _, res = _lab_planes(*_channels(x01.astype(jnp.float32)))
    planes = _materialise(_lab_planes_vjp(res, *_channels(g)), g)
    return (jnp.stack(planes, axis=-1).astype(x01.dtype),)


rgb_to_lab.defvjp(_rgb_to_lab_fwd, _rgb_to_lab_bwd)


# ---------------------------------------------------------------- CIEDE2000


def _hue(b: jnp.ndarray, ap: jnp.ndarray) -> jnp.ndarray:
    """Hue angle in degrees, [0, 360); 0 for a neutral colour."""
    h = atan2(b, ap) * _DEG
    return jnp.where(h < 0.0, h + 360.0, h)


def _ciede_forward(l1, a1, b1, l2, a2, b2, kl, kc, kh) -> SimpleNamespace:
    """CIEDE2000 on planes: the value ``e`` and every intermediate its hand-written gradient
    (:func:`_ciede_backward`) reads, by the formula's names.

    The four cosines of T come from cos and sin of the mean hue by the multiple-angle
    identities, and T's derivative from the same two values."""
    c1 = _safe_sqrt(a1 * a1 + b1 * b1)
    c2 = _safe_sqrt(a2 * a2 + b2 * b2)
    cb = (c1 + c2) / 2.0
    cb7 = cb**7
    sq_g = _safe_sqrt(cb7 / (cb7 + _K7))
    g = 0.5 * (1.0 - sq_g)
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p = _safe_sqrt(a1p * a1p + b1 * b1)
    c2p = _safe_sqrt(a2p * a2p + b2 * b2)
    h1p, h2p = _hue(b1, a1p), _hue(b2, a2p)

    chroma0 = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = jnp.where(dh > 180.0, dh - 360.0, jnp.where(dh < -180.0, dh + 360.0, dh))
    dh = jnp.where(chroma0, 0.0, dh)
    sqp = _safe_sqrt(c1p * c2p)
    sin_half, cos_half = sincos(dh * (_RAD / 2.0))
    dhp = 2.0 * sqp * sin_half

    lbar = (l1 + l2) / 2.0
    cbarp = (c1p + c2p) / 2.0
    hsum = h1p + h2p
    far = jnp.abs(h1p - h2p) > 180.0
    hbar = jnp.where(far, jnp.where(hsum < 360.0, (hsum + 360.0) / 2.0, (hsum - 360.0) / 2.0),
                     hsum / 2.0)
    hbar = jnp.where(chroma0, hsum, hbar)

    s, c = sincos(hbar * _RAD)
    c2h, s2h = 2.0 * c * c - 1.0, 2.0 * s * c
    c3h, s3h = c * (4.0 * c * c - 3.0), s * (3.0 - 4.0 * s * s)
    c4h, s4h = 2.0 * c2h * c2h - 1.0, 2.0 * s2h * c2h
    t = (1.0 - 0.17 * (c * _C30 + s * _S30) + 0.24 * c2h + 0.32 * (c3h * _C6 - s3h * _S6)
         - 0.20 * (c4h * _C63 + s4h * _S63))
    u = (hbar - 275.0) / 25.0
    dtheta = 30.0 * jnp.exp(-(u * u))
    cbarp7 = cbarp**7
    rc = 2.0 * _safe_sqrt(cbarp7 / (cbarp7 + _K7))
    w = lbar - 50.0
    q = 20.0 + w * w
    sq_q = jnp.sqrt(q)
    sl = 1.0 + 0.015 * w * w / sq_q
    sc = 1.0 + 0.045 * cbarp
    sh = 1.0 + 0.015 * cbarp * t
    sin_th, cos_th = sincos(2.0 * dtheta * _RAD)
    rt = -sin_th * rc
    tl, tc, th = (l2 - l1) / (kl * sl), (c2p - c1p) / (kc * sc), dhp / (kh * sh)
    e = _safe_sqrt(tl * tl + tc * tc + th * th + rt * tc * th)
    return SimpleNamespace(**locals())


def _ciede_backward(v: SimpleNamespace, ge: jnp.ndarray):
    """The cotangents of (l1, a1, b1, l2, a2, b2) for the cotangent ``ge`` of CIEDE2000, from the
    output back through :func:`_ciede_forward`'s intermediates ``v``; every singular point (a
    zero chroma, a zero difference) gets 0."""
    kl, kc, kh, e, tl, tc, th, rt = v.kl, v.kc, v.kh, v.e, v.tl, v.tc, v.th, v.rt
    sl, sc, sh, rc, t, w, q, sq_q = v.sl, v.sc, v.sh, v.rc, v.t, v.w, v.q, v.sq_q
    s, c, s2h, s3h, c3h, s4h, c4h = v.s, v.c, v.s2h, v.s3h, v.c3h, v.s4h, v.c4h
    cbarp, cbarp7, u, dtheta, sin_th, cos_th = v.cbarp, v.cbarp7, v.u, v.dtheta, v.sin_th, v.cos_th
    chroma0, sin_half, cos_half, sqp = v.chroma0, v.sin_half, v.cos_half, v.sqp
    a1, b1, a2, b2, a1p, a2p, c1p, c2p = v.a1, v.b1, v.a2, v.b2, v.a1p, v.a2p, v.c1p, v.c2p
    g, sq_g, cb, cb7, c1, c2 = v.g, v.sq_g, v.cb, v.cb7, v.c1, v.c2
    ge2 = _safe_div(ge, 2.0 * e)                                  # d e / d(e^2)
    g_tl = ge2 * 2.0 * tl
    g_tc = ge2 * (2.0 * tc + rt * th)
    g_th = ge2 * (2.0 * th + rt * tc)
    g_rt = ge2 * tc * th
    g_dl = g_tl / (kl * sl)
    g_sl = -g_tl * tl / sl
    g_dc = g_tc / (kc * sc)
    g_sc = -g_tc * tc / sc
    g_dhp = g_th / (kh * sh)
    g_sh = -g_th * th / sh
    g_dtheta = -g_rt * rc * cos_th * (2.0 * _RAD)                  # rt = -sin(2 dtheta) rc
    g_rc = -g_rt * sin_th
    g_lbar = g_sl * 0.015 * w * (40.0 + w * w) / (q * sq_q)        # sl' = .015 w (40 + w^2) / q^1.5
    g_t = 0.015 * cbarp * g_sh
    # rc = 2 sqrt(C^7 / (C^7 + K)): rc' = 3.5 rc K / (C (C^7 + K))
    g_cbarp = (0.045 * g_sc + 0.015 * t * g_sh
               + g_rc * _safe_div(3.5 * rc * _K7, cbarp * (cbarp7 + _K7)))
    dt_dh = (0.17 * (s * _C30 - c * _S30) - 0.48 * s2h - 0.96 * (s3h * _C6 + c3h * _S6)
             + 0.80 * (s4h * _C63 - c4h * _S63))                   # dT / d(hbar in radians)
    g_hbar = g_t * dt_dh * _RAD + g_dtheta * dtheta * (-2.0 * u / 25.0)
    w_h = jnp.where(chroma0, 1.0, 0.5)                             # d hbar / d h1' = d hbar / d h2'
    g_p = g_dhp * _safe_div(sin_half, sqp)                         # dhp / d(c1' c2')
    g_dh = jnp.where(chroma0, 0.0, g_dhp * sqp * cos_half * _RAD)
    g_c1p = -g_dc + 0.5 * g_cbarp + g_p * c2p
    g_c2p = g_dc + 0.5 * g_cbarp + g_p * c1p
    g_h1p = w_h * g_hbar - g_dh
    g_h2p = w_h * g_hbar + g_dh
    # c' = sqrt(a'^2 + b^2) and h' = atan2(b, a') in degrees share |c'|^2
    g_a1p = _safe_div(g_c1p * a1p - g_h1p * _DEG * b1 / jnp.where(c1p > 0, c1p, 1.0), c1p)
    g_b1 = _safe_div(g_c1p * b1 + g_h1p * _DEG * a1p / jnp.where(c1p > 0, c1p, 1.0), c1p)
    g_a2p = _safe_div(g_c2p * a2p - g_h2p * _DEG * b2 / jnp.where(c2p > 0, c2p, 1.0), c2p)
    g_b2 = _safe_div(g_c2p * b2 + g_h2p * _DEG * a2p / jnp.where(c2p > 0, c2p, 1.0), c2p)
    # g = (1 - sqrt(cb^7 / (cb^7 + K))) / 2: g' = -1.75 sqrt(.) K / (cb (cb^7 + K))
    g_cb = (g_a1p * a1 + g_a2p * a2) * _safe_div(-1.75 * sq_g * _K7, cb * (cb7 + _K7))
    g_a1 = g_a1p * (1.0 + g) + _safe_div(0.5 * g_cb * a1, c1)
    g_b1 = g_b1 + _safe_div(0.5 * g_cb * b1, c1)
    g_a2 = g_a2p * (1.0 + g) + _safe_div(0.5 * g_cb * a2, c2)
    g_b2 = g_b2 + _safe_div(0.5 * g_cb * b2, c2)
    return -g_dl + 0.5 * g_lbar, g_a1, g_b1, g_dl + 0.5 * g_lbar, g_a2, g_b2


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _ciede_lab(lab1, lab2, kl, kc, kh):
    return _ciede_forward(*_channels(lab1), *_channels(lab2), kl, kc, kh).e


def _ciede_lab_fwd(lab1, lab2, kl, kc, kh):
    return _ciede_lab(lab1, lab2, kl, kc, kh), (lab1, lab2)


def _ciede_lab_bwd(kl, kc, kh, res, ge):
    lab1, lab2 = res
    g = _ciede_backward(_ciede_forward(*_channels(lab1), *_channels(lab2), kl, kc, kh), ge)
    # each side on its own, so that XLA drops the side nobody differentiates
    return (jnp.stack(_materialise(g[:3], ge), axis=-1),
            jnp.stack(_materialise(g[3:], ge), axis=-1))


_ciede_lab.defvjp(_ciede_lab_fwd, _ciede_lab_bwd)


def ciede2000(lab1: jnp.ndarray, lab2: jnp.ndarray, kl: float = 1.0, kc: float = 1.0,
              kh: float = 1.0) -> jnp.ndarray:
    """CIEDE2000 colour difference. ``lab1``, ``lab2``: [..., 3] CIELAB -> [...] (>= 0)."""
    return _ciede_lab(lab1.astype(jnp.float32), lab2.astype(jnp.float32), float(kl), float(kc),
                      float(kh))


def ciede2000_rgb(x01: jnp.ndarray, y01: jnp.ndarray) -> jnp.ndarray:
    """Per-pixel CIEDE2000 between two sRGB images. ``x01``, ``y01``: [..., H, W, 3] in [0, 1]
    -> [..., H, W]."""
    return ciede2000(rgb_to_lab(x01), rgb_to_lab(y01))


def ciede2000_l2(x01: jnp.ndarray, y01: jnp.ndarray) -> jnp.ndarray:
    """PerC distance of Zhao et al. (CVPR 2020): the L2 norm over pixels of the CIEDE2000 map.
    ``x01``, ``y01``: [B, H, W, 3] in [0, 1] -> [B]."""
    d = ciede2000_rgb(x01, y01)
    return _safe_sqrt(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1))
