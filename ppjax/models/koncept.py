"""KonCept512, the 2020 Pixel Privacy judge: blind image quality on the KonIQ-10k MOS scale.

The PyTorch re-implementation (ZhengyuZhao/koniq-PyTorch, ``model_qa(num_classes=1)``) is

    base = nn.Sequential(*list(inceptionresnetv2(...).children())[:-1])   # Cadene, minus last_linear
    fc   = nn.Sequential(Linear(1536, 2048), ReLU, BatchNorm1d(2048), Dropout(0.25),
                         Linear(2048, 1024), ReLU, BatchNorm1d(1024), Dropout(0.25),
                         Linear(1024, 256),  ReLU, BatchNorm1d(256),  Dropout(0.5),
                         Linear(256, 1))
    forward(x) = fc(base(x).view(B, -1))

on 512x384 (W x H) RGB after ToTensor and Normalize(0.5, 0.5). Module names here mirror those
torch paths (``base/7/branch1/0/conv``, ``fc/2``), so ``KonCept512.pth`` converts by name. The
BatchNorm layers use their running statistics and Dropout is the identity (eval mode).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from ppjax.models.inception_resnet_v2 import INDEX_CHILDREN, InceptionResNetV2Trunk

Dtype = Any

HEAD_WIDTHS = (2048, 1024, 256)


class KonCeptHead(nn.Module):
    """The ``fc`` Sequential: children ``0`` (Linear), ``2`` (BatchNorm1d), ``4``, ``6``, ``8``,
    ``10``, ``12`` (the final Linear); ReLU / Dropout carry no parameters.
    ``x``: ``[B, 1536]``; returns ``[B, num_outputs]`` float32."""

    widths: tuple[int, ...] = HEAD_WIDTHS
    num_outputs: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        for i, w in enumerate(self.widths):
            x = nn.Dense(w, dtype=self.dtype, name=str(4 * i))(x)
            x = nn.relu(x)
            # torch BatchNorm1d: eps 1e-5; momentum only matters in training
            x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype,
                             name=str(4 * i + 2))(x)
        return nn.Dense(self.num_outputs, dtype=jnp.float32,
                        name=str(4 * len(self.widths)))(x.astype(jnp.float32))


class KonCept512(nn.Module):
    """KonCept512 on ``x01: [B, 384, 512, 3]`` float32 in [0, 1] (RGB, NHWC).

    Normalisation ``(x01 - 0.5) / 0.5`` happens inside. Returns the predicted MOS ``[B, 1]``
    float32 (KonIQ scale, about 0..100; Pixel Privacy 2020 counts > 50 as "good quality").

    Attributes:
      pool: the backbone's last pooling, ``"cadene"`` (``AvgPool2d(8)`` of ``pretrainedmodels``:
        at 384x512 the mean of the top-left 8x8 of the 10x14 map) or ``"global"``
        (``AdaptiveAvgPool2d(1)``). See :func:`ppjax.models.inception_resnet_v2.avgpool_1a`.
      dtype: compute dtype (parameters stay float32).
    """

    pool: str = "cadene"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x01, *, capture: bool = False):
        x = (x01.astype(jnp.float32) - 0.5) / 0.5
        h, feats = InceptionResNetV2Trunk(INDEX_CHILDREN, self.pool, self.dtype, name="base")(
            x.astype(self.dtype), capture=True)
        score = KonCeptHead(dtype=self.dtype, name="fc")(h.astype(self.dtype))
        return (score, feats) if capture else score
