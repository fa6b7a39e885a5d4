"""Bad input to the ResNet-50-Places365 converter and the fetch command: one clear error that
names the file and the problem, and nothing written."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ppjax import load_judge
from ppjax.convert import resnet50_places365
from ppjax.convert.common import ConversionError, random_torch_state_dict
from ppjax.judges import fetch, get_spec, judge_dir
from tests.torch_ref.resnet import ResNet


def _assert_nothing_written(weights):
    assert not judge_dir("resnet50_places365", weights).exists()
    assert not any(p.name.startswith(".resnet50_places365") for p in weights.iterdir())


def test_other_architecture_lists_every_problem(tmp_path):
    # a ResNet-26-like net (2 blocks per stage) with 10 classes: missing, mis-shaped keys
    other = ResNet((2, 2, 2, 2), num_classes=10).state_dict()
    other["extra.weight"] = torch.zeros(3)
    src = tmp_path / "other.pth.tar"
    torch.save(resnet50_places365.csail_layout(other), src)
    with pytest.raises(ConversionError) as e:
        resnet50_places365.convert(src, weights_dir=tmp_path)
    msg = str(e.value)
    assert str(src) in msg
    assert "layer3.5.conv1.weight" in msg  # missing
    assert "extra.weight" in msg  # unexpected
    assert "fc.weight: file has (10, 2048), torchvision ResNet-50" in msg  # mis-shaped
    assert "missing:" in msg and "unexpected:" in msg and "mis-shaped:" in msg
    # every missing key is listed, not just the first
    n_missing = int(msg.split(" missing")[0].rsplit("(", 1)[1])
    assert n_missing == msg.split("missing:")[1].split("unexpected:")[0].count("\n    ")
    _assert_nothing_written(tmp_path)


def test_plain_state_dict_without_prefix_is_accepted(tmp_path):
    abstract = get_spec("resnet50_places365").abstract_variables()
    sd = random_torch_state_dict(abstract, seed=3)
    src = tmp_path / "plain.pth"
    torch.save(sd, src)
    resnet50_places365.convert(src, weights_dir=tmp_path)
    judge = load_judge("resnet50_places365", weights_dir=tmp_path)
    k = judge.variables["params"]["layer2"]["0"]["conv2"]["kernel"]
    np.testing.assert_array_equal(np.asarray(k), sd["layer2.0.conv2.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(
        np.asarray(judge.variables["batch_stats"]["layer4"]["2"]["bn3"]["var"]),
        sd["layer4.2.bn3.running_var"].numpy())


def test_truncated_file(tmp_path):
    abstract = get_spec("resnet50_places365").abstract_variables()
    good = tmp_path / "good.pth.tar"
    torch.save(resnet50_places365.csail_layout(random_torch_state_dict(abstract)), good)
    src = tmp_path / "resnet50_places365.pth.tar"
    src.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    good.unlink()
    with pytest.raises(ConversionError, match="truncated or corrupt") as e:
        resnet50_places365.convert(src, weights_dir=tmp_path)
    assert str(src) in str(e.value)
    _assert_nothing_written(tmp_path)


def test_pickle_that_is_not_weights_only(tmp_path):
    src = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=0.1)}, src)
    with pytest.raises(ConversionError, match="not a weights-only checkpoint") as e:
        resnet50_places365.convert(src, weights_dir=tmp_path)
    assert str(src) in str(e.value)
    _assert_nothing_written(tmp_path)


def test_missing_file(tmp_path):
    src = tmp_path / "nope.pth.tar"
    with pytest.raises(ConversionError, match="no such file") as e:
        resnet50_places365.convert(src, weights_dir=tmp_path)
    assert str(src) in str(e.value)


def test_unconverted_judge_explains_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        load_judge("resnet50_places365", weights_dir=tmp_path)
    msg = str(e.value)
    assert get_spec("resnet50_places365").url in msg
    assert str(tmp_path / "downloads" / "resnet50_places365.pth.tar") in msg
    assert "--standin" in msg


def test_fetch_fails_fast_offline_naming_url_and_path(tmp_path, monkeypatch):
    # a closed local port stands in for "no network": no traffic leaves the machine
    url = "http://127.0.0.1:9/models_places365/resnet50_places365.pth.tar"
    dest = tmp_path / "downloads" / "resnet50_places365.pth.tar"
    t0 = time.monotonic()
    with pytest.raises(fetch.FetchError) as e:
        fetch.download(url, dest)
    assert time.monotonic() - t0 < 10
    assert url in str(e.value) and str(dest) in str(e.value)
    assert not dest.exists() and not dest.with_name(dest.name + ".part").exists()


def test_standin_is_flagged(resnet_standin, standin_weights):
    assert resnet_standin.standin
    assert "STAND-IN" in resnet_standin.label
    # made by the real converter from a file in the real layout
    raw = torch.load(standin_weights / "downloads" / "resnet50_places365.pth.tar.standin",
                     weights_only=True)
    assert all(k.startswith("module.") for k in raw["state_dict"])
    # the stand-in never shadows real weights
    with pytest.raises(FileNotFoundError):
        load_judge("resnet50_places365", weights_dir=standin_weights)


def test_every_judge_has_a_registered_converter_that_keeps_torch_unloaded():
    """Each spec's ``converter`` names a :class:`ppjax.convert.Converter` for that judge, and
    resolving every converter (the registry is lazy) imports neither torch nor h5py: only reading
    a file or writing a stand-in does."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from ppjax.convert import CONVERTERS, Converter, get_converter\n"
        "from ppjax.judges import JUDGES\n"
        "assert 'torch' not in sys.modules\n"
        "for name, spec in JUDGES.items():\n"
        "    c = get_converter(spec.converter)\n"
        "    assert isinstance(c, Converter) and c.NAME == name, name\n"
        "    assert spec.filename in c.SOURCE_FORMAT, name\n"
        "assert sorted(CONVERTERS) == sorted(s.converter for s in JUDGES.values())\n"
        "print(sorted(m for m in ('torch', 'h5py') if m in sys.modules))\n"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=repo)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    with pytest.raises(KeyError, match="unknown converter 'nope'; known: alexnet_places365"):
        from ppjax.convert import get_converter

        get_converter("nope")
