"""Inception-ResNet-v2 in the Cadene ``pretrainedmodels`` layout (the 2020 judge's backbone).

Module names mirror the torch module paths of ``pretrainedmodels/models/inceptionresnetv2.py``
(``mixed_5b/branch1/0/conv``, ``repeat_1/19/conv2d``, ...), so converters are a plain name map. The
trunk can also be named by child index (``0`` .. ``15``), which is how a torch
``nn.Sequential(*list(model.children())[:-1])`` names it (KonCept512's ``base``).

Cadene details that matter for parity:
  * ``BasicConv2d`` = conv (no bias) + BatchNorm2d(eps=1e-3) + ReLU;
  * the stem convs and every stride-2 conv / max-pool are unpadded ("valid");
  * ``mixed_5b.branch3`` starts with AvgPool2d(3, stride 1, padding 1, count_include_pad=False);
  * Block17 uses (1, 7) / (7, 1) kernels padded (0, 3) / (3, 0); Block8 (1, 3) / (3, 1) padded
    (0, 1) / (1, 0); a block's closing 1x1 ``conv2d`` has a bias and no BatchNorm;
  * residual: ``relu(conv2d(cat(branches)) * scale + x)``, scales 0.17 / 0.10 / 0.20; the final
    ``block8`` has scale 1.0 and no ReLU;
  * ``avgpool_1a`` = AvgPool2d(8) (stride 8, no padding) followed by a channel-major flatten.
    At 299x299 that is a global average over the 8x8 map; at other sizes it is not (see
    :func:`avgpool_1a`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppjax.models.pooling import avg_pool, max_pool

Dtype = Any

# torch child order of Cadene's InceptionResNetV2 (last_linear, index 16, is not part of the trunk)
CADENE_CHILDREN = (
    "conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a", "maxpool_5a",
    "mixed_5b", "repeat", "mixed_6a", "repeat_1", "mixed_7a", "repeat_2", "block8", "conv2d_7b",
    "avgpool_1a",
)
# the same children named by index, as inside ``nn.Sequential(*list(m.children())[:-1])``
INDEX_CHILDREN = tuple(str(i) for i in range(len(CADENE_CHILDREN)))

POOLS = ("cadene", "global")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU; children ``conv``,
    ``bn``. ``kernel`` / ``stride`` / ``padding`` follow torch (int or (h, w); symmetric pad)."""

    features: int
    kernel: int | tuple[int, int]
    stride: int = 1
    padding: int | tuple[int, int] = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride),
                    padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, dtype=self.dtype, name="bn")(x)
        return nn.relu(x)


def max_pool_3x3_s2(x):
    """``nn.MaxPool2d(3, stride=2)``: no padding."""
    return max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class _Sequential(nn.Module):
    """A torch ``nn.Sequential`` of BasicConv2d specs, children named ``0``, ``1``, ...

    ``layers``: ((features, kernel, stride, padding), ...). ``first``: index of the first conv
    (``mixed_5b.branch3`` starts with a parameter-free AvgPool at index 0).
    """

    layers: Sequence[tuple]
    first: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, (f, k, s, p) in enumerate(self.layers):
            x = BasicConv2d(f, k, s, p, self.dtype, name=str(self.first + i))(x)
        return x


class Mixed5b(nn.Module):
    """35x35 stem output: 192 -> 320 channels (96 + 64 + 96 + 64)."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = BasicConv2d(96, 1, dtype=d, name="branch0")(x)
        x1 = _Sequential(((48, 1, 1, 0), (64, 5, 1, 2)), dtype=d, name="branch1")(x)
        x2 = _Sequential(((64, 1, 1, 0), (96, 3, 1, 1), (96, 3, 1, 1)), dtype=d,
                         name="branch2")(x)
        x3 = avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                      count_include_pad=False)
        x3 = _Sequential(((64, 1, 1, 0),), first=1, dtype=d, name="branch3")(x3)
        return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class Block35(nn.Module):
    """Inception-ResNet-A, 320 channels."""

    scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = BasicConv2d(32, 1, dtype=d, name="branch0")(x)
        x1 = _Sequential(((32, 1, 1, 0), (32, 3, 1, 1)), dtype=d, name="branch1")(x)
        x2 = _Sequential(((32, 1, 1, 0), (48, 3, 1, 1), (64, 3, 1, 1)), dtype=d,
                         name="branch2")(x)
        out = nn.Conv(320, (1, 1), dtype=d, name="conv2d")(jnp.concatenate([x0, x1, x2], -1))
        return nn.relu(out * self.scale + x)


class Mixed6a(nn.Module):
    """Reduction-A: 320 -> 1088 channels (384 + 384 + 320), stride 2, unpadded."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = BasicConv2d(384, 3, 2, dtype=d, name="branch0")(x)
        x1 = _Sequential(((256, 1, 1, 0), (256, 3, 1, 1), (384, 3, 2, 0)), dtype=d,
                         name="branch1")(x)
        x2 = max_pool_3x3_s2(x)
        return jnp.concatenate([x0, x1, x2], axis=-1)


class Block17(nn.Module):
    """Inception-ResNet-B, 1088 channels, factorised 7x7."""

    scale: float = 1.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = BasicConv2d(192, 1, dtype=d, name="branch0")(x)
        x1 = _Sequential(((128, 1, 1, 0), (160, (1, 7), 1, (0, 3)), (192, (7, 1), 1, (3, 0))),
                         dtype=d, name="branch1")(x)
        out = nn.Conv(1088, (1, 1), dtype=d, name="conv2d")(jnp.concatenate([x0, x1], -1))
        return nn.relu(out * self.scale + x)


