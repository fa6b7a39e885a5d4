"""DenseNet with torchvision semantics (``densenet161_places365`` of the Places365 zoo).

torchvision details that matter for parity:
  * ``features`` = conv0 (7x7/2, padding 3, no bias), norm0, relu0, pool0 (3x3/2 max-pool,
    padding 1), then ``denseblock{i}`` and ``transition{i}``, and a final ``norm5``;
  * a dense layer is pre-activation: norm1, relu, conv1 (1x1 to ``bn_size * growth``), norm2,
    relu, conv2 (3x3, padding 1, ``growth`` channels); its output is concatenated after its input;
  * a transition is norm, relu, 1x1 conv halving the channels, 2x2/2 average pool;
  * head: ReLU, global average pool (``adaptive_avg_pool2d(1)``), ``classifier`` Linear.
Module names mirror the current torch names (``features/denseblock1/denselayer1/norm1``); the
CSAIL checkpoints, saved by PyTorch 0.2, spell the dense-layer children ``norm.1`` / ``conv.1``
and the converter renames them.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppjax.models.pooling import max_pool
from ppjax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, normalize

Dtype = Any


def _bn(dtype, name):
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=dtype, name=name)


def _conv(features, kernel, stride, padding, dtype, name):
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)), use_bias=False,
                   dtype=dtype, name=name)


class DenseLayer(nn.Module):
    growth: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.relu(_bn(self.dtype, "norm1")(x))
        y = _conv(self.bn_size * self.growth, 1, 1, 0, self.dtype, "conv1")(y)
        y = nn.relu(_bn(self.dtype, "norm2")(y))
        y = _conv(self.growth, 3, 1, 1, self.dtype, "conv2")(y)
        return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DenseBlock(nn.Module):
    """torch ``_DenseBlock``: children ``denselayer1`` ... ``denselayer{n}``."""

    layers: int
    growth: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i in range(self.layers):
            x = DenseLayer(self.growth, self.bn_size, self.dtype, name=f"denselayer{i + 1}")(x)
        return x


class Transition(nn.Module):
    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(_bn(self.dtype, "norm")(x))
        x = _conv(self.features, 1, 1, 0, self.dtype, "conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class Features(nn.Module):
    growth: int
    block_config: Sequence[int]
    init_features: int
    bn_size: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, feats):
        x = _conv(self.init_features, 7, 2, 3, self.dtype, "conv0")(x)
        x = nn.relu(_bn(self.dtype, "norm0")(x))
        x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        feats["stem"] = x
        c = self.init_features
        for i, n in enumerate(self.block_config):
            x = DenseBlock(n, self.growth, self.bn_size, self.dtype, name=f"denseblock{i + 1}")(x)
            c += n * self.growth
            feats[f"denseblock{i + 1}"] = x
            if i != len(self.block_config) - 1:
                c //= 2
                x = Transition(c, self.dtype, name=f"transition{i + 1}")(x)
        return _bn(self.dtype, "norm5")(x)


class DenseNet(nn.Module):
    """torchvision DenseNet on NHWC input in [0, 1]; ImageNet normalisation happens inside.

    Returns logits ``[B, num_classes]`` in float32 (and the intermediate maps with ``capture``).
    """

    growth: int = 48
    block_config: Sequence[int] = (6, 12, 36, 24)
    init_features: int = 96
    bn_size: int = 4
    num_classes: int = 365
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x01, *, capture: bool = False):
        feats = {}
        x = normalize(x01.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        x = Features(self.growth, self.block_config, self.init_features, self.bn_size,
                     self.dtype, name="features")(x, feats)
        x = jnp.mean(nn.relu(x).astype(jnp.float32), axis=(1, 2))
        feats["pool"] = x
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="classifier")(x)
        return (logits, feats) if capture else logits


DenseNet161 = partial(DenseNet, growth=48, block_config=(6, 12, 36, 24), init_features=96)
