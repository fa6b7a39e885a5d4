"""MTCNN (Zhang et al., IEEE SPL 2016) as facenet-pytorch 2.6.0 defines it: P-Net, R-Net, O-Net.

The layers, their names and their order follow ``facenet_pytorch/models/mtcnn.py`` exactly, so the
converter's name map is one line per layer (``conv1``, ``prelu1``, ..., ``dense6_3``):

* PReLU has one slope per channel (torch ``nn.PReLU(C)``): param ``weight`` [C];
* max-pooling uses torch's ``ceil_mode=True`` (:func:`max_pool_ceil`);
* R-Net and O-Net flatten their last feature map after torch's ``permute(0, 3, 2, 1)``, i.e. in
  (W, H, C) order, so the dense kernels are the torch weights transposed, nothing else.

Every network takes ``x01`` [B, H, W, 3] float32 in [0, 1]; the original's normalisation
``(x*255 - 127.5) * 0.0078125`` (:func:`normalise`) runs inside. Heads are returned in NHWC /
[B, K] layout with the face probability already taken (softmax channel 1).

The pyramid of the cascade (``m = 12 / min_face``, scales ``m * 0.709^k`` while ``min(h, w) * s
>= 12``, each level resized to ``(int(h*s + 1), int(w*s + 1))`` by torch's ``interpolate(mode=
"area")``) is MTCNN's own preprocessing, so it lives here too: :func:`pyramid_scales`,
:func:`resize_area` (exact, differentiable, static shapes) and :func:`pnet_pyramid`.

:class:`MTCNN` holds the three networks (variables ``params/{pnet,rnet,onet}/...``); call one
network with ``MTCNN().apply(variables, x01, method="pnet" | "rnet" | "onet")``. Its
``__call__`` (what ``Judge.__call__`` runs) is the cascade's first stage as one score per image:
the highest P-Net face probability over every window of every pyramid scale, [B].
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ppjax.models import pooling

#: facenet-pytorch's defaults (``MTCNN(min_face_size=20, factor=0.709)``).
MIN_FACE = 20
FACTOR = 0.709
#: input sizes of R-Net and O-Net crops.
RNET_HW = 24
ONET_HW = 48


def normalise(x01: jnp.ndarray) -> jnp.ndarray:
    """facenet-pytorch's input normalisation of 0..255 pixels, from [0, 1]:
    ``(255 x - 127.5) * 0.0078125``."""
    return (x01 * 255.0 - 127.5) * 0.0078125


def max_pool_ceil(x: jnp.ndarray, k: int, s: int) -> jnp.ndarray:
    """torch ``MaxPool2d(k, s, ceil_mode=True)`` on NHWC: the last window may run past the edge
    (output ``ceil((n - k) / s) + 1``); the part outside is ignored (-inf padding). Through
    :func:`ppjax.models.pooling.max_pool` (its fast gradient on XLA, oneDNN's pooling inside
    an accelerated judge): XLA's own ``select_and_scatter`` gradient was most of R-Net's and
    O-Net's backward pass (``docs/faces.md``, speed)."""
    pads = []
    for n in x.shape[1:3]:
        out = -(-(n - k) // s) + 1
        pads.append((0, max((out - 1) * s + k - n, 0)))
    return pooling.max_pool(x, (k, k), (s, s), tuple(pads))


class PReLU(nn.Module):
    """torch ``nn.PReLU(C)``: ``max(x, 0) + weight * min(x, 0)`` with one slope per channel."""

    features: int

    @nn.compact
    def __call__(self, x):
        w = self.param("weight", nn.initializers.constant(0.25), (self.features,), jnp.float32)
        w = w.astype(x.dtype).reshape((1,) * (x.ndim - 1) + (self.features,))
        return jnp.where(x >= 0, x, w * x)


def _conv(name: str, features: int, k: int, dtype) -> nn.Conv:
    return nn.Conv(features, (k, k), padding="VALID", dtype=dtype, name=name)


def _flatten_torch(x: jnp.ndarray) -> jnp.ndarray:
    """NHWC -> [B, W*H*C] in the order of torch's ``x.permute(0, 3, 2, 1).view(B, -1)``."""
    return jnp.transpose(x, (0, 2, 1, 3)).reshape(x.shape[0], -1)


class NetOut(NamedTuple):
    """What each network returns (float32). ``prob``: the face probability (torch's softmax,
    channel 1); ``logit``: the face log-odds ``a_1 - a_0`` (``prob = sigmoid(logit)``; what a
    hinge should push on, since ``prob`` saturates); ``reg``: box offsets [..., 4];
    ``landmarks``: O-Net only, [B, 10] (5 x then 5 y, relative to the crop), else None."""

    prob: jnp.ndarray
    logit: jnp.ndarray
    reg: jnp.ndarray
    landmarks: jnp.ndarray | None = None


def _face(a: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(face probability, face log-odds) of the 2-way head ``a`` [..., 2]."""
    return jax.nn.softmax(a, axis=-1)[..., 1], a[..., 1] - a[..., 0]


class PNet(nn.Module):
    """P-Net, fully convolutional: ``x01`` [B, H, W, 3] -> :class:`NetOut` (prob, logit [B, h, w],
    reg [B, h, w, 4]) with ``h = ceil((H - 2) / 2) - 4`` (one 12x12 window per output, stride
    2)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = normalise(x01).astype(self.dtype)
        x = PReLU(10, name="prelu1")(_conv("conv1", 10, 3, self.dtype)(x))
        x = max_pool_ceil(x, 2, 2)
        x = PReLU(16, name="prelu2")(_conv("conv2", 16, 3, self.dtype)(x))
        x = PReLU(32, name="prelu3")(_conv("conv3", 32, 3, self.dtype)(x))
        a = _conv("conv4_1", 2, 1, self.dtype)(x).astype(jnp.float32)
        b = _conv("conv4_2", 4, 1, self.dtype)(x).astype(jnp.float32)
        return NetOut(*_face(a), b)


class RNet(nn.Module):
    """R-Net on 24x24 crops: ``x01`` [B, 24, 24, 3] -> :class:`NetOut` (prob, logit [B],
    reg [B, 4])."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = normalise(x01).astype(self.dtype)
        x = max_pool_ceil(PReLU(28, name="prelu1")(_conv("conv1", 28, 3, self.dtype)(x)), 3, 2)
        x = max_pool_ceil(PReLU(48, name="prelu2")(_conv("conv2", 48, 3, self.dtype)(x)), 3, 2)
        x = PReLU(64, name="prelu3")(_conv("conv3", 64, 2, self.dtype)(x))
        x = nn.Dense(128, dtype=self.dtype, name="dense4")(_flatten_torch(x))
        x = PReLU(128, name="prelu4")(x)
        a = nn.Dense(2, dtype=self.dtype, name="dense5_1")(x).astype(jnp.float32)
        b = nn.Dense(4, dtype=self.dtype, name="dense5_2")(x).astype(jnp.float32)
        return NetOut(*_face(a), b)


class ONet(nn.Module):
    """O-Net on 48x48 crops: ``x01`` [B, 48, 48, 3] -> :class:`NetOut` (prob, logit [B],
    reg [B, 4], landmarks [B, 10])."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = normalise(x01).astype(self.dtype)
        x = max_pool_ceil(PReLU(32, name="prelu1")(_conv("conv1", 32, 3, self.dtype)(x)), 3, 2)
        x = max_pool_ceil(PReLU(64, name="prelu2")(_conv("conv2", 64, 3, self.dtype)(x)), 3, 2)
        x = max_pool_ceil(PReLU(64, name="prelu3")(_conv("conv3", 64, 3, self.dtype)(x)), 2, 2)
        x = PReLU(128, name="prelu4")(_conv("conv4", 128, 2, self.dtype)(x))
        x = nn.Dense(256, dtype=self.dtype, name="dense5")(_flatten_torch(x))
        x = PReLU(256, name="prelu5")(x)
        a = nn.Dense(2, dtype=self.dtype, name="dense6_1")(x).astype(jnp.float32)
        b = nn.Dense(4, dtype=self.dtype, name="dense6_2")(x).astype(jnp.float32)
        c = nn.Dense(10, dtype=self.dtype, name="dense6_3")(x).astype(jnp.float32)
        return NetOut(*_face(a), b, c)


# ----------------------------------------------------------------------------- the pyramid


def pyramid_scales(h: int, w: int, min_face: int = MIN_FACE, factor: float = FACTOR
                   ) -> tuple[float, ...]:
    """facenet-pytorch's scales (python floats, computed in the same order)."""
    m = 12.0 / min_face
    minl = min(h, w) * m
    scale, out = m, []
    while minl >= 12:
        out.append(scale)
        scale *= factor
        minl *= factor
    return tuple(out)


def pyramid_sizes(h: int, w: int, min_face: int = MIN_FACE, factor: float = FACTOR
                  ) -> tuple[tuple[int, int], ...]:
    """(height, width) of each pyramid level: ``(int(h*s + 1), int(w*s + 1))``."""
    return tuple((int(h * s + 1), int(w * s + 1)) for s in pyramid_scales(h, w, min_face, factor))


@functools.lru_cache(maxsize=256)
def area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """torch adaptive average pooling along one axis (``interpolate(mode="area")``): output
    ``j`` averages inputs ``floor(j n_in / n_out) .. ceil((j+1) n_in / n_out) - 1``. Returns
    (indices [n_out, K] int32, weights [n_out, K] float32), K the longest window; padded taps
    have weight 0."""
    j = np.arange(n_out, dtype=np.int64)
    start = (j * n_in) // n_out
    end = -((-(j + 1) * n_in) // n_out)
    k = int((end - start).max())
    idx = start[:, None] + np.arange(k)[None, :]
    valid = idx < end[:, None]
    wts = np.where(valid, 1.0 / (end - start)[:, None], 0.0).astype(np.float32)
    return np.minimum(idx, n_in - 1).astype(np.int32), wts


@functools.lru_cache(maxsize=256)
def area_taps_transposed(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The transpose of :func:`area_taps`: for each input, the outputs whose windows hold it
    (indices [n_in, K'] int32, their weights [n_in, K'] float32; padded taps weigh 0)."""
    idx, wts = area_taps(n_in, n_out)
    j = np.repeat(np.arange(n_out), idx.shape[1])
    i, w = idx.reshape(-1), wts.reshape(-1)
    keep = w > 0
    j, i, w = j[keep], i[keep], w[keep]
    order = np.lexsort((j, i))
    j, i, w = j[order], i[order], w[order]
    counts = np.bincount(i, minlength=n_in)
    k = int(counts.max())
    slot = np.arange(len(i)) - np.repeat(np.cumsum(counts) - counts, counts)
    tidx = np.zeros((n_in, k), np.int32)
    twts = np.zeros((n_in, k), np.float32)
    tidx[i, slot], twts[i, slot] = j, w
    return tidx, twts


def _taps(x: jnp.ndarray, axis: int, idx: np.ndarray, wts: np.ndarray) -> jnp.ndarray:
    """``sum_t x[idx[:, t]] * wts[:, t]`` along ``axis``: one static gather per tap (K small),
    which XLA's CPU backend runs as fast copies; one fused gather of every tap at once was
    30x slower there."""
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    out = None
    for t in range(idx.shape[1]):
        term = jnp.take(x, jnp.asarray(idx[:, t]), axis=axis) * jnp.asarray(
            wts[:, t]).reshape(shape)
        out = term if out is None else out + term
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _area_axis(x: jnp.ndarray, axis: int, n_out: int) -> jnp.ndarray:
    return _taps(x, axis, *area_taps(x.shape[axis], n_out))


def _area_axis_fwd(x, axis, n_out):
    return _area_axis(x, axis, n_out), x.shape[axis]


def _area_axis_bwd(axis, n_out, n_in, g):
    # the transpose as gathers too (a scatter-add would be XLA's slow path again)
    return (_taps(g, axis, *area_taps_transposed(n_in, n_out)),)


_area_axis.defvjp(_area_axis_fwd, _area_axis_bwd)


def resize_area(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """torch ``interpolate(x, size=hw, mode="area")`` (= ``adaptive_avg_pool2d``) on NHWC
    ``x`` [B, H, W, C]: exact windows, separable (rows then columns), a static gather, so it is
    differentiable and its shapes are known at trace time. Cost O(H W) per call."""
    h, w = hw
    if x.shape[1] != h:
        x = _area_axis(x, 1, h)
    if x.shape[2] != w:
        x = _area_axis(x, 2, w)
    return x


# ----------------------------------------------------------------------------- the three nets


class MTCNN(nn.Module):
    """P-Net, R-Net and O-Net under one set of variables (``params/pnet``, ``params/rnet``,
    ``params/onet``). ``min_face`` and ``factor`` set the pyramid of :meth:`__call__`."""

    dtype: Any = jnp.float32
    min_face: int = MIN_FACE
    factor: float = FACTOR

    def setup(self):
        self.p = PNet(dtype=self.dtype, name="pnet")
        self.r = RNet(dtype=self.dtype, name="rnet")
        self.o = ONet(dtype=self.dtype, name="onet")

    def pnet(self, x01) -> NetOut:
        """P-Net on ``x01`` [B, H, W, 3]: prob, logit [B, h, w], reg [B, h, w, 4]."""
        return self.p(x01)

    def rnet(self, x01) -> NetOut:
        """R-Net on crops [B, 24, 24, 3]: prob, logit [B], reg [B, 4]."""
        return self.r(x01)

    def onet(self, x01) -> NetOut:
        """O-Net on crops [B, 48, 48, 3]: prob, logit [B], reg [B, 4], landmarks [B, 10]."""
        return self.o(x01)

    def pyramid(self, x01) -> list[NetOut]:
        """P-Net at every scale of facenet-pytorch's pyramid of ``x01`` [B, H, W, 3], one
        :class:`NetOut` per scale of :func:`pyramid_scales` (``h, w, min_face, factor``)."""
        h, w = x01.shape[1:3]
        return [self.p(resize_area(x01, hw))
                for hw in pyramid_sizes(h, w, self.min_face, self.factor)]

    def __call__(self, x01):
        """The highest P-Net face probability over every window of every scale, [B] (0 when the
        image is too small for one window). At init, R-Net and O-Net are initialised too."""
        if self.is_initializing():
            self.r(jnp.zeros((1, RNET_HW, RNET_HW, 3), jnp.float32))
            self.o(jnp.zeros((1, ONET_HW, ONET_HW, 3), jnp.float32))
        best = jnp.zeros(x01.shape[0], jnp.float32)
        for level in self.pyramid(x01):
            best = jnp.maximum(best, jnp.max(level.prob.reshape(x01.shape[0], -1), axis=-1))
        return best


def min_image_side(min_face: int = MIN_FACE) -> int:
    """The smallest image side with at least one pyramid level (``min(h, w) * 12 / min_face >=
    12``)."""
    return int(math.ceil(min_face))
