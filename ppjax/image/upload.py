"""Upload pipelines: what a photo service does to an uploaded photo, for real (evaluation) and
differentiably (EOT).

Real pipelines (:data:`PIPELINES`, numpy / Pillow / OpenCV): each is a :class:`Pipeline` that
takes ``[H, W, 3]`` uint8 and returns the uint8 image the service would deliver (possibly smaller).
Its steps are :class:`Resize` (long side scaled by ``factor``; both sides ``int(side * factor +
0.5)``, see :func:`upload_size`), :class:`Jpeg` (Pillow, :func:`ppjax.image.jpeg.pil_jpeg`) and
:class:`WebP` (Pillow, lossy). ``in_eot`` says whether the pipeline lies inside the distribution
of the ``upload`` EOT view below (downscale 0.4-1.0x with an antialiased bicubic filter, JPEG
70-95 4:2:0, either order); the others are held out. Names and exact settings:
``docs/faces-data.md`` (and ``PIPELINES[name].describe()``).

Differentiable view (:func:`upload_view`, registered as the EOT view ``upload`` in
:mod:`ppjax.attacks.rules`): downscale by one of :data:`UPLOAD_SCALES` (``jax.image.resize``,
cubic with antialiasing: Pillow's ``BICUBIC`` resize is the same filter, measured within ~56 dB
of it), the Pillow-exact differentiable JPEG (quality traced, per image) in either order, then
**back up to the input size** with a bilinear resize. Returning the input's shape keeps one static
shape per compile, so any objective (the face detector's fixed image pyramid included) runs on
the view unchanged; a detector run on the delivered small photo sees the same content, up to its
own pyramid's resampling. The scale is chosen per batch among a fixed set of static sizes
(``lax.switch``: one branch runs), the quality per image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from ppjax.image.io import to_uint8
from ppjax.image.jpeg import jpeg, pil_jpeg, ste_round
from ppjax.registry import Registry

__all__ = ["EVAL_PIPELINES", "HELD_OUT", "PIPELINES", "UPLOAD_SCALES", "Jpeg", "Pipeline",
           "Resize", "WebP", "apply_pipeline", "resize_down", "upload_chain", "upload_size",
           "upload_view"]

#: Pillow's filters by name; ``"area"`` is OpenCV's ``INTER_AREA`` (cv2.resize).
RESAMPLERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
              "nearest": Image.NEAREST, "area": None}


def upload_size(hw: tuple[int, int], factor: float) -> tuple[int, int]:
    """``(h, w)`` of an ``hw`` image downscaled by ``factor``: ``max(1, int(side * factor +
    0.5))`` per side. The one rule both the real and the differentiable pipelines use."""
    return tuple(max(1, int(s * float(factor) + 0.5)) for s in hw)


# ----------------------------------------------------------------------------- real pipelines


@dataclass(frozen=True)
class Resize:
    """Scale both sides by ``factor`` with ``resampler`` (a :data:`RESAMPLERS` name; Pillow's
    filters antialias when shrinking)."""

    factor: float
    resampler: str = "bicubic"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        h, w = upload_size(img.shape[:2], self.factor)
        if self.resampler == "area":
            try:
                import cv2
            except ImportError:
                raise RuntimeError("the 'area' resampler is OpenCV's INTER_AREA: pip install "
                                   "'opencv-python-headless>=4.10,<5'") from None
            return cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_AREA)
        return np.asarray(Image.fromarray(img).resize((w, h), RESAMPLERS[self.resampler]),
                          np.uint8)

    def describe(self) -> str:
        how = "OpenCV INTER_AREA" if self.resampler == "area" else f"Pillow {self.resampler}"
        return f"resize {self.factor:g}x ({how})"


@dataclass(frozen=True)
class Jpeg:
    """Pillow JPEG at ``quality`` with ``subsampling`` ("420" or "444"), then decoded."""

    quality: int
    subsampling: str = "420"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        return to_uint8(pil_jpeg(img, self.quality, self.subsampling))

    def describe(self) -> str:
        return f"JPEG-{self.quality} {self.subsampling[0]}:{self.subsampling[1]}:{self.subsampling[2]}"


@dataclass(frozen=True)
class WebP:
    """Pillow lossy WebP at ``quality`` (libwebp's default method 4), then decoded."""

    quality: int

    def __call__(self, img: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, "WEBP", quality=int(self.quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im.convert("RGB"), np.uint8)

    def describe(self) -> str:
        return f"WebP-{self.quality}"


@dataclass(frozen=True)
class Pipeline:
    """A named upload pipeline: ``steps`` applied in order to ``[H, W, 3]`` uint8."""

    name: str
    steps: tuple
    in_eot: bool

    def __call__(self, img: np.ndarray) -> np.ndarray:
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
            raise ValueError(f"pipeline {self.name!r} expects [H, W, 3] uint8, got "
                             f"{img.shape} {img.dtype}")
        for step in self.steps:
            img = step(img)
        return img

    def describe(self) -> str:
        return " -> ".join(s.describe() for s in self.steps)


PIPELINES: Registry[Pipeline] = Registry("upload pipeline")
for _p in (
        Pipeline("jpeg90", (Jpeg(90),), True),
        # the evaluation's upload: one fixed point of the EOT distribution
        Pipeline("upload", (Resize(0.6), Jpeg(80)), True),
        Pipeline("upload_jpeg_first", (Jpeg(80), Resize(0.6)), True),
        # held out: not in the EOT distribution
        Pipeline("jpeg50", (Jpeg(50),), False),
        Pipeline("jpeg60", (Jpeg(60),), False),
        Pipeline("jpeg98", (Jpeg(98),), False),
        Pipeline("webp80", (WebP(80),), False),
        Pipeline("upload_lanczos", (Resize(0.6, "lanczos"), Jpeg(80)), False),
        Pipeline("upload_bilinear", (Resize(0.6, "bilinear"), Jpeg(80)), False),
        Pipeline("upload_nearest", (Resize(0.6, "nearest"), Jpeg(80)), False),
        Pipeline("upload_area", (Resize(0.6, "area"), Jpeg(80)), False),
        Pipeline("upload_webp", (Resize(0.6), WebP(80)), False),
        Pipeline("jpeg60_then_lanczos", (Jpeg(60), Resize(0.7, "lanczos")), False)):
    PIPELINES.register(_p.name, _p)

#: What ``evaluate --task faces`` reports besides the saved PNG.
EVAL_PIPELINES = ("jpeg90", "upload")
#: The pipelines outside the EOT distribution.
HELD_OUT = tuple(n for n, p in PIPELINES.items() if not p.in_eot)


def apply_pipeline(name: str, img: np.ndarray) -> np.ndarray:
    """``PIPELINES[name](img)``: ``[H, W, 3]`` uint8 -> the delivered uint8 image."""
    return PIPELINES[name](img)


# ----------------------------------------------------------------------------- differentiable

#: The downscale factors the EOT view draws from (static: each is one compiled branch).
UPLOAD_SCALES = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def resize_down(x: jax.Array, factor: float) -> jax.Array:
    """``x`` [B, H, W, 3] float in [0, 1] scaled by ``factor`` (static) to :func:`upload_size`
    with an antialiased cubic filter (Pillow ``BICUBIC``'s), clipped to [0, 1]. Not rounded."""
    b, h, w, c = x.shape
    hw = upload_size((h, w), factor)
    if hw == (h, w):
        return x
    return jnp.clip(jax.image.resize(x, (b, *hw, c), "cubic", antialias=True), 0.0, 1.0)


def upload_chain(x: jax.Array, factor: float, quality, *, jpeg_first: bool = False,
                 subsampling: str = "420", rounding: str = "soft_ste") -> jax.Array:
    """The delivered image, differentiably: [B, H, W, 3] -> [B, h, w, 3] float in [0, 1] on the
    8-bit grid. ``jpeg_first=False``: :func:`resize_down` then :func:`ppjax.image.jpeg.jpeg`
    (which rounds its input to 8 bits, as Pillow's uint8 resize does); ``True``: JPEG, then the
    resize, then 8-bit rounding (straight-through). ``factor``, ``jpeg_first``, ``subsampling``
    and ``rounding`` are static; ``quality`` is traced (scalar or [B])."""
    if jpeg_first:
        return _shrink_8bit(jpeg(x, quality, subsampling=subsampling, rounding=rounding), factor)
    return jpeg(resize_down(x, factor), quality, subsampling=subsampling, rounding=rounding)


def _shrink_8bit(y: jax.Array, factor: float) -> jax.Array:
    """:func:`resize_down` then 8-bit rounding (straight-through), as a uint8 resize delivers."""
    return y if factor == 1.0 else ste_round(resize_down(y, factor) * 255.0) / 255.0


def _back(y: jax.Array, shape) -> jax.Array:
    return y if y.shape == tuple(shape) else jax.image.resize(y, shape, "linear")


def _pad_edge(y: jax.Array, hw: tuple[int, int]) -> jax.Array:
    return jnp.pad(y, ((0, 0), (0, hw[0] - y.shape[1]), (0, hw[1] - y.shape[2]), (0, 0)), "edge")


def upload_view(x: jax.Array, scale_index, quality, jpeg_first, *,
                scales: tuple[float, ...] = UPLOAD_SCALES, subsampling: str = "420",
                rounding: str = "soft_ste") -> jax.Array:
    """The upload EOT view: what :func:`upload_chain` delivers at ``scales[scale_index]``, back
    up to the input size (bilinear). ``x``: [B, H, W, 3] float in [0, 1]; ``scale_index``: int
    scalar (traced; one branch runs); ``quality``: scalar or [B] (traced); ``jpeg_first``: bool
    scalar (traced). Returns [B, H, W, 3] float32.

    One JPEG is compiled, at the input's size, for every scale and both orders: the downscaled
    image of the resize-first order is padded to the input's size by edge replication, encoded,
    and cropped. Blocks inside the small image are libjpeg's exactly; the last block row and
    column differ a little from Pillow's (libjpeg pads the chroma plane after subsampling)."""
    x = jnp.asarray(x, jnp.float32)
    hw = x.shape[1:3]
    sizes = [upload_size(hw, f) for f in scales]
    index = jnp.asarray(scale_index, jnp.int32)
    first = jnp.asarray(jpeg_first, bool)
    shrink_pad = [lambda z, f=f: _pad_edge(resize_down(z, f), hw) for f in scales]
    z = jax.lax.cond(first, lambda z: z, lambda z: jax.lax.switch(index, shrink_pad, z), x)
    y = jpeg(z, quality, subsampling=subsampling, rounding=rounding)
    crop_up = [lambda y, s=s: _back(y[:, :s[0], :s[1]], x.shape) for s in sizes]
    shrink_up = [lambda y, f=f: _back(_shrink_8bit(y, f), x.shape) for f in scales]
    return jax.lax.cond(first, lambda y: jax.lax.switch(index, shrink_up, y),
                        lambda y: jax.lax.switch(index, crop_up, y), y)
