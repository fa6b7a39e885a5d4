"""Image-quality metrics between an original and its protected version, per image.

All take ``x, y: [B, H, W, 3]`` float in [0, 1] (data range 1) and return ``[B]`` float32:

* :func:`psnr`: ``10 log10(1 / MSE)`` over all pixels and channels (inf for identical images).
* :func:`ssim`: Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01,
  K2 = 0.03, population (not sample) covariances, computed per channel on the "valid" region
  (no padding) and averaged over positions and channels; this is what
  ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)`` returns (skimage filters with
  reflection padding and then crops the 5-pixel border, which is the valid region).
* :func:`ciede2000_mean`: mean over pixels of the CIEDE2000 colour difference
  (:func:`ppjax.image.color.ciede2000_rgb`, sRGB -> CIELAB under D65).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.image.color import ciede2000_rgb

SSIM_SIGMA = 1.5
SSIM_WIN = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def psnr(x: jnp.ndarray, y: jnp.ndarray, data_range: float = 1.0) -> jnp.ndarray:
    """PSNR in dB, ``[B]``."""
    d = jnp.asarray(x, jnp.float32) - jnp.asarray(y, jnp.float32)
    mse = jnp.mean(d * d, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)


def gaussian_window(size: int = SSIM_WIN, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian ``[size]``."""
    r = (size - 1) / 2.0
    t = np.arange(size, dtype=np.float64) - r
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def _filter_valid(img: jnp.ndarray, g: jnp.ndarray) -> jnp.ndarray:
    """Separable Gaussian filter, valid region. ``img``: [N, H, W] -> [N, H-k+1, W-k+1]."""
    k = g.shape[0]
    x = img[:, None]  # NCHW with C=1
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, k, 1), (1, 1), "VALID",
                                     precision=jax.lax.Precision.HIGHEST)
    x = jax.lax.conv_general_dilated(x, g.reshape(1, 1, 1, k), (1, 1), "VALID",
                                     precision=jax.lax.Precision.HIGHEST)
    return x[:, 0]


@functools.partial(jax.jit, static_argnames=("data_range",))
def ssim(x: jnp.ndarray, y: jnp.ndarray, data_range: float = 1.0) -> jnp.ndarray:
    """Mean SSIM per image, ``[B]`` (see the module docstring for the exact definition)."""
    b, h, w, c = x.shape
    if min(h, w) < SSIM_WIN:
        raise ValueError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN}, got {h}x{w}")
    g = jnp.asarray(gaussian_window())
    # [B, H, W, C] -> [B*C, H, W]
    xx = jnp.moveaxis(jnp.asarray(x, jnp.float32), -1, 1).reshape(b * c, h, w)
    yy = jnp.moveaxis(jnp.asarray(y, jnp.float32), -1, 1).reshape(b * c, h, w)
    mx, my = _filter_valid(xx, g), _filter_valid(yy, g)
    vx = _filter_valid(xx * xx, g) - mx * mx
    vy = _filter_valid(yy * yy, g) - my * my
    cxy = _filter_valid(xx * yy, g) - mx * my
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return jnp.mean(s.reshape(b, c, -1), axis=(1, 2))


@jax.jit
def ciede2000_mean(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Mean CIEDE2000 over pixels, ``[B]``."""
    return jnp.mean(ciede2000_rgb(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)),
                    axis=(1, 2))


def all_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """``{"psnr", "ssim", "ciede2000"}`` per image (numpy ``[B]``) for float images in [0, 1]."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    return {"psnr": np.asarray(psnr(x, y)), "ssim": np.asarray(ssim(x, y)),
            "ciede2000": np.asarray(ciede2000_mean(x, y))}
