"""The Judge object as users handle it: hashable, usable as a static jit argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def test_judge_is_hashable_and_a_static_jit_argument(resnet_standin, photos_256):
    judge = resnet_standin
    assert hash(judge) == hash(judge) and {judge: 1}[judge] == 1
    assert judge == judge and judge != judge.with_dtype(jnp.float32)
    x = jnp.asarray(photos_256[:1])
    static = jax.jit(lambda j, x: j(x), static_argnums=0)(judge, x)
    traced = jax.jit(lambda j, x: j(x))(judge, x)
    np.testing.assert_allclose(np.asarray(static), np.asarray(traced), rtol=1e-4, atol=1e-4)
