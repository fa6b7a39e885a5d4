"""ppjax.models.pooling.max_pool against PyTorch's MaxPool2d (forward and gradient, ties too)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ppjax.models.pooling import max_pool


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 13, 12, 5), (3, 3), (2, 2), 1),      # ResNet stem pool, odd sizes
    ((2, 15, 16, 4), (3, 3), (2, 2), 0),      # InceptionResNetV2 VALID pools
    ((1, 9, 9, 3), (3, 3), (1, 1), 1),
    ((1, 10, 11, 2), (2, 2), (2, 2), 0),
])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_matches_torch(shape, window, strides, padding, ties):
    x = np.asarray(jax.random.normal(jax.random.key(0), shape), np.float32)
    if ties:  # many equal maxima: the gradient must go to the first one, as in torch
        x = np.round(x * 2) / 2
    dy_shape = None
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    ty = torch.nn.functional.max_pool2d(tx, window, strides, padding)
    dy_shape = (shape[0], ty.shape[2], ty.shape[3], shape[3])
    dy = np.asarray(jax.random.normal(jax.random.key(1), dy_shape), np.float32)
    ty.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    pad = ((padding, padding), (padding, padding))
    y, pull = jax.vjp(lambda x: max_pool(x, window, strides, pad), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), ty.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_allclose(np.asarray(pull(jnp.asarray(dy))[0]),
                               tx.grad.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)


def test_max_pool_bf16_is_exact_and_keeps_dtype():
    x = jax.random.normal(jax.random.key(2), (1, 8, 8, 3)).astype(jnp.bfloat16)
    y = max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
    assert y.dtype == jnp.bfloat16
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(ref, np.float32))
    g = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), "SAME").astype(jnp.float32)))(x)
    assert g.dtype == jnp.bfloat16


@pytest.mark.parametrize("shape,window,strides,padding", [
    ((2, 13, 12, 5), (3, 3), (1, 1), 1),      # InceptionResNetV2 Mixed_5b branch 3
    ((1, 11, 9, 3), (3, 3), (2, 2), 1),
    ((1, 16, 16, 2), (8, 8), (8, 8), 0),      # the trunk's AvgPool2d(8)
])
@pytest.mark.parametrize("count_include_pad", [False, True])
def test_avg_pool_matches_torch(shape, window, strides, padding, count_include_pad):
    from ppjax.models.pooling import avg_pool

    x = np.asarray(jax.random.normal(jax.random.key(2), shape), np.float32)
    tx = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    ty = torch.nn.functional.avg_pool2d(tx, window, strides, padding,
                                        count_include_pad=count_include_pad)
    dy = np.asarray(jax.random.normal(jax.random.key(3), (shape[0], ty.shape[2], ty.shape[3],
                                                          shape[3])), np.float32)
    ty.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    pad = ((padding, padding), (padding, padding))
    y, pull = jax.vjp(lambda x: avg_pool(x, window, strides, pad, count_include_pad),
                      jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(y), ty.detach().permute(0, 2, 3, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(pull(jnp.asarray(dy))[0]),
                               tx.grad.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-6)
    y16 = avg_pool(jnp.asarray(x, jnp.bfloat16), window, strides, pad, count_include_pad)
    assert y16.dtype == jnp.bfloat16
