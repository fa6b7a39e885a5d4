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


def test_judges_registry_names_known_judges_and_task_sizes_come_from_one_place():
    import dataclasses

    import pytest

    from ppjax.image.io import TASK_HW
    from ppjax.judges import JUDGES, get_spec, load_judge, register
    from ppjax.registry import UnknownName

    with pytest.raises(UnknownName, match="unknown judge 'nope'; known: alexnet_places365, "):
        get_spec("nope")
    with pytest.raises(KeyError, match="resnet50_places365"):  # callers catching KeyError
        load_judge("nope")
    with pytest.raises(ValueError, match="already registered"):
        register(dataclasses.replace(get_spec("koncept512")))
    for spec in JUDGES.values():
        if spec.year == 2020 and spec.output == "score":
            assert spec.input_hw == TASK_HW[2020]
    assert get_spec("resnet50_places365").input_hw == TASK_HW[2019]
