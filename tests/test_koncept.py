"""Acceptance test of the 2020 judge: a torch KonCept512 (Cadene InceptionResNetV2 + MLP head)
with random weights and randomised BatchNorm statistics, saved in the exact ``KonCept512.pth``
layout, converted by the real converter, must match torch on real photos at 384x512 in float32:
scores within 1e-3 on a MOS-like scale (std 10 around 50), stage activations within 1e-5
(relative). One XLA compile for the whole file."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ppjax import load_judge
from ppjax.convert import koncept512
from ppjax.convert.common import ConversionError, random_torch_state_dict
from ppjax.judges import judge_dir
from ppjax.judges.checkpoint import read_metadata
from ppjax.models.inception_resnet_v2 import avgpool_1a
from ppjax.models.resnet import ResNet18
from tests.conftest import photos_at
from tests.torch_ref.inception_resnet_v2 import KonCept512, randomize, spread_scores

N_PHOTOS = 3


@pytest.fixture(scope="module")
def photos(photo_paths) -> np.ndarray:
    return photos_at(photo_paths, (384, 512), N_PHOTOS)  # [3, 384, 512, 3] in [0, 1]


@pytest.fixture(scope="module")
def replica_and_reference(photos):
    """The torch replica and its outputs on ``photos`` (scores [B], activations NHWC)."""
    torch.manual_seed(0)
    model = randomize(KonCept512(), seed=1)
    with torch.no_grad():
        xt = torch.from_numpy(((photos - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())
        _, feats = model(xt, capture=True)
        scores = spread_scores(model, feats["head_in"])[:, 0].numpy()
    feats = {k: (v.numpy().transpose(0, 2, 3, 1) if v.ndim == 4 else v.numpy())
             for k, v in feats.items()}
    return model, scores, feats


@pytest.fixture(scope="module")
def converted(replica_and_reference, tmp_path_factory):
    model = replica_and_reference[0]
    d = tmp_path_factory.mktemp("w")
    src = d / "KonCept512.pth"
    torch.save(model.state_dict(), src)
    raw = torch.load(src, weights_only=True)
    assert "base.0.conv.weight" in raw and "base.0.bn.running_mean" in raw
    assert "base.7.branch3.1.conv.weight" in raw and "base.10.19.conv2d.bias" in raw
    assert raw["fc.12.weight"].shape == (1, 256) and "fc.2.running_mean" in raw
    assert all(k.startswith(("base.", "fc.")) for k in raw)
    koncept512.convert(src, weights_dir=d)
    return d


@pytest.fixture(scope="module")
def judge(converted):
    return load_judge("koncept512", weights_dir=converted)


@pytest.fixture(scope="module")
def ours(judge, photos):
    apply = jax.jit(lambda v, x: judge.module.apply(v, x, capture=True))
    score, feats = apply(judge.variables, photos)
    return np.asarray(score), {k: np.asarray(v) for k, v in feats.items()}


def test_scores_match_torch_on_real_photos(replica_and_reference, ours, judge):
    _, t_scores, _ = replica_and_reference
    j_score, _ = ours
    assert not judge.standin
    assert j_score.shape == (N_PHOTOS, 1) and j_score.dtype == np.float32
    assert 5.0 < t_scores.std() < 20.0, "replica scores are degenerate; the test would prove nothing"
    diff = np.abs(j_score[:, 0] - t_scores).max()
    print(f"scores torch {np.round(t_scores, 3)}; max |score diff| = {diff:.2e}")
    assert diff <= 1e-3


def test_stage_activations_match_torch(replica_and_reference, ours):
    _, _, t_feats = replica_and_reference
    _, j_feats = ours
    assert j_feats["mixed_7a"].shape == (N_PHOTOS, 10, 14, 2080)
    for name in ("mixed_5b", "mixed_6a", "mixed_7a", "conv2d_7b", "pool"):
        tf, jf = t_feats[name], j_feats[name]
        assert jf.shape == tf.shape, name
        scale = np.abs(tf).max()
        assert 1e-2 < scale < 1e3, f"{name}: replica activations degenerate (max {scale})"
        rel = np.abs(jf - tf).max() / scale
        print(f"{name}: max rel activation diff {rel:.2e}")
        assert rel < 1e-5, name


def test_pooling_variants_against_torch(replica_and_reference):
    """``cadene`` = AvgPool2d(8) (top-left 8x8 of the 10x14 map at 384x512); ``global`` =
    AdaptiveAvgPool2d(1). Checked on the replica's own conv2d_7b map; they do differ here."""
    fmap = replica_and_reference[2]["conv2d_7b"]  # [B, 10, 14, 1536] NHWC
    t = torch.from_numpy(fmap.transpose(0, 3, 1, 2).copy())
    want_cadene = torch.nn.AvgPool2d(8, count_include_pad=False)(t).flatten(1).numpy()
    want_global = torch.nn.AdaptiveAvgPool2d(1)(t).flatten(1).numpy()
    got_cadene = np.asarray(avgpool_1a(jnp.asarray(fmap), "cadene"))
    got_global = np.asarray(avgpool_1a(jnp.asarray(fmap), "global"))
    np.testing.assert_allclose(got_cadene, want_cadene, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_global, want_global, rtol=1e-5, atol=1e-6)
    assert np.abs(want_cadene - want_global).max() > 1e-3
    with pytest.raises(ValueError, match="pool must be one of"):
        avgpool_1a(jnp.asarray(fmap), "max")


