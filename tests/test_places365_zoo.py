"""The rest of the Places365 CNN zoo as judges: each torch replica (random weights, randomised
BatchNorm statistics) is saved in the exact CSAIL file layout, converted by the real converter, and
must match torch on the shared photos (256x256, ImageNet mean/std) in float32; and the converters
refuse what they must refuse (whole-model pickles, an architecture with the same keys)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from benchmarks.torch_ref.places365_zoo import ZOO, build
from ppjax import load_judge
from ppjax.convert import get_converter, places365
from ppjax.convert.common import ConversionError, random_torch_state_dict
from ppjax.judges import get_spec, judge_dir
from ppjax.judges.checkpoint import read_metadata

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
BATCH = {"densenet161_places365": 1}  # keep CI lean: DenseNet-161 is the slow one


def _converter(name):
    return get_converter(get_spec(name).converter)


def _save_csail(name, model, d):
    src = d / get_spec(name).filename
    torch.save(_converter(name).csail_layout(model.state_dict()), src)
    return src


@pytest.mark.parametrize("name", ZOO)
def test_parity_with_torch_replica(name, photos_256, tmp_path):
    model = build(name)
    src = _save_csail(name, model, tmp_path)
    raw = torch.load(src, weights_only=True)
    assert set(raw) == {"epoch", "arch", "state_dict", "best_prec1"}
    assert all(k.startswith("module.") for k in raw["state_dict"])
    if name == "densenet161_places365":  # the PyTorch 0.2 spelling the converter must undo
        assert "module.features.denseblock1.denselayer1.norm.1.weight" in raw["state_dict"]
        assert "module.features.denseblock4.denselayer24.conv.2.weight" in raw["state_dict"]
        assert not any("norm1" in k for k in raw["state_dict"])
    _converter(name).convert(src, weights_dir=tmp_path)
    judge = load_judge(name, weights_dir=tmp_path)
    assert not judge.standin

    x = photos_256[:BATCH.get(name, 2)]
    with torch.no_grad():
        t_logits, t_feats = model(torch.from_numpy(((x - MEAN) / STD).transpose(0, 3, 1, 2)
                                                   .copy()), capture=True)
    j_logits, j_feats = jax.jit(lambda v, x: judge.module.apply(v, x, capture=True))(
        judge.variables, x)
    t_logits, j_logits = t_logits.numpy(), np.asarray(j_logits)
    assert j_logits.shape == (len(x), 365)
    assert t_logits.std() > 0.5, "replica logits are degenerate; the test would prove nothing"
    max_diff = float(np.abs(j_logits - t_logits).max())
    print(f"{name}: max |logit diff| = {max_diff:.3e} (logit std {t_logits.std():.2f})")
    assert max_diff <= 1e-4
    np.testing.assert_array_equal(j_logits.argmax(-1), t_logits.argmax(-1))
    for key, tf in t_feats.items():
        tf = tf.numpy()
        jf = np.asarray(j_feats[key])
        if tf.ndim == 4:
            tf = tf.transpose(0, 2, 3, 1)
        assert jf.shape == tf.shape, key
        rel = np.abs(jf - tf).max() / (np.abs(tf).max() + 1e-12)
        assert rel < 1e-5, (key, rel)

    meta = read_metadata(judge_dir(name, tmp_path))
    assert meta["source_file"] == get_spec(name).filename and meta["standin"] is False
    assert meta["source_url"] == places365.BASE_URL + get_spec(name).filename


def test_whole_model_pickles_are_refused(tmp_path):
    # a real whole-model pickle (an nn.Module object), under the zoo's name: refused by name,
    # and also when renamed (then by torch's weights-only loader), naming the file to use
    model = build("alexnet_places365")
    for fname in ("whole_alexnet_places365.pth.tar", "renamed.pth.tar"):
        src = tmp_path / fname
        torch.save(model, src)
        with pytest.raises(ConversionError) as e:
            _converter("alexnet_places365").convert(src, weights_dir=tmp_path)
        msg = str(e.value)
        assert str(src) in msg
        assert "alexnet_places365.pth.tar" in msg.replace(fname, "")
        assert places365.BASE_URL + "alexnet_places365.pth.tar" in msg
    assert not judge_dir("alexnet_places365", tmp_path).exists()
    # by name alone, before reading a byte (the file need not even be a checkpoint)
    src = tmp_path / "whole_densenet161_places365.pth.tar"
    src.write_bytes(b"not read")
    with pytest.raises(ConversionError, match="densenet161_places365.pth.tar instead"):
        _converter("densenet161_places365").convert(src, weights_dir=tmp_path)


def test_resnet18_and_wide_resnet18_files_are_told_apart(tmp_path):
    # identical keys and shapes: the file's arch field decides, and a wrong one is refused
    sd = build("resnet18_places365").state_dict()
    src = tmp_path / "resnet18_places365.pth.tar"
    torch.save(_converter("resnet18_places365").csail_layout(sd), src)
    with pytest.raises(ConversionError, match="arch='resnet18'.*wideresnet18_places365"):
        _converter("wideresnet18_places365").convert(src, weights_dir=tmp_path)
    assert not judge_dir("wideresnet18_places365", tmp_path).exists()
    _converter("resnet18_places365").convert(src, weights_dir=tmp_path)


def test_legacy_densenet_names_round_trip():
    sd = {"features.denseblock2.denselayer11.norm2.running_var": 1,
          "features.denseblock2.denselayer11.conv1.weight": 2,
          "features.transition1.norm.weight": 3, "features.norm5.bias": 4}
    legacy = places365.legacy_names(sd)
    assert set(legacy) == {"features.denseblock2.denselayer11.norm.2.running_var",
                           "features.denseblock2.denselayer11.conv.1.weight",
                           "features.transition1.norm.weight", "features.norm5.bias"}
    assert places365.rename_legacy(legacy) == sd


@pytest.mark.parametrize("name", ZOO)
def test_fetch_downloads_the_zoo_file_and_converts_it(name, tmp_path, monkeypatch):
    # `ppjax fetch NAME`: the published URL, saved under the published name, then converted
    # (the download itself is replaced: no network here; the file is a replica in the real layout)
    from ppjax import cli
    from ppjax.config import downloads_dir
    from ppjax.judges import fetch

    spec = get_spec(name)
    assert spec.url == f"http://places2.csail.mit.edu/models_places365/{name}.pth.tar"
    sd = random_torch_state_dict(spec.abstract_variables(), seed=2)
    calls = []

    def fake_download(url, dest, desc=None, timeout=None):
        calls.append((url, dest))
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_converter(name).csail_layout(sd), dest)
        return dest

    monkeypatch.setattr(fetch, "download", fake_download)
    assert cli.main(["fetch", name, "--weights-dir", str(tmp_path)]) == 0
    assert calls == [(spec.url, downloads_dir(tmp_path) / spec.filename)]
    judge = load_judge(name, weights_dir=tmp_path)
    assert not judge.standin and judge.label == name
    # every bias (BatchNorm and linear) landed where its torch name says, renames included
    from flax import traverse_util

    flat = traverse_util.flatten_dict(dict(judge.variables["params"]))
    biases = [k for k in sd if k.endswith(".bias")]
    assert biases
    for k in biases:
        np.testing.assert_array_equal(np.asarray(flat[(*k.split(".")[:-1], "bias")]),
                                      sd[k].numpy())


def test_standin_command_says_stand_in(tmp_path, capsys):
    from ppjax import cli

    assert cli.main(["standin", "wideresnet18_places365", "--weights-dir", str(tmp_path)]) == 0
    assert "STAND-IN" in capsys.readouterr().out
    judge = load_judge("wideresnet18_places365", weights_dir=tmp_path, standin=True)
    assert judge.standin and "STAND-IN" in judge.label
    assert read_metadata(judge_dir("wideresnet18_places365", tmp_path, standin=True))["standin"]


def test_whole_resnet50_is_refused_too(tmp_path):
    from ppjax.convert import resnet50_places365

    src = tmp_path / "whole_resnet50_places365.pth.tar"
    src.write_bytes(b"x")
    with pytest.raises(ConversionError, match="resnet50_places365.pth.tar instead: http://places2"):
        resnet50_places365.convert(src, weights_dir=tmp_path)
