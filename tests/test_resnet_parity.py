"""Acceptance test of the 2019 judge: a torch ResNet-50 with random weights and randomised
BatchNorm statistics, saved in the exact CSAIL ``resnet50_places365.pth.tar`` layout, converted by
the real converter, must match torch on real photos (256x256, batch of 8) in float32."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from ppjax import load_judge
from ppjax.convert import resnet50_places365
from ppjax.judges import judge_dir
from ppjax.judges.checkpoint import read_metadata
from tests.torch_ref.resnet import randomize, resnet50

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def torch_model():
    torch.manual_seed(0)
    return randomize(resnet50(365), seed=1)


@pytest.fixture(scope="module")
def converted(torch_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    src = d / "resnet50_places365.pth.tar"
    torch.save(resnet50_places365.csail_layout(torch_model.state_dict()), src)
    raw = torch.load(src, weights_only=True)
    assert set(raw) == {"epoch", "arch", "state_dict", "best_prec1"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert "module.layer1.0.downsample.0.weight" in raw["state_dict"]
    assert raw["state_dict"]["module.fc.weight"].shape == (365, 2048)
    resnet50_places365.convert(src, weights_dir=d)
    return d, src


def test_parity_with_torch_on_real_photos(torch_model, converted, photos_256):
    weights, src = converted
    judge = load_judge("resnet50_places365", weights_dir=weights)
    assert not judge.standin
    x = photos_256  # [8, 256, 256, 3] real photos, 8-bit values

    with torch.no_grad():
        xt = torch.from_numpy(((x - MEAN) / STD).transpose(0, 3, 1, 2).copy())
        t_logits, t_feats = torch_model(xt, capture=True)
    apply = jax.jit(lambda v, x: judge.module.apply(v, x, capture=True))
    j_logits, j_feats = apply(judge.variables, x)

    t_logits = t_logits.numpy()
    j_logits = np.asarray(j_logits)
    assert t_logits.std() > 0.5, "replica logits are degenerate; the test would prove nothing"
    max_diff = np.abs(j_logits - t_logits).max()
    print(f"max |logit diff| = {max_diff:.3e}  (logit std {t_logits.std():.2f})")
    assert max_diff <= 1e-4
    np.testing.assert_array_equal(j_logits.argmax(-1), t_logits.argmax(-1))
    for name, tf in t_feats.items():
        tf = tf.numpy()
        jf = np.asarray(j_feats[name])
        if tf.ndim == 4:
            tf = tf.transpose(0, 2, 3, 1)
        rel = np.abs(jf - tf).max() / (np.abs(tf).max() + 1e-12)
        print(f"{name}: max rel activation diff {rel:.2e}")
        assert rel < 1e-5, name

    meta = read_metadata(judge_dir("resnet50_places365", weights))
    assert meta["source_file"] == "resnet50_places365.pth.tar"
    assert len(meta["sha256"]) == 64
    assert meta["standin"] is False
    assert "ResNet-50" in meta["architecture"] and "ImageNet" in meta["preprocessing"]
