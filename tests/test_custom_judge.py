"""A user's own model as the judge (``Judge.from_fn``): a plain JAX function, a Flax module with
its variables, uint8 images, and clear refusals where a registered judge's knowledge is needed."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax.judges import Judge, get_spec, load_judge


class TinyNet(nn.Module):
    classes: int = 5

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), strides=(2, 2))(x * 2.0 - 1.0)
        return nn.Dense(self.classes)(jnp.mean(nn.relu(x), axis=(1, 2)))


@pytest.fixture(scope="module")
def net():
    module = TinyNet()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    return module, variables


@pytest.fixture(scope="module")
def images_u8(photos_256):
    # 4 real 16x16 crops, as uint8 (the format photos come in)
    return np.round(photos_256[:4, ::16, ::16] * 255).astype(np.uint8)


def test_plain_function_and_uint8_images(images_u8):
    w = jax.random.normal(jax.random.key(1), (16 * 16 * 3, 5))

    def fn(x):  # a linear classifier on the pixels, closing over its weights
        return x.reshape(x.shape[0], -1) @ w

    res = ppjax.attack("pgd", fn, images_u8, eps=16 / 255, steps=10, backend="auto")
    x0 = images_u8.astype(np.float32) / 255
    clean = np.argmax(np.asarray(fn(jnp.asarray(x0))), -1)
    after = np.argmax(np.asarray(fn(jnp.asarray(res.images))), -1)
    # success means the user's own model, re-run independently, changed its top-1
    np.testing.assert_array_equal(np.asarray(res.success), after != clean)
    assert np.asarray(res.success).any()
    assert res.images.dtype == np.float32
    assert np.abs(np.asarray(res.images) - x0).max() <= 16 / 255 + 1e-6
    k = np.asarray(res.images) * 255
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)  # on the 8-bit grid


def test_flax_module_with_variables_in_stream_equals_attack(net, images_u8):
    module, variables = net
    judge = Judge.from_fn(module, input_hw=(16, 16), name="tiny", variables=variables)
    assert not judge.registered and judge.spec.name == "tiny"
    items = [ppjax.StreamItem(i, images_u8[i], seed=i) for i in range(3)]
    got = dict(ppjax.stream("pgd", judge, items, slots=2, eps=8 / 255, steps=4))
    one = ppjax.attack("pgd", judge, images_u8[1:2], seeds=[1], eps=8 / 255, steps=4)
    np.testing.assert_array_equal(got[1].images, np.asarray(one.images)[0])
    with pytest.raises(ValueError, match="expects 16x16"):
        ppjax.attack("pgd", judge, np.zeros((1, 8, 8, 3), np.uint8), steps=1)


def test_score_judge(images_u8):
    judge = Judge.from_fn(lambda x: jnp.mean(x, axis=(1, 2, 3)) * 100, output="score",
                          name="brightness")
    res = ppjax.attack("ifgsm_score", judge, images_u8[:2], eps=4 / 255, steps=5,
                       threshold=0.0, margin=0.0, eot="none", judge_jpeg=False)
    before = images_u8[:2].astype(np.float32).mean(axis=(1, 2, 3)) / 255 * 100
    after = np.asarray(res.images).mean(axis=(1, 2, 3)) * 100
    assert (after < before - 1).all()  # the score was pushed down: every pixel darker


def test_what_needs_a_registered_judge_says_so(net, images_u8):
    module, variables = net
    judge = Judge.from_fn(module, name="tiny", variables=variables)
    with pytest.raises(ValueError, match="backend 'onednn' needs a registered judge.*'tiny'"):
        ppjax.attack("pgd", judge, images_u8[:2], steps=1, backend="onednn")
    fn_judge = Judge.from_fn(lambda x: module.apply(variables, x), name="fn")
    with pytest.raises(ValueError, match="dtype= needs a registered judge.*'fn'"):
        ppjax.attack("pgd", fn_judge, images_u8[:2], steps=1, dtype=jnp.bfloat16, backend="xla")
    with pytest.raises(ValueError, match="registered judge's"):
        Judge.from_fn(lambda x: x, name="resnet50_places365")
    with pytest.raises(ValueError, match="needs its variables"):
        Judge.from_fn(module)
    with pytest.raises(ValueError, match="output must be one of logits, score"):
        Judge.from_fn(lambda x: x, output="probabilities")
    with pytest.raises(TypeError, match="needs its variables"):
        ppjax.attack("pgd", module, images_u8[:2], steps=1)
    with pytest.raises(ValueError, match="uint8 or float"):
        ppjax.attack("pgd", fn_judge, images_u8[:2].astype(np.int32), steps=1)


def test_python_missing_weights_error_names_the_python_way(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_judge("resnet18_places365", weights_dir=tmp_path)
    msg = str(e.value)
    assert "load_judge('resnet18_places365', standin=True)" in msg
    assert "fetch_judge('resnet18_places365')" in msg and "pass --standin" not in msg
    from ppjax.judges.fetch import missing_weights_message

    assert "pass --standin" in missing_weights_message(get_spec("resnet18_places365"), tmp_path)