def test_metadata(converted):
    meta = read_metadata(judge_dir("koncept512", converted))
    assert meta["source_file"] == "KonCept512.pth" and len(meta["sha256"]) == 64
    assert meta["standin"] is False and meta["input_hw"] == [384, 512]
    assert "InceptionResNetV2" in meta["architecture"] and "0.5" in meta["preprocessing"]


def test_wrong_size_input_is_a_clear_error(judge):
    with pytest.raises(ValueError, match=r"384x512 \(HxW\).*got 256x256"):
        judge(jnp.zeros((1, 256, 256, 3), jnp.float32))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        judge(jnp.zeros((1, 3, 384, 512), jnp.float32))


def test_state_dict_of_another_model_is_one_clear_error(tmp_path):
    abstract = jax.eval_shape(ResNet18(num_classes=10).init, jax.random.key(0),
                              jnp.zeros((1, 32, 32, 3), jnp.float32))
    src = tmp_path / "KonCept512.pth"
    torch.save(random_torch_state_dict(abstract), src)
    with pytest.raises(ConversionError) as e:
        koncept512.convert(src, weights_dir=tmp_path)
    msg = str(e.value)
    assert str(src) in msg and "does not match" in msg
    assert "missing:" in msg and "base.0.conv.weight" in msg and "fc.12.weight" in msg
    assert "unexpected:" in msg and "conv1.weight" in msg and "layer1.0.bn1.running_mean" in msg
    assert not judge_dir("koncept512", tmp_path).exists()


def test_wrapped_prefixed_mis_shaped_checkpoint_names_the_key(replica_and_reference, tmp_path):
    """``{"state_dict": {"module." + key: ...}}`` is unwrapped; a wrong shape is reported by name."""
    sd = dict(replica_and_reference[0].state_dict())
    sd["fc.12.weight"] = torch.zeros(2, 256)
    src = tmp_path / "KonCept512.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, src)
    with pytest.raises(ConversionError) as e:
        koncept512.convert(src, weights_dir=tmp_path)
    msg = str(e.value)
    assert "(0 missing, 0 unexpected, 1 mis-shaped keys)" in msg
    assert "fc.12.weight: file has (2, 256)" in msg and "(1, 256)" in msg


def test_standin_scores_photos_above_the_2020_threshold(tmp_path, photo_paths):
    """The calibrated stand-in scores unseen photos above 50 (as real test photos do), so the
    camouflage attack has work to do; its calibration photos get the target mean and spread."""
    from ppjax.image import io as imageio
    from ppjax.runs.data import get_task

    out = koncept512.make_standin(weights_dir=tmp_path)
    judge = load_judge("koncept512", weights_dir=tmp_path, standin=True)
    assert judge.standin and out == judge_dir("koncept512", tmp_path, standin=True)
    cal = np.asarray(judge.score(koncept512.calibration_photos()))
    assert cal.mean() == pytest.approx(koncept512.STANDIN_MEAN, abs=0.05)
    assert cal.std() == pytest.approx(koncept512.STANDIN_STD, rel=0.02)
    x = np.stack([imageio.to_float01(imageio.to_task_size(imageio.load_rgb(p)[0], 2020)[0])
                  for p in photo_paths[:2]])
    assert (np.asarray(judge.score(x)) > get_task(2020).threshold).all()
