"""The GPU check's parts on the CPU (issue 28): ppjax.compat, stand-ins written without torch, the
choice of carried wheels, and benchmarks.gpu's measurements at a tiny size. The whole script's
dry run is ``make gpu-dry-run`` (docs/gpu.md)."""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import gpu, gpu_env
from ppjax import compat
from ppjax.convert import get_converter
from ppjax.convert.common import (
    ConversionError,
    load_torch_file,
    random_state_dict,
    write_standin_file,
)
from ppjax.judges import get_spec
from ppjax.judges.checkpoint import load_converted, read_metadata

ZOO = "resnet18_places365"  # the smallest zoo judge: quick to write and convert


def test_compiled_flops_is_the_matmul_count():
    m, k, n = 32, 48, 16
    c = jax.jit(lambda a, b: a @ b).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert compat.compiled_flops(c) == pytest.approx(2 * m * k * n, rel=0.01)


def _convert_standin(root, fmt):
    spec, conv = get_spec(ZOO), get_converter(ZOO)
    src = write_standin_file(spec, conv.csail_layout, root / fmt, seed=3, fmt=fmt)
    out = conv.convert(src, root / fmt, standin=True)
    variables, _ = load_converted(out, spec.abstract_variables())
    return src, out, variables


@pytest.fixture(scope="module")
def npz_standin(tmp_path_factory):
    return _convert_standin(tmp_path_factory.mktemp("npz_standin"), "npz")


def test_npz_standin_goes_through_the_converter(npz_standin):
    src, out, variables = npz_standin
    assert src.name == get_spec(ZOO).filename + ".standin.npz"
    raw = load_torch_file(src)
    assert raw["arch"] == "resnet18" and "module.conv1.weight" in raw["state_dict"]
    meta = read_metadata(out)
    assert meta["standin"] and meta["source_file"] == src.name and len(meta["sha256"]) == 64
    # torch's layouts, by the formulas: conv OIHW -> HWIO, linear [out, in] -> [in, out]
    sd = random_state_dict(get_spec(ZOO).abstract_variables(), seed=3)
    np.testing.assert_array_equal(np.asarray(variables["params"]["conv1"]["kernel"]),
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["kernel"]),
                                  sd["fc.weight"].T)
    np.testing.assert_array_equal(np.asarray(variables["batch_stats"]["bn1"]["var"]),
                                  sd["bn1.running_var"])


def test_npz_standin_refuses_a_corrupt_file(tmp_path):
    bad = tmp_path / "x.pth.tar.standin.npz"
    bad.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ConversionError, match="corrupt NumPy archive"):
        get_converter(ZOO).convert(bad, tmp_path, standin=True)


def test_npz_and_torch_standins_hold_the_same_weights(npz_standin, tmp_path):
    import torch  # noqa: F401  (skipped where torch is not installed: tests/conftest.py)

    _, _, a = npz_standin
    _, _, b = _convert_standin(tmp_path, "torch")
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_carried_wheels_are_chosen_by_what_is_missing(tmp_path):
    for name in ("tqdm-4.70.1-py3-none-any.whl", "no_such_dist-1.0-py3-none-any.whl",
                 "numpy-2.5.5-cp312-cp312-manylinux_2_28_x86_64.whl"):
        (tmp_path / name).write_bytes(b"")
    chosen = {w.name for w in gpu_env.wheels_to_install(tmp_path, {"tqdm": ">=999", "numpy": ">=1"})}
    # absent here, and installed but outside the range: carried; installed in range: not
    assert chosen == {"no_such_dist-1.0-py3-none-any.whl", "tqdm-4.70.1-py3-none-any.whl"}
    assert set(gpu_env.requirements()["jax"].split(",")) == {">=0.10.2", "<0.12"}


def test_peak_table():
    assert gpu.peak_bf16_tflops("NVIDIA H100 80GB HBM3") == (989.0, "datasheet (H100)")
    assert gpu.peak_bf16_tflops("NVIDIA H100 PCIe")[0] == 756.0
    assert gpu.peak_bf16_tflops("NVIDIA H200")[0] == 989.0
    assert gpu.peak_bf16_tflops("cpu")[0] is None
    assert gpu.peak_bf16_tflops("cpu", 2.0) == (2.0, "--peak-tflops")


def test_bench_and_summary_on_cpu(standin_weights, tmp_path):
    """One batch of 1 on the CPU, with torch eager (channels-last, bf16 autocast) on the CPU
    where torch is installed: the same code the GPU runs, with a made-up peak."""
    res = gpu.bench(argparse.Namespace(
        json=str(tmp_path / "throughput.json"), weights_dir=str(standin_weights), batches=[1],
        iters=1, rounds=1, torch=True, torch_compile_batches=[], torch_compile_timeout=60,
        peak_tflops=2.0))
    row = res["rows"][0]
    # ResNet-50 at 256x256: 4.1 GMAC at 224x224 (He et al.) x (256/224)^2 x 2 FLOP/MAC = 10.7
    # GFLOP forward; the input gradient costs about as much again
    assert 17 < row["gflop_per_img_it"] < 25
    assert row["share_of_bf16_peak"] == pytest.approx(
        row["img_it_per_s"] * row["flops_per_iter"] / (2.0e12))
    assert row["torch_not_run"]["torch.compile channels-last bf16"].startswith("n/a")
    if row["torch_device"] is not None:
        assert row["torch_best"] == "torch eager channels-last bf16"
        assert row["ratio_vs_torch_gpu"] == pytest.approx(
            row["img_it_per_s"] / row["torch"][row["torch_best"]]["img_it_per_s"])
    out = gpu.summarise(tmp_path)
    assert out["missing"] == ["pipeline.json"] and out["pipeline_efficiency"] is None
    assert out["goals"]["share_of_bf16_peak"]["met"] == (row["share_of_bf16_peak"] >= 0.4)
    assert out["goals"]["pipeline_efficiency"]["met"] is None
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert saved["pgd"]["1"]["img_it_per_s"] == row["img_it_per_s"]
    assert "| 1 |" in (tmp_path / "summary.md").read_text()
