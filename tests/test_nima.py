"""The two NIMA appeal judges: converters and parity with their Keras / torch originals.

* ``nima_mobilenet``: a Keras 3 (JAX backend) replica of titu1994's NIMA with random weights and
  randomised BatchNorm statistics, saved by Keras itself in the legacy h5 layouts, converted with
  h5py only, compared on real photos.
* ``nima_mobilenetv2``: the torch replica of nima.pytorch v1 (``tests/torch_ref/mobilenet_v2.py``)
  with a random state dict in the ``nima224.pth`` layout.
"""

from __future__ import annotations

import shutil

import h5py
import jax
import numpy as np
import pytest
import torch

from ppjax.convert import nima_keras, nima_mobilenetv2
from ppjax.convert.common import ConversionError, random_torch_state_dict
from ppjax.judges import get_spec, load_judge
from ppjax.judges.checkpoint import load_converted
from ppjax.models.mobilenet import DepthwiseConv, MobileNetV1
from ppjax.models.resnet import ResNet18
from tests.conftest import photos_at

BATCH = 4
BINS = np.arange(1, 11, dtype=np.float64)


def _score(p):
    return (np.asarray(p, np.float64) * BINS).sum(-1)


@pytest.fixture(scope="module")
def photos224(photo_paths):
    return photos_at(photo_paths, (224, 224), BATCH)


@pytest.mark.parametrize("stride,padding", [(1, ((1, 1), (1, 1))), (2, ((0, 1), (0, 1))),
                                            (2, ((1, 1), (1, 1)))])
def test_depthwise_shift_matches_grouped_conv(stride, padding):
    """The CPU-friendly shifted-sum depthwise conv equals torch's grouped Conv2d."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 10, 6)).astype(np.float32)
    mod = DepthwiseConv((3, 3), stride, padding)
    variables = mod.init(jax.random.key(0), x)
    got = np.asarray(mod.apply(variables, x))
    k = np.asarray(variables["params"]["kernel"])  # [3, 3, 1, C]
    (pt, pb), (pl, pr) = padding
    xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (pl, pr, pt, pb))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(k.transpose(3, 2, 0, 1).copy()),
                                     stride=stride, groups=6).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    conv = DepthwiseConv((3, 3), stride, padding, impl="conv").apply(variables, x)
    np.testing.assert_allclose(np.asarray(conv), ref, atol=1e-5)


# ----------------------------------------------------------------------------- Keras NIMA


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, photos224):
    """Keras replica -> (full-model h5, weights-only h5, Keras pooled features, Keras probs)."""
    from tests import keras_ref

    d = tmp_path_factory.mktemp("nima_keras")
    model = keras_ref.build_nima_keras()
    keras_ref.randomize(model, seed=1)
    full, weights_only = d / "nima_full.h5", d / "mobilenet_weights.h5"
    model.save(full)
    keras_ref.save_weights_only_legacy_h5(model, weights_only)
    assert model.layers[-3].name == "global_average_pooling2d"
    feats, probs = keras_ref.nima_features_and_probs(model, photos224)
    return full, weights_only, feats, probs


@pytest.fixture(scope="module")
def keras_judge(keras_files, tmp_path_factory):
    wd = tmp_path_factory.mktemp("nima_keras_wd")
    nima_keras.convert(keras_files[0], weights_dir=wd)
    return load_judge("nima_mobilenet", weights_dir=wd)


def test_nima_keras_parity(keras_judge, keras_files, photos224):
    _, _, k_feats, k_probs = keras_files
    # The random replica must be input-dependent, or parity would prove nothing.
    assert k_feats.std(axis=0).mean() > 1e-2

    @jax.jit
    def run(variables, x01):
        return keras_judge.module.apply(
            variables, x01, capture_intermediates=lambda m, _: isinstance(m, MobileNetV1))

    probs, state = run(keras_judge.variables, photos224)
    feats = np.asarray(state["intermediates"]["mobilenet"]["__call__"][0])
    probs = np.asarray(probs)
    feat_err = np.abs(feats - k_feats).max() / np.abs(k_feats).max()
    score_diff = np.abs(_score(probs) - _score(k_probs))
    print(f"nima_mobilenet vs Keras: feature rel err {feat_err:.2e}, "
          f"max prob diff {np.abs(probs - k_probs).max():.2e}, "
          f"score diff mean {score_diff.mean():.2e} max {score_diff.max():.2e}, "
          f"score spread {_score(k_probs).std():.3f}")
    assert feat_err < 1e-4
    assert np.abs(probs - k_probs).max() < 1e-5
    assert score_diff.mean() <= 1e-4
    np.testing.assert_allclose(np.asarray(keras_judge.score(photos224)), _score(k_probs),
                               atol=1e-4)


def test_nima_keras_weights_only_layout(keras_files, keras_judge, tmp_path):
    """``save_weights`` layout (titu1994's release files) converts to the very same variables."""
    out = nima_keras.convert(keras_files[1], out_dir=tmp_path / "w")
    variables, meta = load_converted(out, get_spec("nima_mobilenet").abstract_variables())
    assert meta["source_file"] == "mobilenet_weights.h5" and not meta["standin"]
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(keras_judge.variables),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nima_keras_missing_layers(keras_files, tmp_path):
    bad = tmp_path / "missing.h5"
    shutil.copy(keras_files[0], bad)
    with h5py.File(bad, "r+") as f:
        g = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in g.attrs["layer_names"]]
        keep = [n for n in names if n not in ("conv_pw_13_bn", "conv_dw_7", "dense")]
        assert len(keep) == len(names) - 3
        g.attrs["layer_names"] = np.array([n.encode() for n in keep])
        for layer in ("conv_pw_13_bn", "conv_dw_7", "dense"):
            del g[layer]
    out = tmp_path / "out"
    with pytest.raises(ConversionError) as e:
        nima_keras.convert(bad, out_dir=out)
    msg = str(e.value)
    for needle in ("missing.h5", "conv_pw_13_bn/moving_variance", "conv_dw_7/depthwise_kernel",
                   "no Dense head layer", "layers with missing weights: conv_dw_7, conv_pw_13_bn"):
        assert needle in msg, msg
    assert not out.exists()


