"""The oneDNN ops, called from compiled programs through the XLA FFI.

* :func:`conv2d` is a ``jax.custom_vjp`` whose forward and input gradient are the extension's
  two convolution primitives (all an attack needs); the kernel gradient falls back to XLA (and
  vanishes from the program when unused).
* :func:`max_pool` is oneDNN's max pooling, forward with its argmax workspace and the gradient
  that routes through it.
* :func:`weight_cache_stats` reports the extension's reordered-weight cache.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.accel.onednn.cpu import capabilities, require_native
from ppjax.accel.onednn.extension import POOL_BWD, POOL_FWD, TARGET, OneDnnUnavailable, load, out_hw


def _call(mode: int, a, kernel, out_shape, out_dtype, strides, padding, groups):
    load()
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, out_dtype),
                            vmap_method="sequential")(
        a, kernel, mode=np.int64(mode), sh=np.int64(strides[0]), sw=np.int64(strides[1]),
        pt=np.int64(padding[0][0]), pb=np.int64(padding[0][1]),
        pl=np.int64(padding[1][0]), pr=np.int64(padding[1][1]), groups=np.int64(groups))


def _xla_conv(x, kernel, strides, padding, groups):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x, kernel, strides, padding, groups, out_dtype):
    n, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    oh, ow = out_hw(h, w, kh, kw, strides, padding)
    return _call(0, x, kernel, (n, oh, ow, o), out_dtype, strides, padding, groups)


def _conv_fwd(x, kernel, strides, padding, groups, out_dtype):
    return _conv(x, kernel, strides, padding, groups, out_dtype), (x, kernel)


def _conv_bwd(strides, padding, groups, out_dtype, res, dy):
    x, kernel = res
    dx = _call(1, dy.astype(x.dtype), kernel, x.shape, x.dtype, strides, padding, groups)
    # The kernel's gradient (never needed by an attack) through XLA; unused -> removed by DCE.
    _, pull = jax.vjp(lambda k: _xla_conv(x, k, strides, padding, groups), kernel)
    return dx, pull(dy.astype(x.dtype))[0]


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int] = (1, 1),
           padding: Sequence[tuple[int, int]] | str = ((0, 0), (0, 0)),
           groups: int = 1, out_dtype=None) -> jnp.ndarray:
    """``lax.conv_general_dilated(x, kernel, strides, padding, ("NHWC", "HWIO", "NHWC"),
    feature_group_count=groups)`` through oneDNN, differentiable in ``x`` (oneDNN) and
    ``kernel`` (XLA). ``x`` and ``kernel`` must share a dtype, float32 or bfloat16;
    ``out_dtype`` (default: that dtype) may be float32 for bfloat16 operands: the f32
    accumulator is written out unrounded, so the elementwise work after the convolution runs in
    float32 (XLA's CPU elementwise code is faster there than in bfloat16: benchmarks/RESULTS.md)."""
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv2d expects x [N,H,W,C] and kernel [KH,KW,C/G,O], got {x.shape} "
                         f"and {kernel.shape}")
    if x.dtype != kernel.dtype or x.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"conv2d: x and kernel must both be float32 or both bfloat16, got "
                         f"{x.dtype} and {kernel.dtype}")
    if kernel.shape[2] * groups != x.shape[3] or kernel.shape[3] % groups:
        raise ValueError(f"conv2d: kernel {kernel.shape} does not fit {x.shape[3]} input "
                         f"channels in {groups} group(s)")
    strides = tuple(int(s) for s in strides)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(x.shape[1:3], kernel.shape[:2], strides, padding)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if min(min(p) for p in padding) < 0:
        raise ValueError(f"conv2d: negative padding {padding} is not supported")
    if x.dtype == jnp.bfloat16:
        require_native(jnp.bfloat16)  # at trace time: a clear error instead of an XLA failure
    out_dtype = jnp.dtype(x.dtype if out_dtype is None else out_dtype)
    if out_dtype not in (x.dtype, jnp.float32):
        raise ValueError(f"conv2d: out_dtype must be {x.dtype} or float32, got {out_dtype}")
    return _conv(x, kernel, strides, padding, int(groups), out_dtype)


