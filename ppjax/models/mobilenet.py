"""MobileNet v1 with Keras semantics (the backbone of the organisers' NIMA, titu1994's Keras model).

Keras details that matter for parity (``keras.applications.MobileNet``, Keras 3):
  * stem ``conv1``: 3x3/2 conv, ``padding="same"`` (TF semantics: the odd pixel of padding goes to
    the bottom/right), no bias, then ``conv1_bn`` and ReLU6;
  * each depthwise block ``i`` (1..13): ``conv_dw_i`` (3x3 DepthwiseConv2D, no bias) with
    ``padding="same"`` at stride 1, and ``ZeroPadding2D(((0, 1), (0, 1)))`` + ``padding="valid"``
    at stride 2; ``conv_dw_i_bn``, ReLU6; ``conv_pw_i`` (1x1 conv, no bias), ``conv_pw_i_bn``, ReLU6;
  * BatchNormalization epsilon 1e-3 (Keras' default; torch's is 1e-5);
  * ``include_top=False, pooling="avg"``: global average pooling -> ``[B, 1024]``.
Older Keras versions (2.1.x, which trained the released weights) wrote the stem and the stride-2
depthwise convs as ``same`` or as zero padding + ``valid``; at the even input sizes NIMA uses
(224) all of these pad exactly (0, 1), so the same weights give the same outputs.

Flax module names follow the Keras layer names (``conv_dw_3_bn``), so the Keras converter is an
explicit, flat name map (see ``ppjax/convert/nima_keras.py``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Dtype = Any

KERAS_BN_EPS = 1e-3

# (pointwise filters, depthwise stride) of blocks 1..13, as in keras.applications.MobileNet.
MOBILENET_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)


def relu6(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(x, 0.0, 6.0)


class DepthwiseConv(nn.Module):
    """Depthwise conv without bias; ``kernel: [kh, kw, 1, C]`` exactly as
    ``nn.Conv(C, feature_group_count=C)`` stores it, so converters need not care which runs.

    ``impl="shift"`` (default) sums the kh*kw shifted, strided slices times their per-channel
    taps: XLA:CPU runs grouped convolutions slowly (benchmarks/RESULTS.md); ``impl="conv"`` is
    the grouped convolution itself (cuDNN-friendly).
    ``padding``: ((top, bottom), (left, right)) zeros.
    """

    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1))
    impl: str = "shift"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (kh, kw, 1, c), jnp.float32)
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        s = self.strides
        if self.impl == "conv":
            return lax.conv_general_dilated(x, kernel, (s, s), self.padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=c)
        if self.impl != "shift":
            raise ValueError(f"impl must be 'shift' or 'conv', got {self.impl!r}")
        xp = jnp.pad(x, ((0, 0), *self.padding, (0, 0)))
        ho = (xp.shape[1] - kh) // s + 1
        wo = (xp.shape[2] - kw) // s + 1
        out = None
        for i in range(kh):
            for j in range(kw):
                tap = lax.slice(xp, (0, i, j, 0),
                                (xp.shape[0], i + (ho - 1) * s + 1, j + (wo - 1) * s + 1, c),
                                (1, s, s, 1))
                term = tap * kernel[i, j, 0].reshape(1, 1, 1, c)
                out = term if out is None else out + term
        return out


def _bn(dtype, name):
    return nn.BatchNorm(use_running_average=True, epsilon=KERAS_BN_EPS, dtype=dtype, name=name)


class MobileNetV1(nn.Module):
    """Keras MobileNet v1 feature extractor (``include_top=False``).

    Attributes:
      alpha: width multiplier (1.0 for NIMA).
      pooling: ``"avg"`` -> ``[B, C]`` (NIMA), ``None`` -> the last feature map ``[B, h, w, C]``.
      depthwise_impl: ``"shift"`` (fast on CPU) or ``"conv"``; see :class:`DepthwiseConv`.
      dtype: compute dtype (params stay float32).
    Input: ``x: [B, H, W, 3]`` already preprocessed the Keras way (``x/127.5 - 1``, in [-1, 1]).
    """

    alpha: float = 1.0
    pooling: str | None = "avg"
    depthwise_impl: str = "shift"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = x.astype(self.dtype)
        x = nn.Conv(int(32 * self.alpha), (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                    dtype=self.dtype, name="conv1")(x)
        x = relu6(_bn(self.dtype, "conv1_bn")(x))
        for block_id, (filters, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
            # Keras: 'same' at stride 1; ZeroPadding2D(((0, 1), (0, 1))) + 'valid' at stride 2.
            padding = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
            x = DepthwiseConv((3, 3), stride, padding, self.depthwise_impl, self.dtype,
                              name=f"conv_dw_{block_id}")(x)
            x = relu6(_bn(self.dtype, f"conv_dw_{block_id}_bn")(x))
            x = nn.Conv(int(filters * self.alpha), (1, 1), padding="SAME", use_bias=False,
                        dtype=self.dtype, name=f"conv_pw_{block_id}")(x)
            x = relu6(_bn(self.dtype, f"conv_pw_{block_id}_bn")(x))
        if self.pooling == "avg":
            return jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        if self.pooling is None:
            return x
        raise ValueError(f"pooling must be 'avg' or None, got {self.pooling!r}")


def keras_layer_names(n_blocks: int = len(MOBILENET_V1_BLOCKS)) -> tuple[str, ...]:
    """Names of the Keras MobileNet layers that carry weights, in model order."""
    names = ["conv1", "conv1_bn"]
    for i in range(1, n_blocks + 1):
        names += [f"conv_dw_{i}", f"conv_dw_{i}_bn", f"conv_pw_{i}", f"conv_pw_{i}_bn"]
    return tuple(names)