def test_nima_keras_rejects_non_keras_file(tmp_path):
    bad = tmp_path / "plain.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(ConversionError, match="not a legacy Keras h5"):
        nima_keras.convert(bad, out_dir=tmp_path / "o")


# ----------------------------------------------------------------------------- torch NIMA


def _replica_state_dict(seed: int) -> dict:
    """Random ``nima224.pth``-layout weights whose NIMA output depends on the input: BN gammas
    around 1 (smaller ones wash the input out over 52 BatchNorms) and a head scaled so the logits
    are O(1) (a saturated softmax would hide differences)."""
    sd = random_torch_state_dict(get_spec("nima_mobilenetv2").abstract_variables(), seed)
    rng = np.random.default_rng(seed + 100)
    for k, v in sd.items():
        if k.endswith(".weight") and v.ndim == 1:
            sd[k] = torch.from_numpy(rng.uniform(0.8, 1.2, v.shape).astype(np.float32))
    sd["head.2.weight"] = sd["head.2.weight"] * 0.4
    return sd


def test_nima_mobilenetv2_parity(tmp_path, photos224):
    from tests.torch_ref.mobilenet_v2 import NIMA, nima_probs

    sd = _replica_state_dict(seed=3)
    ref = NIMA()
    ref.load_state_dict(sd, strict=True)  # the nima224.pth key layout, exactly
    src = tmp_path / "nima224.pth"
    torch.save(sd, src)
    nima_mobilenetv2.convert(src, weights_dir=tmp_path)
    judge = load_judge("nima_mobilenetv2", weights_dir=tmp_path)

    t_probs = nima_probs(ref, photos224).numpy()
    probs = np.asarray(jax.jit(lambda j, x: j(x))(judge, photos224))
    score_diff = np.abs(_score(probs) - _score(t_probs))
    print(f"nima_mobilenetv2 vs torch: max prob diff {np.abs(probs - t_probs).max():.2e}, "
          f"score diff mean {score_diff.mean():.2e} max {score_diff.max():.2e}, "
          f"score spread {_score(t_probs).std():.3f}")
    assert _score(t_probs).std() > 1e-3  # input-dependent, or parity proves nothing
    assert np.abs(probs - t_probs).max() < 1e-5
    assert score_diff.mean() <= 1e-4


def test_nima_mobilenetv2_rejects_other_model(tmp_path):
    resnet_vars = jax.eval_shape(ResNet18(num_classes=10).init, jax.random.key(0),
                                 np.zeros((1, 64, 64, 3), np.float32))
    src = tmp_path / "resnet18.pth"
    torch.save(random_torch_state_dict(resnet_vars), src)
    with pytest.raises(ConversionError) as e:
        nima_mobilenetv2.convert(src, out_dir=tmp_path / "o")
    msg = str(e.value)
    for needle in ("resnet18.pth", "missing", "unexpected", "base_model.0.18.1.running_var",
                   "head.2.weight", "layer1.0.conv1.weight"):
        assert needle in msg, msg
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("name", ["nima_mobilenet", "nima_mobilenetv2"])
def test_nima_standins(name, tmp_path, photos224):
    """Stand-ins are written in the real file layouts (Keras 2 h5 via h5py, state dict via torch)
    and go through the real converters; they load as flagged random-weight judges."""
    judge = load_judge(name, weights_dir=tmp_path, standin=True)
    assert judge.standin and judge.spec.output == "distribution"
    with pytest.raises(ValueError, match="224x224"):
        judge(photos224[:, :200])
    if name == "nima_mobilenet":  # the Keras 2 naming path (':0' suffixes, dense_1) end to end
        probs = np.asarray(jax.jit(lambda j, x: j(x))(judge, photos224[:1]))
        assert probs.shape == (1, 10) and np.all(np.isfinite(probs))
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