class Mixed7a(nn.Module):
    """Reduction-B: 1088 -> 2080 channels (384 + 288 + 320 + 1088), stride 2, unpadded."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = _Sequential(((256, 1, 1, 0), (384, 3, 2, 0)), dtype=d, name="branch0")(x)
        x1 = _Sequential(((256, 1, 1, 0), (288, 3, 2, 0)), dtype=d, name="branch1")(x)
        x2 = _Sequential(((256, 1, 1, 0), (288, 3, 1, 1), (320, 3, 2, 0)), dtype=d,
                         name="branch2")(x)
        x3 = max_pool_3x3_s2(x)
        return jnp.concatenate([x0, x1, x2, x3], axis=-1)


class Block8(nn.Module):
    """Inception-ResNet-C, 2080 channels, factorised 3x3; ``no_relu`` for the final block."""

    scale: float = 1.0
    no_relu: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x0 = BasicConv2d(192, 1, dtype=d, name="branch0")(x)
        x1 = _Sequential(((192, 1, 1, 0), (224, (1, 3), 1, (0, 1)), (256, (3, 1), 1, (1, 0))),
                         dtype=d, name="branch1")(x)
        out = nn.Conv(2080, (1, 1), dtype=d, name="conv2d")(jnp.concatenate([x0, x1], -1))
        out = out * self.scale + x
        return out if self.no_relu else nn.relu(out)


class _Repeat(nn.Module):
    """torch ``nn.Sequential`` of ``n`` identical residual blocks named ``0`` .. ``n-1``."""

    block: Any
    n: int
    scale: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.n):
            x = self.block(scale=self.scale, dtype=self.dtype, name=str(i))(x)
        return x


def avgpool_1a(x: jnp.ndarray, pool: str = "cadene") -> jnp.ndarray:
    """The trunk's last pooling, then torch's ``x.view(B, -1)``.

    Args:
      x: ``[B, h, w, 1536]`` (the ``conv2d_7b`` output).
      pool: ``"cadene"``: ``nn.AvgPool2d(8)`` exactly as in ``pretrainedmodels`` (8x8 windows,
        stride 8, no padding); at a 384x512 input the map is 10x14, so this is the mean of the
        top-left 8x8 window only. ``"global"``: ``nn.AdaptiveAvgPool2d(1)``, the mean over all
        positions.
    Returns:
      ``[B, 1536 * oh * ow]`` float32, flattened channel-major like torch's NCHW view
      (``[B, 1536]`` whenever the pooled map is 1x1).
    """
    x = x.astype(jnp.float32)
    if pool == "global":
        return jnp.mean(x, axis=(1, 2))
    if pool != "cadene":
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if x.shape[1] < 8 or x.shape[2] < 8:
        raise ValueError(f"AvgPool2d(8) needs a feature map of at least 8x8, got "
                         f"{x.shape[1]}x{x.shape[2]} (input too small)")
    x = nn.avg_pool(x, (8, 8), strides=(8, 8), padding="VALID")
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class InceptionResNetV2Trunk(nn.Module):
    """Cadene InceptionResNetV2 up to and including ``avgpool_1a`` (no normalisation).

    Attributes:
      child_names: names of the 16 children, :data:`CADENE_CHILDREN` (``conv2d_1a`` ...) or
        :data:`INDEX_CHILDREN` (``0`` ... ``15``, the KonCept512 ``base``).
      pool: see :func:`avgpool_1a`.
    Input ``[B, H, W, 3]`` already normalised (Cadene: ``(x01 - 0.5) / 0.5``), H, W >= 299 for
    the ``"cadene"`` pool. Returns ``[B, 1536]`` float32 features (and a dict of stage
    activations, NHWC, with ``capture=True``).
    """

    child_names: Sequence[str] = CADENE_CHILDREN
    pool: str = "cadene"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, *, capture: bool = False):
        n = dict(zip(CADENE_CHILDREN, self.child_names, strict=True))
        d = self.dtype
        feats = {}
        x = BasicConv2d(32, 3, 2, dtype=d, name=n["conv2d_1a"])(x)
        x = BasicConv2d(32, 3, 1, dtype=d, name=n["conv2d_2a"])(x)
        x = BasicConv2d(64, 3, 1, 1, dtype=d, name=n["conv2d_2b"])(x)
        x = max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, dtype=d, name=n["conv2d_3b"])(x)
        x = BasicConv2d(192, 3, dtype=d, name=n["conv2d_4a"])(x)
        x = max_pool_3x3_s2(x)
        feats["stem"] = x
        x = Mixed5b(d, name=n["mixed_5b"])(x)
        feats["mixed_5b"] = x
        x = _Repeat(Block35, 10, 0.17, d, name=n["repeat"])(x)
        x = Mixed6a(d, name=n["mixed_6a"])(x)
        feats["mixed_6a"] = x
        x = _Repeat(Block17, 20, 0.10, d, name=n["repeat_1"])(x)
        x = Mixed7a(d, name=n["mixed_7a"])(x)
        feats["mixed_7a"] = x
        x = _Repeat(Block8, 9, 0.20, d, name=n["repeat_2"])(x)
        x = Block8(1.0, no_relu=True, dtype=d, name=n["block8"])(x)
        x = BasicConv2d(1536, 1, dtype=d, name=n["conv2d_7b"])(x)
        feats["conv2d_7b"] = x
        x = avgpool_1a(x, self.pool)
        feats["pool"] = x
        return (x, feats) if capture else x