@functools.cache
def _pool_ws_bytes(x_shape, out_size, window, strides, padding, bf16: bool) -> int:
    geo = (ctypes.c_int64 * 14)(*x_shape, *out_size, *window, *strides, *padding[0], *padding[1])
    n = int(load().ppjax_onednn_maxpool_ws_bytes(ctypes.c_int(int(bf16)), geo))
    if n < 0:
        raise OneDnnUnavailable(f"oneDNN has no max-pooling kernel for {x_shape} {window}")
    return max(n, 1)


def _pool_attrs(window, strides, padding):
    return dict(kh=np.int64(window[0]), kw=np.int64(window[1]), sh=np.int64(strides[0]),
                sw=np.int64(strides[1]), pt=np.int64(padding[0][0]), pb=np.int64(padding[0][1]),
                pl=np.int64(padding[1][0]), pr=np.int64(padding[1][1]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, padding):
    return _max_pool_fwd(x, window, strides, padding)[0]


def _max_pool_fwd(x, window, strides, padding):
    n, h, w, c = x.shape
    oh, ow = out_hw(h, w, *window, strides, padding)
    ws = _pool_ws_bytes(x.shape, (oh, ow), window, strides, padding, x.dtype == jnp.bfloat16)
    y, work = jax.ffi.ffi_call(
        POOL_FWD, (jax.ShapeDtypeStruct((n, oh, ow, c), x.dtype),
                   jax.ShapeDtypeStruct((ws,), jnp.uint8)), vmap_method="sequential")(
        x, **_pool_attrs(window, strides, padding))
    return y, (work, x.shape)


def _max_pool_bwd(window, strides, padding, res, dy):
    work, x_shape = res
    dx = jax.ffi.ffi_call(POOL_BWD, jax.ShapeDtypeStruct(x_shape, dy.dtype),
                          vmap_method="sequential")(dy, work, **_pool_attrs(window, strides,
                                                                           padding))
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x, window, strides, padding):
    """``ppjax.models.pooling.max_pool`` through oneDNN's max pooling (forward with its argmax
    workspace, and the gradient that routes through it), float32 or bfloat16 NHWC. Models inside
    :func:`~ppjax.accel.onednn.judge.accelerate` use it automatically."""
    if x.dtype not in (jnp.float32, jnp.bfloat16) or x.ndim != 4:
        raise ValueError(f"onednn.max_pool: float32/bfloat16 NHWC only, got {x.dtype} {x.shape}")
    load()
    args = (tuple(window), tuple(strides), tuple(tuple(p) for p in padding))
    if x.dtype == jnp.bfloat16 and not capabilities().native(jnp.bfloat16):
        # no bf16 pooling kernel without AVX512_BF16/AMX: pool in f32 (exact: max and casts are)
        return _max_pool(x.astype(jnp.float32), *args).astype(jnp.bfloat16)
    return _max_pool(x, *args)


def weight_cache_stats(reset: bool = False) -> dict:
    """The extension's reordered-weight cache: ``hits``, ``misses`` (reorders done) and
    ``bytes`` held. Weights are reordered into the kernel's blocked layout once and reused while
    their contents are unchanged (a fingerprint of the contents is checked at every call);
    ``$PPJAX_ONEDNN_WEIGHT_CACHE_MB`` bounds it (default 2048, 0 turns it off). ``reset``
    empties it."""
    lib = load()
    vals = [ctypes.c_uint64() for _ in range(3)]
    lib.ppjax_onednn_weight_cache(*(ctypes.byref(v) for v in vals), ctypes.c_int(int(reset)))
    return dict(zip(("hits", "misses", "bytes"), (v.value for v in vals), strict=True))
