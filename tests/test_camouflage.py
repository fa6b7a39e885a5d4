"""Quality camouflage (2020) and the appeal-aware objective on tiny judges.

Every claim is re-checked outside the engine: success by re-judging the returned images after the
REAL Pillow JPEG-90 (``pil_jpeg``), appeal by re-scoring them with the NIMA-like judge after
Pillow's nearest resize (``imageio.resize_plain``, what the evaluation does), the baseline by an
I-FGSM written out here in plain JAX."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax.attacks import count_traces, get_attack
from ppjax.attacks.appeal import resize_nearest
from ppjax.image import io as imageio
from ppjax.image.jpeg import pil_jpeg
from ppjax.judges import Judge, JudgeSpec
from tests.conftest import photos_at
from tests.test_attacks import TinyCNN

HW = (48, 64)  # the score judge's input (KonCept512's 384x512, scaled down)
APPEAL_HW = (28, 28)  # the appeal judge's input (NIMA's 224x224, scaled down): a resize is needed
N = 4
THRESHOLD = 50.0


class TinyNima(nn.Module):
    """A tiny distribution judge: a softmax over 10 bins (like NIMA)."""

    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = nn.relu(nn.Conv(8, (3, 3), (2, 2), dtype=self.dtype, name="conv1")(2.0 * x01 - 1.0))
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return jax.nn.softmax(nn.Dense(10, name="fc")(x), axis=-1)


def _spec(name, hw, output) -> JudgeSpec:
    return JudgeSpec(name=name, model="-", input_hw=hw, output=output, filename="-", url="-",
                     converter="-", architecture="tiny test CNN", preprocessing="-", year=2020)


@pytest.fixture(scope="module")
def x(photo_paths):
    return jnp.asarray(photos_at(photo_paths, HW, N))


@pytest.fixture(scope="module")
def judge(x):
    """Tiny score judge (``TinyCNN`` with one output: a dense layer over the whole feature map,
    so a small perturbation can move it, as it moves KonCept512), scaled so that the clean
    scores are all >= 60, as the 2020 test images are all scored > 50."""
    module = TinyCNN(num_classes=1)
    p = module.init(jax.random.key(3), jnp.zeros((1, *HW, 3)))["params"]
    fc = {"kernel": p["fc"]["kernel"] * 10.0, "bias": p["fc"]["bias"]}
    spec = _spec("tiny_biqa", HW, "score")
    s = np.asarray(Judge({"params": {**p, "fc": fc}}, module, spec).score(x))
    fc["bias"] = fc["bias"] + (60.0 - s.min())
    return Judge({"params": {**p, "fc": fc}}, module, spec, standin=True)


@pytest.fixture(scope="module")
def nima():
    module = TinyNima()
    v = module.init(jax.random.key(5), jnp.zeros((1, *APPEAL_HW, 3)))
    return Judge(v, module, _spec("tiny_nima", APPEAL_HW, "distribution"), standin=True)


def score_after_pillow_jpeg90(judge, images) -> np.ndarray:
    return np.asarray(judge.score(jnp.asarray(pil_jpeg(np.asarray(images), 90))))


def nima_as_evaluated(nima, images) -> np.ndarray:
    small = imageio.resize_plain(imageio.to_uint8(np.asarray(images)), APPEAL_HW)
    return np.asarray(nima.score(jnp.asarray(imageio.to_float01(small))))


def test_resize_nearest_is_pillows_nearest():
    rng = np.random.default_rng(0)
    for hw, out in [((256, 256), (224, 224)), ((384, 512), (224, 224)), ((48, 64), (28, 28))]:
        a = rng.integers(0, 256, (1, *hw, 3), dtype=np.uint8)
        ours = np.asarray(resize_nearest(jnp.asarray(a, jnp.float32), out)).astype(np.uint8)
        np.testing.assert_array_equal(ours, imageio.resize_plain(a, out))


def test_baseline_preset_is_the_published_one(judge, x):
    cfg = get_attack("camouflage", "pp2020_baseline")
    # eps = step = 0.05 in [-1, 1] = 0.025 in [0, 1]; 20 steps; MSE toward 30; no early stop;
    # no JPEG in the loop; success judged after JPEG-90
    assert cfg.eps == cfg.step_size == pytest.approx(0.05 / 2)
    assert (cfg.objective, cfg.step, cfg.norm, cfg.steps) == ("score_mse", "sign", "linf", 20)
    assert cfg.threshold - cfg.margin == 30.0 and cfg.threshold == THRESHOLD
    assert not cfg.early_stop and cfg.eot == "none" and not cfg.random_start
    assert cfg.judge_jpeg and cfg.judge_quality == 90.0

    res = ppjax.attack("camouflage", judge, x, preset="pp2020_baseline")
    np.testing.assert_array_equal(res.steps, 20)
    imgs = np.asarray(res.images)
    assert np.abs(imgs - np.asarray(x)).max() <= 6 / 255 + 1e-6  # 6.375 levels -> 6 on the grid
    # success as the organisers judge it: real Pillow JPEG-90, then score <= 50 counts
    np.testing.assert_array_equal(res.success, score_after_pillow_jpeg90(judge, imgs) < THRESHOLD)

    # independent reference: plain I-FGSM on (score - 30)^2, 20 steps, then 8-bit rounding
    eps = 0.025
    grad = jax.jit(jax.grad(lambda v: jnp.sum((judge.score(v) - 30.0) ** 2)))
    x0 = jnp.asarray(x)
    v = x0
    for _ in range(20):
        v = jnp.clip(x0 + jnp.clip(v - eps * jnp.sign(grad(v)) - x0, -eps, eps), 0.0, 1.0)
    ref = np.clip(np.round(np.asarray(v) * 255.0), np.asarray(x0) * 255 - 6, np.asarray(x0) * 255 + 6)
    same = np.mean(np.round(imgs * 255.0) == ref)
    assert same > 0.999, same


@pytest.fixture(scope="module")
def default_result(judge, x):
    return ppjax.attack("camouflage", judge, x)


def test_default_success_survives_real_jpeg90(judge, x, default_result):
    res = default_result
    cfg = get_attack("camouflage")
    assert cfg.eot == "jpeg" and cfg.judge_jpeg and cfg.early_stop
    imgs = np.asarray(res.images)
    assert np.asarray(judge.score(x)).min() > THRESHOLD
    after = score_after_pillow_jpeg90(judge, imgs)
    assert (after < THRESHOLD).all(), after
    np.testing.assert_array_equal(res.success, True)
    np.testing.assert_allclose(res.extras["score_after"], after, rtol=1e-5, atol=1e-4)
    assert np.abs(imgs - np.asarray(x)).max() <= cfg.eps + 1e-6
    assert (res.steps < cfg.steps).any()  # early stop


def test_appeal_term_raises_appeal_without_retracing(judge, nima, x):
    kw = dict(preset="appeal", extra_judges={"appeal": nima}, steps=12)
    res0 = ppjax.attack("camouflage", judge, x, appeal_weight=0.0, **kw)
    with count_traces() as traces:
        res1 = ppjax.attack("camouflage", judge, x, appeal_weight=20.0, **kw)
    assert traces == {}, "changing appeal_weight recompiled"

    for res in (res0, res1):
        # clean and kept images are both judged through the success view (judge_jpeg: the
        # real-codec-exact JPEG-90), so before/after are comparable
        np.testing.assert_allclose(res.extras["appeal_before"],
                                   nima_as_evaluated(nima, pil_jpeg(np.asarray(x), 90)), rtol=1e-5)
        np.testing.assert_allclose(res.extras["appeal_after"],
                                   nima_as_evaluated(nima, pil_jpeg(np.asarray(res.images), 90)),
                                   rtol=1e-5)
        after = score_after_pillow_jpeg90(judge, res.images)
        np.testing.assert_array_equal(res.success, after < THRESHOLD)
    a0 = nima_as_evaluated(nima, res0.images)
    a1 = nima_as_evaluated(nima, res1.images)
    assert a1.mean() > a0.mean(), (a0, a1)
    assert a1.mean() >= nima_as_evaluated(nima, x).mean()
    assert res1.success.all()


def test_appeal_settings():
    cfg = get_attack("camouflage", appeal=True, appeal_weight=0.25)
    assert cfg.objective == "score_below+appeal" and dict(cfg.hyper) == {"appeal_weight": 0.25}
    assert jax.tree.structure(cfg) == jax.tree.structure(  # the same program, a new weight
        get_attack("camouflage", appeal=True, appeal_weight=3.0))
    with pytest.raises(TypeError, match="appeal"):
        get_attack("camouflage", appeal_weight=0.5)
