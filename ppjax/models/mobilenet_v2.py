"""MobileNetV2 features in the layout of the PyTorch NIMA (``nima224.pth``).

The PyTorch NIMA used by Pixel Privacy 2020 participants is truskovskiyk/nima.pytorch (branch
``v1``): ``nima/mobile_net_v2.py`` is a copy of tonylins/pytorch-mobilenet-v2, *not* torchvision's
MobileNetV2. The differences matter for both the key layout and the numbers:

  * ``features.0`` = ``conv_bn``: ``Sequential(Conv2d 3x3/2 pad 1, BatchNorm2d, ReLU)`` (plain
    ReLU in that copy, not ReLU6);
  * ``features.1..17`` = ``InvertedResidual`` with one ``conv`` Sequential of 8 children
    ``0`` 1x1 expand, ``1`` BN, ``2`` ReLU6, ``3`` 3x3 depthwise (pad 1), ``4`` BN, ``5`` ReLU6,
    ``6`` 1x1 project, ``7`` BN -- *also* for the first block whose expansion is 1 (torchvision
    drops the expand conv there);
  * residual connection when stride 1 and in == out channels;
  * ``features.18`` = ``conv_1x1_bn``: ``Sequential(Conv2d 1x1, BatchNorm2d, ReLU)`` -> 1280 ch;
  * ``features.19`` = ``AvgPool2d(7)``: the global average at 224x224 input.
BatchNorm eps is torch's 1e-5. Module names mirror the torch paths (``3/conv/6``) so the generic
torch name map of ``ppjax.convert.common`` applies.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppjax.models.mobilenet import DepthwiseConv

Dtype = Any

# (expansion t, output channels c, repeats n, first stride s), as in the reference code.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
LAST_CHANNEL = 1280


def _act(x, kind: str):
    if kind == "relu":
        return nn.relu(x)
    if kind == "relu6":
        return jnp.clip(x, 0.0, 6.0)
    raise ValueError(f"unknown activation {kind!r}")


def _conv(features, kernel, stride, groups, dtype, name):
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                   dtype=dtype, name=name)


def _bn(dtype, name):
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=dtype, name=name)


class ConvBNAct(nn.Module):
    """torch ``Sequential(Conv2d(no bias), BatchNorm2d, act)``: children ``0`` and ``1``."""

    features: int
    kernel: int
    stride: int = 1
    act: str = "relu"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(self.features, self.kernel, self.stride, 1, self.dtype, "0")(x)
        return _act(_bn(self.dtype, "1")(x), self.act)


class _IRConv(nn.Module):
    """The ``conv`` Sequential of an InvertedResidual (children 0..7, activations unnamed)."""

    hidden: int
    out: int
    stride: int
    depthwise_impl: str = "shift"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = self.dtype
        x = _act(_bn(d, "1")(_conv(self.hidden, 1, 1, 1, d, "0")(x)), "relu6")
        x = DepthwiseConv((3, 3), self.stride, ((1, 1), (1, 1)), self.depthwise_impl, d,
                          name="3")(x)
        x = _act(_bn(d, "4")(x), "relu6")
        return _bn(d, "7")(_conv(self.out, 1, 1, 1, d, "6")(x))


class InvertedResidual(nn.Module):
    out: int
    stride: int
    expand_ratio: int
    depthwise_impl: str = "shift"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        inp = x.shape[-1]
        y = _IRConv(inp * self.expand_ratio, self.out, self.stride, self.depthwise_impl,
                    self.dtype, name="conv")(x)
        if self.stride == 1 and inp == self.out:
            return x + y
        return y


class MobileNetV2Features(nn.Module):
    """``features`` of the nima.pytorch-v1 MobileNetV2, children named ``0``..``18``.

    Input: ``x: [B, H, W, 3]`` already normalised; output the last feature map
    ``[B, H/32, W/32, 1280]`` (the ``AvgPool2d`` child is left to the caller).
    """

    width_mult: float = 1.0
    outer_act: str = "relu"  # activation of features.0 and features.18 in that copy
    depthwise_impl: str = "shift"  # see ppjax.models.mobilenet.DepthwiseConv
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        x = ConvBNAct(int(32 * self.width_mult), 3, 2, self.outer_act, self.dtype, name="0")(x)
        idx = 1
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                x = InvertedResidual(int(c * self.width_mult), s if i == 0 else 1, t,
                                     self.depthwise_impl, self.dtype, name=str(idx))(x)
                idx += 1
        last = int(LAST_CHANNEL * self.width_mult) if self.width_mult > 1.0 else LAST_CHANNEL
        return ConvBNAct(last, 1, 1, self.outer_act, self.dtype, name=str(idx))(x)
