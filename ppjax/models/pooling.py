"""Max pooling with a fast gradient on CPU.

``nn.max_pool``'s gradient is XLA's ``select_and_scatter``, which the CPU backend emits as a
scalar loop, slower on ResNet-50's stem than the convolutions of a whole stage
(benchmarks/RESULTS.md, the CPU levers). :func:`max_pool` computes the same
forward pass (an exact max) and routes the gradient with one strided slice, one compare and one
interior-padded add per window offset, all elementwise work that XLA fuses and vectorises.

Ties go to the first maximum in row-major window order, as in PyTorch's ``MaxPool2d`` (and
XLA's ``select_and_scatter`` with ``ge``); padding never wins (it is ``-inf``).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp


def _pad_value(dtype):
    return jnp.array(-jnp.inf, dtype)


def _offsets(window):
    return [(i, j) for i in range(window[0]) for j in range(window[1])]


def _window_slice(xp, i, j, out_hw, strides):
    n, _, _, c = xp.shape
    return jax.lax.slice(
        xp, (0, i, j, 0),
        (n, i + (out_hw[0] - 1) * strides[0] + 1, j + (out_hw[1] - 1) * strides[1] + 1, c),
        (1, strides[0], strides[1], 1))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return jax.lax.reduce_window(
        x, _pad_value(x.dtype), jax.lax.max, (1, *window, 1), (1, *strides, 1),
        ((0, 0), *padding, (0, 0)))


def _max_pool_fwd(x, window, strides, padding):
    y = _max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_bwd(window, strides, padding, res, dy):
    x, y = res
    n, h, w, c = x.shape
    (sh, sw), (oh, ow) = strides, y.shape[1:3]
    hp, wp = h + padding[0][0] + padding[0][1], w + padding[1][0] + padding[1][1]
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=_pad_value(x.dtype))
    g32 = dy.astype(jnp.float32)
    zero = jnp.zeros((), jnp.float32)
    kh, kw = (window[0] - 1) // sh, (window[1] - 1) // sw
    # Window offset (i, j) sends its share to padded input (s*o + i): parity plane (i % s),
    # row o + i // s. Planes are summed at output resolution, then interleaved.
    planes = [[None] * sw for _ in range(sh)]
    taken = jnp.zeros(y.shape, bool)
    for i, j in _offsets(window):
        hit = (_window_slice(xp, i, j, (oh, ow), strides) == y) & ~taken
        taken = taken | hit
        a, b = i // sh, j // sw
        g = jnp.pad(jnp.where(hit, g32, zero), ((0, 0), (a, kh - a), (b, kw - b), (0, 0)))
        p, q = i % sh, j % sw
        planes[p][q] = g if planes[p][q] is None else planes[p][q] + g
    shape = (n, oh + kh, ow + kw, c)
    rows = [jnp.stack([pl if pl is not None else jnp.zeros(shape, jnp.float32) for pl in row],
                      axis=3) for row in planes]
    dxp = jnp.stack(rows, axis=2).reshape(n, (oh + kh) * sh, (ow + kw) * sw, c)
    # rows/cols past the last window get nothing; the interleave may also overshoot
    dxp = dxp[:, :hp, :wp, :]
    dxp = jnp.pad(dxp, ((0, 0), (0, hp - dxp.shape[1]), (0, wp - dxp.shape[2]), (0, 0)))
    dx = dxp[:, padding[0][0]:padding[0][0] + h, padding[1][0]:padding[1][0] + w, :]
    return (dx.astype(dy.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# An alternative max-pooling implementation for the models traced inside ``pooling_impl``
# (``ppjax.accel.onednn.accelerate`` puts oneDNN's there): same signature as the private op below.
_IMPL: contextvars.ContextVar = contextvars.ContextVar("ppjax_max_pool_impl", default=None)


@contextlib.contextmanager
def pooling_impl(impl):
    """Within this context, :func:`max_pool` calls ``impl(x, window, strides, padding)``."""
    token = _IMPL.set(impl)
    try:
        yield
    finally:
        _IMPL.reset(token)


def max_pool(x: jnp.ndarray, window=(3, 3), strides=(2, 2),
             padding: str | tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))):
    """2-D max pooling over NHWC ``x`` (``nn.max_pool`` semantics, ``-inf`` padding) with the
    fast gradient described in the module docstring."""
    window, strides = tuple(int(v) for v in window), tuple(int(v) for v in strides)
    if isinstance(padding, str):
        if padding.upper() != "VALID":
            padding = tuple(jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding))
        else:
            padding = ((0, 0), (0, 0))
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    impl = _IMPL.get()
    if impl is not None and x.dtype in (jnp.float32, jnp.bfloat16):
        return impl(x, window, strides, padding)
    if x.dtype == jnp.bfloat16 or x.dtype == jnp.float16:
        # exact either way (max and the casts are exact); XLA's CPU elementwise code is faster
        # in float32 than in the 16-bit types
        return _max_pool(x.astype(jnp.float32), window, strides, padding).astype(x.dtype)
    return _max_pool(x, window, strides, padding)


def avg_pool(x: jnp.ndarray, window=(3, 3), strides=(1, 1),
             padding: tuple[tuple[int, int], tuple[int, int]] = ((1, 1), (1, 1)),
             count_include_pad: bool = True) -> jnp.ndarray:
    """2-D average pooling over NHWC ``x`` (``nn.avg_pool`` semantics) as a sum of one strided
    slice per window offset: elementwise work that XLA fuses, forward and backward, where
    ``nn.avg_pool`` is a ``reduce_window`` (a scalar loop on XLA's CPU backend). Sums run in
    float32; ``count_include_pad=False`` divides by the in-image window size, as torch does."""
    import numpy as np

    window, strides = tuple(int(v) for v in window), tuple(int(v) for v in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    n, h, w, c = x.shape
    oh = (h + padding[0][0] + padding[0][1] - window[0]) // strides[0] + 1
    ow = (w + padding[1][0] + padding[1][1] - window[1]) // strides[1] + 1
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), *padding, (0, 0)))
    total = functools.reduce(jnp.add, (_window_slice(xp, i, j, (oh, ow), strides)
                                       for i, j in _offsets(window)))
    if count_include_pad:
        return (total / float(window[0] * window[1])).astype(x.dtype)

    def counts(size, lo, hi, k, s, out):  # in-image taps per output position, one axis
        inside = np.pad(np.ones(size), (lo, hi))
        return np.array([inside[o * s:o * s + k].sum() for o in range(out)], np.float32)

    count = np.outer(counts(h, *padding[0], window[0], strides[0], oh),
                     counts(w, *padding[1], window[1], strides[1], ow))
    return (total / jnp.asarray(count)[None, :, :, None]).astype(x.dtype)
