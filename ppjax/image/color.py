"""Colour science for perceptual distances: sRGB -> XYZ -> CIELAB (D65) and CIEDE2000.

All functions are pure, elementwise over leading axes, jit/vmap/grad-safe, and work in float32.
CIEDE2000 follows Sharma, Wu & Dalal (2005), "The CIEDE2000 color-difference formula:
implementation notes, supplementary test data, and mathematical observations". Its naive
gradient is NaN where a square root sees 0 (identical colours, neutral greys: C = 0) and where
atan2 sees (0, 0) (hue of a neutral colour); every such spot goes through a "double where" so
the value is exact and the gradient finite (0 at those points).

ppjax keeps the standard (it matches colour-science to 1e-4 in f32). The PerC authors' code
differs in two places: a neutral colour (a = b = 0) gets b = 1e-4 before the formula, and the
mean hue is 0 instead of h1' + h2' where a chroma is 0. The second changes nothing (there
dH' = 0, and the mean hue only enters through terms multiplied by dH'); the first moves dE on
neutral pixels only. Measured size on photos: ``benchmarks/RESULTS.md``, section "Fidelity"
(``benchmarks.methods.ciede2000_gap``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# sRGB (IEC 61966-2-1) linear RGB -> XYZ, D65 white, as published.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# D65 reference white (2 degree observer), Y normalised to 1.
D65_WHITE = (0.95047, 1.0, 1.08883)

_DELTA = 6.0 / 29.0


def _safe_sqrt(x: jnp.ndarray) -> jnp.ndarray:
    """sqrt with a zero (not infinite) gradient at 0."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _safe_atan2(y: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """atan2 defined as 0 (with a zero gradient) at (0, 0)."""
    zero = (x == 0) & (y == 0)
    return jnp.where(zero, 0.0, jnp.arctan2(jnp.where(zero, 0.0, y), jnp.where(zero, 1.0, x)))


def srgb_to_linear(x: jnp.ndarray) -> jnp.ndarray:
    """Undo the sRGB transfer curve. ``x``: [..., 3] in [0, 1] -> linear RGB in [0, 1]."""
    # clip in the forward pass only: jnp.clip's gradient is 1/2 at exactly 0 and 1, which
    # would halve the colour gradient of every saturated or clamped pixel
    x = x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)
    lo = x <= 0.04045
    hi_val = ((jnp.where(lo, 0.05, x) + 0.055) / 1.055) ** 2.4
    return jnp.where(lo, x / 12.92, hi_val)


def linear_to_xyz(rgb: jnp.ndarray) -> jnp.ndarray:
    """Linear sRGB [..., 3] -> CIE XYZ [..., 3] (D65, Y of white = 1)."""
    m = jnp.asarray(_RGB_TO_XYZ, rgb.dtype)
    return jnp.einsum("...c,kc->...k", rgb, m)


def xyz_to_lab(xyz: jnp.ndarray, white=D65_WHITE) -> jnp.ndarray:
    """CIE XYZ [..., 3] -> CIELAB [..., 3] (L in [0, 100])."""
    t = xyz / jnp.asarray(white, xyz.dtype).reshape((1,) * (xyz.ndim - 1) + (3,))
    lin = t <= _DELTA**3
    # cbrt of the clamped argument: the unused branch never sees 0, so no inf * 0 = NaN.
    f = jnp.where(lin, t / (3 * _DELTA**2) + 4.0 / 29.0, jnp.cbrt(jnp.where(lin, 1.0, t)))
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def rgb_to_lab(x01: jnp.ndarray) -> jnp.ndarray:
    """sRGB [..., 3] in [0, 1] -> CIELAB [..., 3] under D65."""
    return xyz_to_lab(linear_to_xyz(srgb_to_linear(x01)))


def ciede2000(lab1: jnp.ndarray, lab2: jnp.ndarray, kl: float = 1.0, kc: float = 1.0,
              kh: float = 1.0) -> jnp.ndarray:
    """CIEDE2000 colour difference. ``lab1``, ``lab2``: [..., 3] CIELAB -> [...] (>= 0)."""
    l1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    l2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c1 = _safe_sqrt(a1**2 + b1**2)
    c2 = _safe_sqrt(a2**2 + b2**2)
    cbar7 = ((c1 + c2) / 2.0) ** 7
    g = 0.5 * (1.0 - _safe_sqrt(cbar7 / (cbar7 + 25.0**7)))
    a1p, a2p = (1.0 + g) * a1, (1.0 + g) * a2
    c1p = _safe_sqrt(a1p**2 + b1**2)
    c2p = _safe_sqrt(a2p**2 + b2**2)
    h1p = jnp.mod(jnp.degrees(_safe_atan2(b1, a1p)), 360.0)
    h2p = jnp.mod(jnp.degrees(_safe_atan2(b2, a2p)), 360.0)

    dlp = l2 - l1
    dcp = c2p - c1p
    chroma0 = (c1p * c2p) == 0
    dh = h2p - h1p
    dh = jnp.where(dh > 180.0, dh - 360.0, jnp.where(dh < -180.0, dh + 360.0, dh))
    dh = jnp.where(chroma0, 0.0, dh)
    dhp = 2.0 * _safe_sqrt(c1p * c2p) * jnp.sin(jnp.radians(dh) / 2.0)

    lbar = (l1 + l2) / 2.0
    cbarp = (c1p + c2p) / 2.0
    hsum = h1p + h2p
    far = jnp.abs(h1p - h2p) > 180.0
    hbar = jnp.where(far, jnp.where(hsum < 360.0, (hsum + 360.0) / 2.0, (hsum - 360.0) / 2.0),
                     hsum / 2.0)
    hbar = jnp.where(chroma0, hsum, hbar)

    t = (1.0 - 0.17 * jnp.cos(jnp.radians(hbar - 30.0)) + 0.24 * jnp.cos(jnp.radians(2.0 * hbar))
         + 0.32 * jnp.cos(jnp.radians(3.0 * hbar + 6.0))
         - 0.20 * jnp.cos(jnp.radians(4.0 * hbar - 63.0)))
    dtheta = 30.0 * jnp.exp(-(((hbar - 275.0) / 25.0) ** 2))
    cbarp7 = cbarp**7
    rc = 2.0 * _safe_sqrt(cbarp7 / (cbarp7 + 25.0**7))
    sl = 1.0 + 0.015 * (lbar - 50.0) ** 2 / jnp.sqrt(20.0 + (lbar - 50.0) ** 2)
    sc = 1.0 + 0.045 * cbarp
    sh = 1.0 + 0.015 * cbarp * t
    rt = -jnp.sin(jnp.radians(2.0 * dtheta)) * rc
    tl, tc, th = dlp / (kl * sl), dcp / (kc * sc), dhp / (kh * sh)
    return _safe_sqrt(tl**2 + tc**2 + th**2 + rt * tc * th)


def ciede2000_rgb(x01: jnp.ndarray, y01: jnp.ndarray) -> jnp.ndarray:
    """Per-pixel CIEDE2000 between two sRGB images. ``x01``, ``y01``: [..., H, W, 3] in [0, 1]
    -> [..., H, W]."""
    return ciede2000(rgb_to_lab(x01.astype(jnp.float32)), rgb_to_lab(y01.astype(jnp.float32)))


def ciede2000_l2(x01: jnp.ndarray, y01: jnp.ndarray) -> jnp.ndarray:
    """PerC distance of Zhao et al. (CVPR 2020): the L2 norm over pixels of the CIEDE2000 map.
    ``x01``, ``y01``: [B, H, W, 3] in [0, 1] -> [B]."""
    d = ciede2000_rgb(x01, y01)
    return _safe_sqrt(jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=-1))
