"""NIMA (Neural Image Assessment) appeal judges: 10-bin score distributions on AVA.

Two ports, both ``x01: [B, 224, 224, 3] float32 in [0, 1] -> [B, 10]`` probabilities (float32);
the NIMA score is the distribution's mean ``sum_i i * p_i``, i = 1..10 (``Judge.score``):

* :class:`NimaMobileNet`: the organisers' 2019 Keras model (titu1994/neural-image-assessment):
  ``MobileNet(alpha=1, include_top=False, pooling="avg")``, ``Dropout(0.75)``,
  ``Dense(10, softmax)``; input ``x/127.5 - 1`` on 0..255 pixels, i.e. ``2 * x01 - 1``.
  Params: ``mobilenet/<keras layer name>/...`` and ``dense/...``.
* :class:`NimaMobileNetV2`: the PyTorch NIMA (truskovskiyk/nima.pytorch v1, ``nima224.pth``):
  ``base_model = Sequential(features)``, then ``head = Sequential(ReLU, Dropout(0.75),
  Linear(1280, 10), Softmax)``; ImageNet mean/std normalisation. Params mirror the torch keys
  (``base_model/0/3/conv/6``, ``head/2``).

Dropout is the identity at inference; the softmax runs in float32 whatever the compute dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppjax.models.mobilenet import MobileNetV1
from ppjax.models.mobilenet_v2 import MobileNetV2Features
from ppjax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, normalize

Dtype = Any
NIMA_BINS = 10


class NimaMobileNet(nn.Module):
    """The organisers' Keras NIMA (MobileNet v1 backbone). ``x01 -> [B, 10]`` probabilities."""

    alpha: float = 1.0
    num_bins: int = NIMA_BINS
    depthwise_impl: str = "shift"  # "conv" for the grouped convolution (see DepthwiseConv)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x01):
        # keras.applications.mobilenet.preprocess_input on 0..255 pixels: x / 127.5 - 1.
        x = 2.0 * x01.astype(jnp.float32) - 1.0
        feats = MobileNetV1(alpha=self.alpha, pooling="avg", depthwise_impl=self.depthwise_impl,
                            dtype=self.dtype, name="mobilenet")(x)
        logits = nn.Dense(self.num_bins, dtype=jnp.float32, name="dense")(feats)
        return nn.softmax(logits, axis=-1)


class _BaseModel(nn.Module):
    """torch ``base_model = nn.Sequential(features)``: the features are child ``0``."""

    depthwise_impl: str = "shift"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = MobileNetV2Features(depthwise_impl=self.depthwise_impl, dtype=self.dtype, name="0")(x)
        # features.19 = AvgPool2d(7): the global average at 224x224 (7x7 maps).
        return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class _Head(nn.Module):
    """torch ``head = Sequential(ReLU, Dropout(0.75), Linear(1280, K), Softmax)``."""

    num_bins: int = NIMA_BINS

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.num_bins, dtype=jnp.float32, name="2")(nn.relu(x))
        return nn.softmax(x, axis=-1)


class NimaMobileNetV2(nn.Module):
    """The PyTorch NIMA (``nima224.pth``). ``x01 -> [B, 10]`` probabilities."""

    num_bins: int = NIMA_BINS
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    depthwise_impl: str = "shift"  # "conv" for the grouped convolution (see DepthwiseConv)
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = normalize(x01.astype(jnp.float32), self.mean, self.std)
        feats = _BaseModel(self.depthwise_impl, self.dtype, name="base_model")(x)
        return _Head(self.num_bins, name="head")(feats)


def nima_mean(probs: jnp.ndarray) -> jnp.ndarray:
    """``[B, K]`` probabilities -> ``[B]`` mean score ``sum_i i * p_i`` (i = 1..K)."""
    k = probs.shape[-1]
    bins = jnp.arange(1, k + 1, dtype=probs.dtype).reshape((1,) * (probs.ndim - 1) + (k,))
    return jnp.sum(probs * bins, axis=-1)
