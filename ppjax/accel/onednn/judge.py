"""Judges whose convolutions run through oneDNN: :func:`accelerate` wraps a
:class:`~ppjax.judges.Judge` so that every ``nn.Conv`` (and MobileNet ``DepthwiseConv``) in its
model runs through :func:`~ppjax.accel.onednn.ops.conv2d` and its max pooling through
:func:`~ppjax.accel.onednn.ops.max_pool` (a method interceptor: no model file changes),
optionally with BatchNorm folded first and a bf16 compute dtype."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppjax.accel.intercept import InterceptingModule, Interceptor, is_call, wrappers
from ppjax.accel.onednn.cpu import require_native
from ppjax.accel.onednn.extension import OneDnnUnavailable, why_unavailable
from ppjax.accel.onednn.ops import conv2d, max_pool
from ppjax.judges import Judge
from ppjax.judges.custom import needs_registered
from ppjax.models.mobilenet import DepthwiseConv
from ppjax.models.pooling import pooling_impl


def _tuple2(v, default: int = 1) -> tuple[int, int]:
    if v is None:
        return (default, default)
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _conv_padding(mod: nn.Conv, x_shape) -> tuple[tuple[int, int], ...] | None:
    """Explicit (lo, hi) pairs for the module's padding, or None when it is not plain zero
    padding (CIRCULAR, CAUSAL)."""
    pad = mod.padding
    if isinstance(pad, str):
        if pad.upper() not in ("SAME", "VALID"):
            return None
        return tuple(jax.lax.padtype_to_pads(x_shape[1:3], tuple(mod.kernel_size),
                                             _tuple2(mod.strides), pad.upper()))
    if isinstance(pad, int):
        return ((pad, pad), (pad, pad))
    pad = tuple(pad)
    out = tuple((p, p) if isinstance(p, int) else tuple(p) for p in pad)
    return out if len(out) == 2 else None


def _eligible(mod: nn.Conv, x) -> bool:
    return (
        x.ndim == 4 and len(tuple(mod.kernel_size)) == 2 and mod.mask is None
        and _tuple2(mod.input_dilation) == (1, 1) and _tuple2(mod.kernel_dilation) == (1, 1)
        and _conv_padding(mod, x.shape) is not None
    )


def _onednn_conv_call(mod: nn.Conv, x, out_dtype):
    """What ``nn.Conv.__call__`` computes, with the convolution through :func:`conv2d`."""
    kernel = mod.get_variable("params", "kernel")
    bias = mod.get_variable("params", "bias") if mod.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=mod.dtype)
    y = conv2d(x, kernel, _tuple2(mod.strides), _conv_padding(mod, x.shape),
               mod.feature_group_count, out_dtype=out_dtype)
    if bias is not None:
        y = y + bias.astype(y.dtype).reshape((1, 1, 1, -1))
    return y


def _onednn_depthwise_call(mod: DepthwiseConv, x, out_dtype):
    """What MobileNet's ``DepthwiseConv`` computes, as a oneDNN grouped convolution."""
    kernel = mod.get_variable("params", "kernel")
    x, kernel = x.astype(mod.dtype), kernel.astype(mod.dtype)
    return conv2d(x, kernel, (mod.strides, mod.strides), mod.padding, x.shape[-1],
                  out_dtype=out_dtype)


@dataclasses.dataclass(frozen=True)
class OneDnnModule(InterceptingModule):
    """Stands in for a linen module inside a :class:`~ppjax.judges.Judge`: ``apply`` runs
    ``inner`` with every eligible ``nn.Conv`` (2-D, no dilation, zero padding, float32/bf16)
    and every MobileNet ``DepthwiseConv`` computed by oneDNN, and max pooling through
    :func:`max_pool`.

    ``f32_activations``: with a bfloat16 compute dtype, convolutions still read bfloat16
    operands (AMX) but write their float32 accumulators, so biases, activations and residual
    sums between convolutions run in float32 ("bf16 compute, f32 bookkeeping"; whether that is
    faster depends on the judge: ``benchmarks/RESULTS.md``, the judge's ``spec.f32_activations``)."""

    f32_activations: bool = False

    def interceptor(self, variables) -> Interceptor:
        out = jnp.float32 if self.f32_activations else None

        def through_onednn(next_fun, a, kw, context):
            if a and not kw:
                if is_call(context, nn.Conv) and _eligible(context.module, a[0]):
                    return _onednn_conv_call(context.module, a[0], out)
                if is_call(context, DepthwiseConv) and a[0].ndim == 4:
                    return _onednn_depthwise_call(context.module, a[0], out)
            return next_fun(*a, **kw)

        return through_onednn

    def environment(self):
        return pooling_impl(max_pool)


