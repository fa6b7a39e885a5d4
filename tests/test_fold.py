"""BatchNorm folding: the folded judge computes what the original computes (outputs and input
gradients), and pairs that cannot be folded are left alone or refused."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppjax.accel.fold import FOLDED, FoldedModule, find_conv_bn_pairs, fold_bn
from ppjax.judges import Judge, get_spec


def _grad_and_out(judge, x):
    def loss(x):
        return jnp.sum(jax.nn.log_softmax(judge(x))[:, 0])

    return jax.jit(lambda x: (judge(x), jax.grad(loss)(x)))(x)


def test_resnet50_folded_matches_original(resnet_uncalibrated, photos_256):
    resnet_standin = resnet_uncalibrated  # engine parity: see the fixture
    folded = fold_bn(resnet_standin, check=False)
    assert isinstance(folded.module, FoldedModule)
    # every conv of ResNet-50 is followed by its BatchNorm: stem + 16 blocks x 3 + 4 downsamples
    assert len(folded.module.pairs) == 53
    assert "batch_stats" not in folded.variables
    assert folded.module.num_classes == 365 and folded.standin
    x = jnp.asarray(photos_256[:1])
    out0, g0 = _grad_and_out(resnet_standin, x)
    out1, g1 = _grad_and_out(folded, x)
    np.testing.assert_allclose(out1, out0, rtol=0, atol=1e-4 * float(jnp.max(jnp.abs(out0))))
    # The random stand-in ResNet-50 is chaotic: f32 rounding alone moves its input gradient by
    # ~0.3% (measured against float64), and a 1e-7 relative change of the folded kernels by
    # ~0.6%. Exactness of the gradient is checked on the small model below.
    rel = float(jnp.linalg.norm(g1 - g0) / jnp.linalg.norm(g0))
    assert rel < 2e-2, rel
    # compute dtype still switchable (bf16 path of the attacks)
    assert folded.with_dtype(jnp.bfloat16).module.inner.dtype == jnp.bfloat16


class _Tiny(nn.Module):
    """Depthwise conv, conv with its own bias, BN without scale, a conv without BN, and a conv
    whose output is also read outside its BN (when ``leak``)."""

    leak: bool = False
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        y = nn.Conv(8, (3, 3), use_bias=True, name="c1")(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, use_scale=False, name="b1")(y))
        y = nn.Conv(8, (3, 3), feature_group_count=8, use_bias=False, name="dw")(y)
        y = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="b2")(y)
        z = nn.Conv(4, (1, 1), name="c3")(y)
        t = nn.relu(z)  # a conv without BatchNorm: left alone
        c4 = nn.Conv(4, (1, 1), name="c4")(t)
        out = nn.BatchNorm(use_running_average=True, name="b4")(c4)
        if self.leak:
            out = out + c4
        return jnp.mean(out, axis=(1, 2))


def _tiny_judge(leak: bool) -> Judge:
    module = _Tiny(leak=leak)
    x = jnp.zeros((1, 8, 8, 3))
    v = module.init(jax.random.key(0), x)
    rng = np.random.default_rng(1)  # non-trivial statistics, so a wrong fold would show
    v = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.asarray(rng.uniform(0.5, 2.0, a.shape) if "var" in str(p) or
                                 "scale" in str(p) else rng.normal(0, 1, a.shape), a.dtype), v)
    spec = dataclasses.replace(get_spec("resnet50_places365"), name="tiny", input_hw=(8, 8),
                               output="score")
    return Judge(v, module, spec)


def _reference(judge: Judge, x) -> np.ndarray:
    return np.asarray(_reference_jnp(judge, x))


def _reference_jnp(judge: Judge, x) -> jnp.ndarray:
    """Independent formula: BatchNorm with running statistics written out by hand."""
    v = judge.variables

    def conv(name, y, groups=1):
        p = v["params"][name]
        out = jax.lax.conv_general_dilated(y, p["kernel"], (1, 1), "SAME",
                                           dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=groups)
        return out + p["bias"] if "bias" in p else out

    def bn(name, y, eps=1e-5):
        p, s = v["params"][name], v["batch_stats"][name]
        y = (y - s["mean"]) / jnp.sqrt(s["var"] + eps)
        return y * p.get("scale", 1.0) + p["bias"]

    y = jax.nn.relu(bn("b1", conv("c1", x)))
    y = bn("b2", conv("dw", y, 8), 1e-3)
    z = conv("c3", y)
    t = jax.nn.relu(z)
    return jnp.mean(bn("b4", conv("c4", t)), axis=(1, 2))


def test_generic_pairs_and_formula():
    jax.config.update("jax_numpy_rank_promotion", "allow")  # the hand-written reference broadcasts
    try:
        judge = _tiny_judge(leak=False)
        pairs = find_conv_bn_pairs(judge.module, judge.variables, (1, 8, 8, 3))
        assert pairs == ((("c1",), ("b1",)), (("dw",), ("b2",)), (("c4",), ("b4",)))
        x = jax.random.uniform(jax.random.key(2), (2, 8, 8, 3))
        folded = fold_bn(judge)
        assert "b1" not in folded.variables["params"] and "c3" in folded.variables["params"]
        assert set(folded.variables[FOLDED]) == {"dw"}  # c1, c4 carry b' in their own bias
        ref = _reference(judge, x)
        np.testing.assert_allclose(np.asarray(folded(x)), ref, rtol=1e-5, atol=1e-5)
        # input gradients: the attack's quantity
        g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(_reference_jnp(judge, x))))(x)
        g_fold = jax.grad(lambda x: jnp.sum(jnp.sin(folded(x))))(x)
        np.testing.assert_allclose(np.asarray(g_fold), np.asarray(g_ref), rtol=1e-4, atol=1e-6)
    finally:
        jax.config.update("jax_numpy_rank_promotion", "raise")


def test_conv_output_read_elsewhere_is_refused():
    with pytest.raises(ValueError, match="changed"):
        fold_bn(_tiny_judge(leak=True))


def test_wrapper_base_nests_clones_and_reads_through():
    """The intercepting-module base shared by the rewrites: a rewrite that doubles every conv's
    output equals the model with every conv kernel and bias doubled (convolution is linear); a
    rewrite of a rewrite lists both (outermost first in :func:`wrappers`); ``clone`` keeps the
    rewrites around the cloned model; attribute reads reach the model."""
    from ppjax.accel.intercept import InterceptingModule, is_call, wrappers

    @dataclasses.dataclass(frozen=True)
    class Doubled(InterceptingModule):
        def interceptor(self, variables):
            def double(next_fun, a, kw, context):
                y = next_fun(*a, **kw)
                return 2 * y if is_call(context, nn.Conv) else y

            return double

    judge = _tiny_judge(leak=False)
    twice = jax.tree_util.tree_map_with_path(
        lambda p, a: 2 * a if "params" in str(p[0]) and str(p[1].key).startswith(("c", "dw"))
        else a, judge.variables)
    x = jax.random.uniform(jax.random.key(3), (2, 8, 8, 3))
    np.testing.assert_allclose(np.asarray(judge.replace(module=Doubled(judge.module))(x)),
                               np.asarray(judge.replace(variables=twice)(x)), rtol=1e-5, atol=1e-5)
    folded = fold_bn(judge)
    both = folded.replace(module=Doubled(folded.module))
    assert [type(m) for m in wrappers(both.module)] == [Doubled, FoldedModule]
    assert both.module.leak is False  # read through both wrappers
    b16 = both.with_dtype(jnp.bfloat16)
    assert [type(m) for m in wrappers(b16.module)] == [Doubled, FoldedModule]
    assert b16.module.inner.pairs == folded.module.pairs and b16.module.dtype == jnp.bfloat16
