"""AlexNet with torchvision semantics (``alexnet_places365`` of the Places365 zoo).

``features``: conv 11x11/4 (padding 2, 64), ReLU, max-pool 3x3/2, conv 5x5 (padding 2, 192),
ReLU, max-pool, conv 3x3 (384), ReLU, conv 3x3 (256), ReLU, conv 3x3 (256), ReLU, max-pool; then
``AdaptiveAvgPool2d((6, 6))``, a channel-major flatten (torch's NCHW order, 256*6*6) and the
``classifier``: Dropout, Linear(9216, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU,
Linear(4096, classes). Module names are the torch ``Sequential`` indices (``features/0``,
``classifier/6``).

At 224x224 (the zoo's training crops) the last map is 6x6 and the adaptive pool is the identity;
at the task's 256x256 it is 7x7, and the pool averages overlapping 2x2 windows exactly as
torch's adaptive pooling does (bins ``[floor(i*7/6), ceil((i+1)*7/6))``). The PyTorch 0.2
AlexNet of the checkpoint's time had no such pool and only ran at 224x224.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from ppjax.models.pooling import max_pool
from ppjax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, normalize

Dtype = Any


def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """``[out, size]`` averaging weights of torch's adaptive average pooling along one axis:
    output ``i`` averages inputs ``floor(i*size/out) .. ceil((i+1)*size/out) - 1``."""
    m = np.zeros((out, size), np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, math.ceil((i + 1) * size / out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jnp.ndarray, out_hw: tuple[int, int]) -> jnp.ndarray:
    """``nn.AdaptiveAvgPool2d(out_hw)`` on NHWC ``x`` (separable: two small matrix products)."""
    ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_hw[0]), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_hw[1]), x.dtype)
    return jnp.einsum("oh,bhwc,pw->bopc", ph, x, pw)


class Features(nn.Module):
    """torch ``features`` Sequential: the convolutions keep their indices 0, 3, 6, 8, 10."""

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        def conv(x, features, k, s, p, idx):
            return nn.relu(nn.Conv(features, (k, k), strides=(s, s), padding=((p, p), (p, p)),
                                   dtype=self.dtype, name=str(idx))(x))

        def pool(x):
            return max_pool(x, (3, 3), strides=(2, 2), padding="VALID")

        x = pool(conv(x, 64, 11, 4, 2, 0))
        x = pool(conv(x, 192, 5, 1, 2, 3))
        x = conv(x, 384, 3, 1, 1, 6)
        x = conv(x, 256, 3, 1, 1, 8)
        return pool(conv(x, 256, 3, 1, 1, 10))


class Classifier(nn.Module):
    """torch ``classifier`` Sequential: Linear layers 1, 4, 6 (dropout is off in evaluation)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="1")(x))
        x = nn.relu(nn.Dense(4096, dtype=self.dtype, name="4")(x))
        return nn.Dense(self.num_classes, dtype=jnp.float32, name="6")(x.astype(jnp.float32))


class AlexNet(nn.Module):
    """torchvision AlexNet on NHWC input in [0, 1]; ImageNet normalisation happens inside.
    Returns logits ``[B, num_classes]`` in float32."""

    num_classes: int = 365
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x01, *, capture: bool = False):
        x = normalize(x01.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        x = Features(self.dtype, name="features")(x)
        feats = {"features": x}
        x = adaptive_avg_pool(x.astype(jnp.float32), (6, 6))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch flattens C, H, W
        feats["pool"] = x
        logits = Classifier(self.num_classes, self.dtype, name="classifier")(x.astype(self.dtype))
        return (logits, feats) if capture else logits
