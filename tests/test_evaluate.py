"""Metrics against independent formulas, the 2020 procedure (Pillow JPEG-90, score > 50) with a
tiny score judge, and ``--compare``."""

from __future__ import annotations

import io
import json

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from ppjax import cli
from ppjax.image import metrics
from ppjax.image.color import ciede2000_rgb
from ppjax.judges import Judge, JudgeSpec
from ppjax.runs.evaluate import run_evaluate


def ssim_reference(x, y):
    """SSIM as skimage computes it with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1: scipy Gaussian filter (truncate 3.5, reflect),
    then the 5-pixel border cropped, mean over positions and channels."""
    out = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda z: gaussian_filter(z, sigma=1.5, truncate=3.5, mode="reflect")
        ux, uy = f(a), f(b)
        vx, vy, cxy = f(a * a) - ux * ux, f(b * b) - uy * uy, f(a * b) - ux * uy
        c1, c2 = 0.01**2, 0.03**2
        s = ((2 * ux * uy + c1) * (2 * cxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        out.append(s[5:-5, 5:-5].mean())
    return float(np.mean(out))


@pytest.fixture(scope="module")
def pair(photos_256):
    x = photos_256[:2, :48, :40]
    rng = np.random.default_rng(0)
    y = np.clip(np.round((x + rng.normal(0, 0.03, x.shape)) * 255) / 255, 0, 1).astype(np.float32)
    return x, y


def test_psnr_ssim_ciede_against_references(pair):
    x, y = pair
    m = metrics.all_metrics(x, y)
    mse = ((x.astype(np.float64) - y) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(m["psnr"], 10 * np.log10(1 / mse), rtol=1e-5)
    np.testing.assert_allclose(m["ssim"], [ssim_reference(x[i], y[i]) for i in range(2)],
                               atol=2e-5)
    assert np.all(m["ssim"] < 1) and np.all(m["ssim"] > 0.3)
    np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
    np.testing.assert_allclose(m["ciede2000"],
                               np.asarray(ciede2000_rgb(x, y)).mean(axis=(1, 2)), rtol=1e-5)
    assert np.isinf(metrics.psnr(x, x)).all()


class MeanScore(nn.Module):
    """A parameter-free "BIQA" judge: score = 100 * mean brightness (0..100)."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return 100.0 * jnp.mean(x, axis=(1, 2, 3))


def _fake_biqa() -> Judge:
    spec = JudgeSpec(name="mean_score", model="tests:MeanScore", input_hw=(384, 512),
                     output="score", filename="-", url="-", converter="-", architecture="test",
                     preprocessing="none", year=2020)
    return Judge(variables={}, module=MeanScore(), spec=spec, standin=True)


def _jpeg90_score(a: np.ndarray) -> float:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    d = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float64) / 255.0
    return 100.0 * d.mean()


def test_2020_procedure_and_compare(photo_paths, tmp_path):
    orig_dir, run_dir = tmp_path / "orig", tmp_path / "run"
    orig_dir.mkdir()
    run_dir.mkdir()
    rng = np.random.default_rng(1)
    names = []
    for i, p in enumerate(photo_paths + photo_paths[:1]):
        o = np.asarray(Image.open(p).convert("RGB").resize((512, 384), Image.BICUBIC))
        o = np.clip(o.astype(int) + 80, 0, 255).astype(np.uint8)  # bright originals
        Image.fromarray(o).save(orig_dir / f"img{i}.png")
        shift = (-40, -150, 0)[i]  # one darkened a little, one a lot, one untouched
        noise = rng.integers(-3, 4, o.shape)
        a = np.clip(o.astype(int) + shift + noise, 0, 255).astype(np.uint8)
        Image.fromarray(a).save(run_dir / f"TEAM_x_img{i}.png")
        names.append(f"img{i}.png")
    judge = _fake_biqa()
    reps = []
    for k, rd in enumerate((run_dir, orig_dir)):
        out = tmp_path / f"ev{k}"
        rep = run_evaluate(2020, rd, out, images=orig_dir, run_code=None if k else "TEAM_x",
                           judge=judge, no_appeal=True, batch_size=2)
        reps.append(out)
        rows = {r["name"]: r for r in rep["per_image"]}
        assert sorted(rows) == names and rep["n_failed"] == 0
        scores, clean = [], []
        for n in names:
            a = np.asarray(Image.open((rd / f"TEAM_x_{n}") if k == 0 else (rd / n)))
            o = np.asarray(Image.open(orig_dir / n))
            scores.append(_jpeg90_score(a))
            clean.append(_jpeg90_score(o))
            assert rows[n]["score"] == pytest.approx(scores[-1], abs=1e-3)
        acc = float(np.mean(np.array(scores) > 50))
        assert rep["protection"]["biqa_accuracy_jpeg90"] == pytest.approx(acc)
        assert rep["protection"]["biqa_accuracy_clean_jpeg90"] == pytest.approx(
            float(np.mean(np.array(clean) > 50)))
        assert (ev := json.loads((out / "report.json").read_text()))["task"] == 2020
        assert "hist_protection.png" in ev["figures"]
        if k == 0:
            assert 0 < acc < 1  # the procedure separates the images
    assert reps  # the originals evaluated against themselves: identical images
    rep1 = json.loads((reps[1] / "report.json").read_text())
    assert rep1["quality"]["n_identical"] == 3 and rep1["protection"]["accuracy_drop"] == 0
    cmp_dir = tmp_path / "cmp"
    assert cli.main(["evaluate", "--compare", str(reps[0]), str(reps[1]),
                     "--out", str(cmp_dir)]) == 0
    md = (cmp_dir / "compare.md").read_text()
    r0 = json.loads((reps[0] / "report.json").read_text())
    assert "biqa_accuracy_jpeg90" in md and "STAND-IN" in md
    row = next(x for x in md.splitlines() if x.startswith("| biqa_accuracy_jpeg90 |"))
    assert f"{r0['protection']['biqa_accuracy_jpeg90']:.4f}" in row
    assert len(json.loads((cmp_dir / "compare.json").read_text())["runs"]) == 2
