"""Fold inference-mode BatchNorm into the preceding convolution (inference-only judges).

A judge in eval mode computes ``bn(conv(x)) = (conv(x) - mean) * s + beta`` with
``s = gamma / sqrt(var + eps)`` per output channel. That equals ``conv'(x) + b'`` with the kernel
scaled along its output axis, ``K' = K * s``, and ``b' = beta - mean * s`` (plus ``b * s`` when the
conv had its own bias). Folding removes one per-channel affine pass, forward and backward, per
conv; gradients with respect to the *input* (all an attack needs) are unchanged up to float
rounding.

The fold is generic over linen models: :func:`find_conv_bn_pairs` traces the model once
(``jax.eval_shape``, no FLOPs) with a method interceptor and pairs every ``nn.BatchNorm`` whose
input is *the very array* an ``nn.Conv`` (or a MobileNet ``DepthwiseConv``) just returned. The
folded judge runs the unchanged model under an interceptor that adds ``b'`` after each paired
conv and turns each paired BatchNorm into the identity, so no model file needs a ``fold_bn``
flag. Because a conv output could in principle also be read by something other than its
BatchNorm, :func:`fold_bn` checks the folded judge against the original on a random batch and
raises if they disagree.

    from ppjax.accel.fold import fold_bn
    fast = fold_bn(load_judge("resnet50_places365"))     # same outputs, fewer ops
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ppjax.accel.intercept import InterceptingModule, Interceptor, is_call
from ppjax.judges import Judge
from ppjax.models.mobilenet import DepthwiseConv

# Modules whose output is a bias-free linear map with the kernel's last axis as output channel.
_CONVS = (nn.Conv, DepthwiseConv)

Path = tuple[str, ...]
FOLDED = "folded"  # variable collection holding the folded biases, keyed by "conv/path"


def _key(path: Path) -> str:
    return "/".join(path)


def _get(tree: Mapping, path: Path):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Path, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _delete(tree: dict, path: Path) -> None:
    parents = []
    for p in path[:-1]:
        if p not in tree:
            return
        parents.append((tree, p))
        tree = tree[p]
    tree.pop(path[-1], None)
    for parent, p in reversed(parents):  # drop emptied sub-dicts
        if not parent[p]:
            del parent[p]


def _last(v: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """[C] -> [1, ..., 1, C] with ``ndim`` axes (explicit: the tests forbid rank promotion)."""
    return v.reshape((1,) * (ndim - 1) + v.shape)


def _to_dict(tree) -> dict:
    return {k: _to_dict(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


def find_conv_bn_pairs(module: nn.Module, variables, x_shape, **kwargs) -> tuple[tuple[Path, Path], ...]:
    """``(conv_path, bn_path)`` for every eval-mode ``nn.BatchNorm`` applied directly to the output of
    an ``nn.Conv`` (a conv called more than once is never folded).

    Args:
      module: the (unbound) linen model.
      variables: its variables (arrays or ``ShapeDtypeStruct``s).
      x_shape: an input shape, e.g. ``(1, 256, 256, 3)``.
    """
    return tuple(p for p, _ in _scan(module, variables, x_shape, **kwargs))


def _scan(module, variables, x_shape, **kwargs) -> list[tuple[tuple[Path, Path], float]]:
    """``((conv_path, bn_path), bn_epsilon)`` per foldable pair, from one abstract trace."""
    conv_out: dict[int, tuple[Path, Any]] = {}
    conv_calls: dict[Path, int] = {}
    pairs: list[tuple[tuple[Path, Path], float]] = []

    def record(next_fun, args, kw, context):
        mod = context.module
        out = next_fun(*args, **kw)
        if context.method_name != "__call__":
            return out
        if isinstance(mod, _CONVS):
            conv_calls[mod.path] = conv_calls.get(mod.path, 0) + 1
            conv_out[id(out)] = (mod.path, out)  # keeps `out` alive, so its id stays unique
        elif isinstance(mod, nn.BatchNorm) and args and id(args[0]) in conv_out:
            eval_mode = nn.merge_param("use_running_average", mod.use_running_average,
                                       kw.get("use_running_average"))
            if eval_mode and mod.axis in (-1, len(args[0].shape) - 1):
                pairs.append(((conv_out[id(args[0])][0], mod.path), float(mod.epsilon)))
        return out

    def run(v):
        with nn.intercept_methods(record):
            return module.apply(v, jnp.zeros(x_shape, jnp.float32), **kwargs)

    jax.eval_shape(run, variables)
    return [(p, eps) for p, eps in pairs if conv_calls[p[0]] == 1]


def fold_variables(variables, pairs, epsilons: Mapping[Path, float]) -> dict:
    """The variable tree with each pair folded: conv kernels scaled, BatchNorm variables removed,
    and the per-channel biases ``b'`` [C_out] in the conv's own ``bias`` when it has one, else in
    the ``"folded"`` collection (float32, keyed ``"conv/path"``)."""
    out = {k: _to_dict(v) for k, v in variables.items()}
    folded = {}
    for conv, bn in pairs:
        conv_p = _get(out["params"], conv)
        bn_p = _get(out["params"], bn)
        stats = _get(out["batch_stats"], bn)
        mean = jnp.asarray(stats["mean"], jnp.float32)
        s = jax.lax.rsqrt(jnp.asarray(stats["var"], jnp.float32) + epsilons[bn])
        if "scale" in bn_p:
            s = s * bn_p["scale"]
        bias = -mean * s
        if "bias" in bn_p:
            bias = bias + bn_p["bias"]
        kernel = conv_p["kernel"]
        scaled = kernel.astype(jnp.float32) * _last(s, kernel.ndim)
        conv_p = {**conv_p, "kernel": scaled.astype(kernel.dtype)}
        if "bias" in conv_p:  # the conv adds b' itself: its own bias passes through the affine
            conv_p["bias"] = (bias + conv_p["bias"] * s).astype(conv_p["bias"].dtype)
        else:
            folded[_key(conv)] = bias.astype(jnp.float32)
        _set(out["params"], conv, conv_p)
        _delete(out["params"], bn)
        _delete(out["batch_stats"], bn)
    out = {k: v for k, v in out.items() if v}
    out[FOLDED] = folded
    return out


@dataclasses.dataclass(frozen=True)
class FoldedModule(InterceptingModule):
    """Stands in for a linen module inside a :class:`~ppjax.judges.Judge`: ``apply`` runs ``inner``
    with the paired BatchNorms replaced by the identity and ``b'`` added after each paired conv
    (the biases are the ``"folded"`` collection of its variables)."""

    pairs: tuple[tuple[Path, Path], ...]

    def interceptor(self, variables) -> Interceptor:
        biases = variables[FOLDED]
        bns = {b for _, b in self.pairs}

        def folded(next_fun, a, kw, context):
            path = context.module.path
            if is_call(context, nn.BatchNorm) and path in bns:
                return a[0]
            if is_call(context, _CONVS) and _key(path) in biases:
                y = next_fun(*a, **kw)
                return y + _last(biases[_key(path)], y.ndim).astype(y.dtype)
            return next_fun(*a, **kw)

        return folded

    def inner_variables(self, variables):
        return {k: v for k, v in variables.items() if k != FOLDED}


def output_difference(ref: Judge, other: Judge, seed: int = 0) -> float:
    """Max |difference| of two judges' float32 outputs on one random image, relative to the
    reference's scale (at least 1): how rewrites of a judge (folding, oneDNN) check themselves."""
    h, w = ref.spec.input_hw
    x = jax.random.uniform(jax.random.key(seed), (1, h, w, 3), jnp.float32)
    run = jax.jit(lambda j, x: j(x))
    want = np.asarray(run(ref.with_dtype(jnp.float32), x), np.float64)
    got = np.asarray(run(other.with_dtype(jnp.float32), x), np.float64)
    return float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))


