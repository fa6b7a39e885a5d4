"""``ppjax bench`` (issue 26): the command in-process on a tiny stand-in judge, its usage errors,
and the measurement helpers against known quantities."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from ppjax import bench
from ppjax.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--judge", "resnet18_places365", "--standin", "--weights-dir", str(d / "w"),
            "--size", "32x32", "--batch", "2", "--steps", "2", "--rounds", "2", "--attacks", "pgd",
            "--no-torch", "--gemm-n", "256", "--json", str(d / "b.json"), "--plot",
            str(d / "b.png")]
    rc = main(argv)
    return rc, json.loads((d / "b.json").read_text()), d


def test_bench_command_measures_and_writes(run, capsys):
    rc, payload, d = run
    assert rc == 0
    assert payload["standin"] and payload["input_hw"] == [32, 32] and payload["platform"] == "cpu"
    (row,) = payload["rows"]
    assert row["engine"] == "ppjax pgd" and row["rounds"] == 2
    # img·it/s is the batch times the iterations over the median call time
    assert row["img_it_per_s"] == pytest.approx(2 * 2 / row["seconds_per_call"])
    assert row["first_call_s"] >= row["compile_s"] >= 0
    assert row["peak_mem_mib"] > 100  # a process with jax loaded
    # share of peak: achieved FLOP/s (img·it/s x XLA's FLOPs per image-iteration) / GEMM peak
    assert row["peak_fraction"] == pytest.approx(
        row["img_it_per_s"] * payload["flops_per_img_it"] / payload["peak"]["flops_per_s"])
    assert payload["not_run"] == {"torch pgd": "n/a (--no-torch)"}
    assert Image.open(d / "b.png").format == "PNG"


def _taps(n: int, k: int, s: int, p: int) -> tuple[int, int]:
    """(output size, kernel taps that land inside the input, summed over the outputs) of a
    1-D convolution: what a FLOP count that skips the zero padding multiplies."""
    m = (n + 2 * p - k) // s + 1
    return m, sum(1 for o in range(m) for t in range(k) if 0 <= o * s - p + t < n)


def _conv(n, cin, cout, k, s, p):
    m, taps = _taps(n, k, s, p)
    return m, 2 * cin * cout * taps * taps


def resnet18_forward_flops(n: int) -> int:
    """ResNet-18's forward FLOPs (2 x multiply-adds) on an n x n image, padding taps skipped."""
    n, total = _conv(n, 3, 64, 7, 2, 3)
    n = (n + 2 - 3) // 2 + 1  # max-pool 3x3 s2 p1
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        s = 2 if i else 1
        m, f = _conv(n, cin, c, 3, s, 1)
        total += f + (_conv(n, cin, c, 1, s, 0)[1] if i else 0)
        total += 3 * _conv(m, c, c, 3, 1, 1)[1]
        n, cin = m, c
    return total + 2 * 512 * 365


def test_iteration_flops_counts_the_convolutions(run):
    # one PGD iteration = the forward + the input gradient, whose backward through each
    # convolution's input costs about one more forward (no weight gradients): ~2x the forward
    import ppjax

    _, payload, d = run
    judge = ppjax.load_judge("resnet18_places365", weights_dir=str(d / "w"), standin=True)
    judge = judge.replace(spec=dataclasses.replace(judge.spec, input_hw=(32, 32)))
    fwd = resnet18_forward_flops(32)
    per_img = bench.iteration_flops(judge, 2)
    assert 1.8 * fwd < per_img < 2.3 * fwd, (per_img, fwd)


def test_peak_rss_window_sees_a_new_allocation():
    if not bench.reset_peak_rss():
        pytest.skip("no /proc/self/clear_refs")
    before = bench.peak_rss_mib()
    a = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    assert bench.peak_rss_mib() - before > 250
    del a
    bench.reset_peak_rss()
    assert bench.peak_rss_mib() < before + 150


@pytest.mark.parametrize("argv, needle", [
    (["--judge", "nope"], "unknown judge 'nope'"),
    (["--judge", "resnet18_places365", "--attacks", "pgd,nope"], "'nope'"),
    (["--judge", "resnet18_places365", "--batch", "0"], "--batch must be >= 1"),
    (["--judge", "resnet18_places365", "--size", "3by3"], "--size: expected HxW"),
])
def test_bench_usage_errors(argv, needle, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
