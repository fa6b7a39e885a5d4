"""ResNet with torchvision semantics (the 2019 judge: ResNet-50 trained on Places365), and the
ResNet-18 variants of the Places365 zoo (torchvision ResNet-18; CSAIL's own ``wideresnet.py``).

torchvision details that matter for parity:
  * the bottleneck's stride sits on its 3x3 conv (``conv2``), not the first 1x1;
  * BatchNorm eps 1e-5 (flax's default is 1e-5 too, torch momentum is irrelevant in eval);
  * stem: 7x7/2 conv with padding 3, then a 3x3/2 max-pool with padding 1 (pads with -inf);
  * the downsample branch is ``Sequential(conv1x1, bn)`` named ``downsample.0`` / ``downsample.1``.
Module names mirror torch module paths (``layer1/0/conv1``), so the converter is a plain name map.

CSAIL's ``wideresnet.py`` (``wideresnet18_places365``) is the same network without the stem
max-pool (so every feature map is twice as wide: 14x14 at the end for 224x224 input, which is
what its class activation maps need), ending in ``nn.AvgPool2d(14)``. That pool's stride is its
kernel size, so at the task's 256x256 (16x16 final map) it averages the top-left 14x14 window
only: ``pool="window14"`` reproduces it exactly. (The repository's demo swaps in stride 1, which
only works at 224x224: at 256x256 it gives 3x3 outputs that the 512-input ``fc`` rejects.)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppjax.models.pooling import max_pool

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Dtype = Any


def normalize(x01: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
    """``(x - mean) / std`` per channel; ``x01``: [B, H, W, 3] in [0, 1]."""
    mean = jnp.asarray(mean, x01.dtype).reshape((1,) * (x01.ndim - 1) + (-1,))
    std = jnp.asarray(std, x01.dtype).reshape((1,) * (x01.ndim - 1) + (-1,))
    return (x01 - mean) / std


def _conv(features, kernel, stride, padding, dtype, name):
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        use_bias=False,
        dtype=dtype,
        name=name,
    )


def _bn(dtype, name):
    return nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=dtype, name=name)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_gradient(x: jnp.ndarray, gamma: float) -> jnp.ndarray:
    """Identity forward; the gradient flowing back through it is multiplied by ``gamma`` (SGM's
    skip-gradient decay on a residual branch; :func:`ppjax.attacks.boosters.skip_gradient`)."""
    return x


def _sg_fwd(x, gamma):
    return x, None


def _sg_bwd(gamma, _, g):
    return (g * jnp.asarray(gamma, g.dtype),)


scale_gradient.defvjp(_sg_fwd, _sg_bwd)


def _residual(out, gamma: float):
    # SGM (Wu et al., ICLR 2020): d(out + identity)/dx = gamma * d(out)/dx + d(identity)/dx
    return out if gamma == 1.0 else scale_gradient(out, gamma)


class Downsample(nn.Module):
    """torch ``Sequential(conv1x1(stride), BatchNorm2d)``: children named ``0`` and ``1``."""

    features: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(self.features, 1, self.stride, 0, self.dtype, "0")(x)
        return _bn(self.dtype, "1")(x)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    expansion: int = 4
    sgm_gamma: float = 1.0

    @nn.compact
    def __call__(self, x):
        identity = x
        out = nn.relu(_bn(self.dtype, "bn1")(_conv(self.planes, 1, 1, 0, self.dtype, "conv1")(x)))
        out = _conv(self.planes, 3, self.stride, 1, self.dtype, "conv2")(out)
        out = nn.relu(_bn(self.dtype, "bn2")(out))
        out = _conv(self.planes * self.expansion, 1, 1, 0, self.dtype, "conv3")(out)
        out = _residual(_bn(self.dtype, "bn3")(out), self.sgm_gamma)
        if self.downsample:
            identity = Downsample(self.planes * self.expansion, self.stride, self.dtype,
                                  name="downsample")(x)
        return nn.relu(out + identity)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Dtype = jnp.float32
    expansion: int = 1
    sgm_gamma: float = 1.0

    @nn.compact
    def __call__(self, x):
        identity = x
        out = nn.relu(_bn(self.dtype, "bn1")(_conv(self.planes, 3, self.stride, 1, self.dtype,
                                                   "conv1")(x)))
        out = _bn(self.dtype, "bn2")(_conv(self.planes, 3, 1, 1, self.dtype, "conv2")(out))
        out = _residual(out, self.sgm_gamma)
        if self.downsample:
            identity = Downsample(self.planes, self.stride, self.dtype, name="downsample")(x)
        return nn.relu(out + identity)


class _Layer(nn.Module):
    """torch ``Sequential`` of blocks named ``0``, ``1``, ..."""

    block_cls: Any
    planes: int
    blocks: int
    stride: int
    in_planes: int
    dtype: Dtype = jnp.float32
    sgm_gamma: float = 1.0

    @nn.compact
    def __call__(self, x):
        exp = self.block_cls.expansion
        needs_ds = self.stride != 1 or self.in_planes != self.planes * exp
        for i in range(self.blocks):
            x = self.block_cls(
                self.planes,
                stride=self.stride if i == 0 else 1,
                downsample=needs_ds and i == 0,
                dtype=self.dtype,
                sgm_gamma=self.sgm_gamma,
                name=str(i),
            )(x)
        return x


def max_pool_torch(x: jnp.ndarray) -> jnp.ndarray:
    """``nn.MaxPool2d(3, 2, padding=1)``: padding never wins the max (flax pads with -inf)."""
    return max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class ResNet(nn.Module):
    """torchvision ResNet on NHWC input in [0, 1]; normalisation happens inside.

    Attributes:
      stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
      num_classes: 365 for Places365.
      dtype: compute dtype (params stay float32); bf16 gives the fast CPU/GPU path.
      sgm_gamma: 1.0, or SGM's decay of the gradient through every residual branch (forward
        unchanged; :func:`ppjax.attacks.boosters.skip_gradient`).
    Returns logits ``[B, num_classes]`` in float32.
    """

    stage_sizes: Sequence[int]
    block_cls: Any = Bottleneck
    num_classes: int = 365
    stem_pool: bool = True  # False: CSAIL wideresnet.py (no max-pool after the stem)
    pool: str = "global"  # "global" (AdaptiveAvgPool2d(1)) | "window14" (AvgPool2d(14), stride 14)
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    dtype: Dtype = jnp.float32
    sgm_gamma: float = 1.0

    @nn.compact
    def __call__(self, x01, *, capture: bool = False):
        feats = {}
        x = normalize(x01.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        x = _conv(64, 7, 2, 3, self.dtype, "conv1")(x)
        x = nn.relu(_bn(self.dtype, "bn1")(x))
        if self.stem_pool:
            x = max_pool_torch(x)
        feats["stem"] = x
        in_planes = 64
        for i, blocks in enumerate(self.stage_sizes):
            planes = 64 * 2**i
            x = _Layer(self.block_cls, planes, blocks, 1 if i == 0 else 2, in_planes, self.dtype,
                       self.sgm_gamma, name=f"layer{i + 1}")(x)
            in_planes = planes * self.block_cls.expansion
            feats[f"layer{i + 1}"] = x
        x = x.astype(jnp.float32)
        if self.pool == "window14":
            if min(x.shape[1:3]) < 14:
                raise ValueError(f"AvgPool2d(14) needs a final map of at least 14x14, got "
                                 f"{x.shape[1]}x{x.shape[2]} (input too small)")
            # torch AvgPool2d(14) (stride 14, no padding); the fc takes one window, as in
            # wideresnet.py's x.view(B, -1), so the output must be 1x1
            if (x.shape[1] - 14) // 14 + 1 != 1 or (x.shape[2] - 14) // 14 + 1 != 1:
                raise ValueError(f"AvgPool2d(14) of a {x.shape[1]}x{x.shape[2]} map has more "
                                 "than one window; the 512-input fc cannot take it")
            x = jnp.mean(x[:, :14, :14, :], axis=(1, 2))
        elif self.pool == "global":
            x = jnp.mean(x, axis=(1, 2))
        else:
            raise ValueError(f"unknown pool {self.pool!r}")
        feats["pool"] = x
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x)
        if capture:
            return logits, feats
        return logits


ResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet50 = partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=Bottleneck)
# CSAIL wideresnet.py resnet18: no stem max-pool, AvgPool2d(14)
WideResNet18 = partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock, stem_pool=False,
                       pool="window14")