@functools.lru_cache(maxsize=16)
def _fold_program(pairs, epsilons: tuple):
    """One jitted program that folds ``pairs`` (instead of several eager ops per pair), shared
    by every judge with the same pairs: a judge loaded again is folded without compiling."""
    eps = dict(epsilons)
    return jax.jit(lambda v: fold_variables(v, pairs, eps))


def fold_bn(judge: Judge, check: bool = True, atol: float = 1e-3) -> Judge:
    """An equivalent judge with every conv -> eval-mode BatchNorm pair folded into the conv.

    Args:
      judge: any :class:`~ppjax.judges.Judge` whose module is a linen model.
      check: compare the folded judge with the original on one random image (float32) and raise
        ``ValueError`` if outputs differ by more than ``atol`` relative to their scale.
    Returns a judge with the same ``spec``, ``standin`` flag and compute dtype; a judge with no
    foldable pair comes back unchanged.
    """
    if isinstance(judge.module, FoldedModule):
        return judge
    h, w = judge.spec.input_hw
    scanned = _scan(judge.module, judge.variables, (1, h, w, 3))
    if not scanned:
        return judge
    pairs = tuple(p for p, _ in scanned)
    variables = _fold_program(pairs, tuple((p[1], e) for p, e in scanned))(judge.variables)
    folded = judge.replace(variables=variables, module=FoldedModule(judge.module, pairs))
    if check:
        err = output_difference(judge, folded)
        if not err <= atol:
            raise ValueError(
                f"folding BatchNorm changed {judge.spec.name!r}'s output (relative error {err:.3g}); "
                "a conv output is probably read by something besides its BatchNorm"
            )
    return folded