def is_accelerated(judge: Judge) -> bool:
    """Whether ``judge``'s convolutions already run through oneDNN."""
    return any(isinstance(m, OneDnnModule) for m in wrappers(judge.module))


# (id(judge), settings, dtype) -> (judge, accelerated judge): repeated calls (one per batch in
# `ppjax protect`) reuse the folded (and cast) variables; the identity check guards against a
# recycled id.
_ACCELERATED: dict[tuple, tuple[Judge, Judge]] = {}


def accelerate(judge: Judge, *, dtype=None, fold: bool = True, check: bool = True,
               f32_activations: bool | None = None) -> Judge:
    """``judge`` with its convolutions through oneDNN (and BatchNorm folded when ``fold``).

    Args:
      judge: a loaded judge.
      dtype: compute dtype (``jnp.bfloat16`` reaches AMX); ``None`` keeps the judge's.
      fold: fold eval-mode BatchNorm into the convolutions first (:func:`ppjax.accel.fold.fold_bn`).
      check: compare one random image against the plain XLA judge in float32 and raise
        ``ValueError`` if the outputs differ beyond float rounding.
      f32_activations: see :class:`OneDnnModule`; ``None`` takes the judge's ``spec.f32_activations``.
    Raises :class:`OneDnnUnavailable` when the extension cannot be built here, or when
    ``dtype`` is bfloat16 and this CPU has no native bfloat16 kernels (the message names the
    missing feature; ``ppjax.attack(backend="auto")`` runs float32 instead).
    """
    needs_registered(judge.spec, "backend 'onednn'", "use backend='xla' (or 'auto')")
    reason = why_unavailable()
    if reason is not None:
        raise OneDnnUnavailable(reason)
    if dtype is not None and jnp.dtype(dtype) == jnp.bfloat16:
        require_native(dtype)
    from ppjax.accel.fold import FoldedModule, fold_bn, output_difference

    if f32_activations is None:
        f32_activations = bool(getattr(judge.spec, "f32_activations", False))
    if is_accelerated(judge):
        return judge if dtype is None else _with_dtype(judge, dtype)
    dt = None if dtype is None else jnp.dtype(dtype).name
    key = (id(judge), fold, check, f32_activations, dt)
    hit = _ACCELERATED.get(key)
    if hit is not None and hit[0] is judge:  # same judge object: no re-folding, checking, casting
        return hit[1]
    if dt is not None:  # the kernels cast once per judge and dtype, not per call
        out = _with_dtype(accelerate(judge, fold=fold, check=check,
                                     f32_activations=f32_activations), dtype)
        _remember(key, judge, out)
        return out
    base = judge
    if fold:
        judge = fold_bn(judge, check=check)
    if isinstance(judge.module, FoldedModule):
        # oneDNN innermost: flax runs the interceptor installed first outermost, and the fold's
        # interceptor must see (and add its bias to) the convolution's result.
        module = FoldedModule(OneDnnModule(judge.module.inner, f32_activations),
                              judge.module.pairs)
    else:
        module = OneDnnModule(judge.module, f32_activations)
    fast = judge.replace(module=module)
    if check:
        err = output_difference(base, fast, seed=1)
        if not err <= 1e-3:
            raise ValueError(f"oneDNN convolutions changed {judge.spec.name!r}'s output "
                             f"(relative error {err:.3g})")
    _remember(key, base, fast)
    return fast


def _remember(key: tuple, judge: Judge, out: Judge) -> None:
    if len(_ACCELERATED) >= 16:
        _ACCELERATED.pop(next(iter(_ACCELERATED)))
    _ACCELERATED[key] = (judge, out)


def _with_dtype(judge: Judge, dtype) -> Judge:
    """``judge.with_dtype(dtype)`` with the convolution kernels stored in ``dtype`` already:
    the model would cast them at every call (55M parameters per KonCept512 iteration), and a
    kernel that is a program argument keeps one buffer, so its reordered copy stays cached."""
    judge = judge.with_dtype(dtype)
    if jnp.dtype(dtype) == jnp.float32:
        return judge

    def cast(path, leaf):
        is_kernel = getattr(path[-1], "key", None) == "kernel" and getattr(leaf, "ndim", 0) == 4
        return leaf.astype(dtype) if is_kernel and leaf.dtype == jnp.float32 else leaf

    params = jax.tree_util.tree_map_with_path(cast, judge.variables["params"])
    return judge.replace(variables={**judge.variables, "params": params})
