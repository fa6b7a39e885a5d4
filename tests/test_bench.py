"""``ppjax bench`` (issue 26): the command in-process on a tiny stand-in judge, its usage errors,
and the measurement helpers against known quantities."""

from __future__ import annotations

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


def test_iteration_flops_counts_the_convolutions(run):
    # ResNet-18's forward at 32x32 from its layer shapes (multiply-adds x 2); the input
    # gradient adds about one more forward's worth (the backward through the convolutions'
    # inputs, no weight gradients): between 1.8x and 2.6x the forward
    import ppjax

    _, payload, d = run
    judge = ppjax.load_judge("resnet18_places365", weights_dir=str(d / "w"), standin=True)
    fwd, hw = 0, 32
    fwd += 2 * (hw // 2) ** 2 * 7 * 7 * 3 * 64  # stem, stride 2
    hw //= 4  # stem + max-pool
    cin = 64
    for i, c in enumerate((64, 128, 256, 512)):
        if i:
            hw //= 2
            fwd += 2 * hw * hw * cin * c  # 1x1 downsample
        fwd += 2 * hw * hw * 9 * (cin * c + 3 * c * c)  # two basic blocks, two 3x3 convs each
        cin = c
    fwd += 2 * 512 * 365
    per_img = bench.iteration_flops(judge, 2)
    assert 1.8 * fwd < per_img < 2.6 * fwd, (per_img, fwd)


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
