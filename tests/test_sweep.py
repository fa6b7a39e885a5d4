"""``ppjax sweep``: value-only grid changes compile nothing new, rows match direct attacks,
the sweep resumes, and the Pareto front is the brute-force one.

A small ResNet-18 judge at 32x32 on real photo crops keeps compilation cheap."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ppjax.attacks import attack, default_seeds
from ppjax.judges import Judge, get_spec
from ppjax.models.resnet import ResNet18
from ppjax.runs import data, plots, sweep, sweep_config
from tests.conftest import photos_at

EPS = (2 / 255, 4 / 255, 8 / 255)


@pytest.fixture(scope="module")
def tiny_judge() -> Judge:
    spec = dataclasses.replace(get_spec("resnet50_places365"), name="tiny_resnet18",
                               model="ppjax.models.resnet:ResNet18", input_hw=(32, 32))
    module = ResNet18(num_classes=10)
    return Judge(module.init(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32)), module,
                 spec)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory, photo_paths):
    d = tmp_path_factory.mktemp("sweep_images")
    for i, x in enumerate(photos_at(photo_paths, (32, 32), 4)):
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(d / f"img{i}.png")
    return d


def _config(image_dir, out, eps=EPS) -> sweep_config.SweepConfig:
    return sweep_config.parse_config({
        "judge": "resnet50_places365", "images": [str(image_dir)], "batch": 4,
        "output": str(out),
        "grid": [{"attack": "pgd", "eps": list(eps), "steps": 3, "step_size": 1 / 255}],
    })


@pytest.fixture(scope="module")
def first_run(tiny_judge, image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_out")
    cfg = _config(image_dir, out)
    return cfg, sweep.run_sweep(cfg, judge=tiny_judge)


def test_value_only_changes_do_not_recompile(first_run):
    _, rows = first_run
    assert len(rows) == 3
    recompiles = [int(r["recompiles"]) for r in rows]
    assert recompiles[0] >= 1  # the first point compiles (unless cached by an earlier test)...
    assert recompiles[1:] == [0, 0]  # ...the other eps values reuse the same programs


def test_rows_match_direct_attacks(first_run, tiny_judge, image_dir):
    cfg, rows = first_run
    images = data.load_images([image_dir], (32, 32), 64)
    for row, eps in zip(rows, EPS, strict=True):
        assert row["settings"] == {"eps": eps, "steps": 3, "step_size": 1 / 255}
        res = attack("pgd", tiny_judge, images, eps=eps, steps=3, step_size=1 / 255,
                     seeds=default_seeds(4, cfg.seed, 0))
        assert float(row["protection"]) == pytest.approx(float(np.mean(res.success)))
        assert float(row["mean_linf"]) == pytest.approx(float(np.mean(res.linf)), rel=1e-5)
        assert float(row["mean_linf"]) <= eps + 0.5 / 255  # the L-inf budget, after 8-bit rounding
        x0 = np.round(images * 255) / 255
        mse = np.mean((np.asarray(res.images) - x0) ** 2, axis=(1, 2, 3))
        assert float(row["mean_psnr"]) == pytest.approx(float(np.mean(-10 * np.log10(mse))),
                                                        rel=1e-4)


def test_sweep_resumes(first_run, tiny_judge, image_dir, monkeypatch):
    cfg, _ = first_run
    ran = []
    real = sweep.run_point
    monkeypatch.setattr(sweep, "run_point", lambda acfg, *a, **k: ran.append(acfg.eps)
                        or real(acfg, *a, **k))
    rows = sweep.run_sweep(_config(image_dir, cfg.output, EPS + (1 / 255,)), judge=tiny_judge)
    assert ran == [pytest.approx(1 / 255)]  # only the new grid point ran
    assert len(rows) == 4
    with open(f"{cfg.output}/results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    with open(f"{cfg.output}/results.json") as f:
        assert len(json.load(f)["rows"]) == 4
    with Image.open(f"{cfg.output}/pareto.png") as im:
        assert im.size == (720, 480)


def test_pareto_front_is_brute_force():
    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.random((40, 2))]
    dominated = {i for i, (x, y) in enumerate(pts)
                 for (x2, y2) in pts if (x2 <= x and y2 >= y) and (x2, y2) != (x, y)}
    assert sorted(plots.pareto_front(pts)) == sorted(set(range(40)) - dominated)


def test_bad_configs_are_reported(tmp_path):
    with pytest.raises(ValueError, match="unknown setting 'epsilon'"):
        sweep_config.parse_config({"judge": "x", "images": ["a"], "grid": [{"attack": "pgd",
                                                                     "epsilon": [0.1]}]})
    with pytest.raises(KeyError, match="unknown attack"):
        sweep_config.parse_config({"judge": "x", "images": ["a"], "grid": [{"attack": "nope"}]})
    with pytest.raises(ValueError, match="dtype must be"):
        sweep_config.parse_config({"judge": "x", "images": ["a"], "dtype": "float16",
                            "grid": [{"attack": "pgd"}]})
    assert sweep_config.parse_config({"judge": "x", "images": ["a"], "dtype": "bfloat16",
                               "grid": [{"attack": "pgd"}]}).dtype == "bfloat16"
    bad = tmp_path / "bad.toml"
    bad.write_text('judge = "resnet50_places365"\nimages = ["a"]\n')
    from ppjax.cli import main

    assert main(["sweep", str(bad)]) == 2


def test_grid_expands_aliases():
    g = sweep_config.Grid("ifgsm_score", axes=(("eot_quality", ((80, 95), (60, 90))),
                                        ("appeal_weight", (0.0, 0.5))))
    pts = g.points()
    assert len(pts) == 4
    assert pts[0] == (("eot_quality_lo", 80), ("eot_quality_hi", 95), ("appeal_weight", 0.0))


def test_sweep_with_broken_files_goes_on(first_run, tiny_judge, image_dir, tmp_path):
    """A corrupt file and a decompression bomb are per-file errors; the point runs on the other
    images (same numbers as the clean sweep), and results.json holds numbers as numbers."""
    from tests.test_imageio import png_raw

    d = tmp_path / "imgs"
    d.mkdir()
    for p in image_dir.iterdir():
        (d / p.name).write_bytes(p.read_bytes())
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "bomb.png").write_bytes(png_raw(100_000, 100_000, 8, 2, None))
    (d / ".hidden.png").write_bytes(b"x")
    cfg = _config(d, tmp_path / "out", eps=EPS[:1])
    rows = sweep.run_sweep(cfg, judge=tiny_judge)
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(Path(e["name"]).name for e in res["errors"]) == ["bomb.png", "broken.jpg"]
    assert "decompression bomb" in next(e["error"] for e in res["errors"]
                                        if e["name"].endswith("bomb.png"))
    assert res["images"] == 4 and len(res["rows"]) == 1 and rows == res["rows"]
    row = res["rows"][0]
    assert isinstance(row["images"], int) and row["images"] == 4
    for k in ("protection", "mean_l2", "mean_psnr", "seconds"):
        assert isinstance(row[k], float), k
    assert row["settings"]["eps"] == EPS[0]
    ref = next(r for r in first_run[1] if r["settings"]["eps"] == EPS[0])
    assert row["protection"] == pytest.approx(float(ref["protection"]))
    assert row["mean_l2"] == pytest.approx(float(ref["mean_l2"]), rel=1e-6)


def test_bad_points_are_all_reported_before_any_work(tmp_path):
    from ppjax.errors import SetupError

    cfg = sweep_config.parse_config({"judge": "resnet50_places365", "images": [str(tmp_path)],
                              "output": str(tmp_path / "o"),
                              "grid": [{"attack": "pgd", "eps": [-1.0, 0.01, "abc"]}]})
    with pytest.raises(SetupError) as e:
        sweep.run_sweep(cfg, judge=object())
    assert len(e.value.problems) == 2 and "eps=-1" in str(e.value) and "'abc'" in str(e.value)
    assert not (tmp_path / "o").exists()


def test_sweep_cli_exit_codes(tiny_judge, image_dir, tmp_path, monkeypatch, capsys):
    """``ppjax sweep``: a broken file is exit 1 with its error printed; a bad config exit 2."""
    import ppjax
    from ppjax.cli import main

    monkeypatch.setattr(ppjax, "load_judge", lambda *a, **k: tiny_judge)
    d = tmp_path / "imgs"
    d.mkdir()
    for p in sorted(image_dir.iterdir())[:2]:
        (d / p.name).write_bytes(p.read_bytes())
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"judge": "resnet50_places365", "images": ["imgs"], "batch": 2,
                               "grid": [{"attack": "pgd", "eps": EPS[0], "steps": 3,
                                         "step_size": 1 / 255}]}))
    assert main(["sweep", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err
    assert (tmp_path / "sweep-out" / "results.json").exists()
    cfg.write_text(json.dumps({"judge": "resnet50_places365", "images": ["imgs"],
                               "grid": [{"attack": "pgd", "eps": [0.0, -1.0]}]}))
    assert main(["sweep", str(cfg), "--output", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "eps=0" in err and "eps=-1" in err
    assert not (tmp_path / "o2").exists()


def test_appeal_figures_are_the_evaluations(resnet_standin, photo_paths, tmp_path, monkeypatch):
    """The issue-15 appeal bug: ResNet-50 (256x256) attacked, nima_mobilenetv2 (nima.pytorch:
    224x224, bilinear) as the appeal judge, the pair of the sweep's own docstring. The sweep's
    appeal figures equal ``appeal_score`` of the images as ``ppjax evaluate`` scores them: the
    originals decoded to the 2019 size (``data.load_item``), the protected ones as their 8-bit
    PNG, both brought to NIMA by the evaluation's rule (``appeal_resize_rule``, "auto")."""
    import ppjax
    from ppjax.attacks.appeal import appeal_resize_rule, appeal_score
    from ppjax.convert import nima_mobilenetv2
    from ppjax.image import io as imageio

    nima_mobilenetv2.make_standin(weights_dir=tmp_path / "w")
    appeal = ppjax.load_judge("nima_mobilenetv2", weights_dir=tmp_path / "w", standin=True)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, x in enumerate(photos_at(photo_paths, (300, 280), 2)):  # not 256x256: resized
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(d / f"p{i}.png")
    cfg = sweep_config.parse_config({
        "judge": "resnet50_places365", "images": [str(d)], "batch": 2, "output": str(tmp_path / "o"),
        "appeal_judge": "nima_mobilenetv2",
        "grid": [{"attack": "pgd", "eps": 4 / 255, "steps": 1, "step_size": 4 / 255}]})
    points = []
    real = sweep.run_point
    monkeypatch.setattr(sweep, "run_point", lambda *a, **k: points.append(real(*a, **k))
                        or points[-1])
    (row,) = sweep.run_sweep(cfg, judge=resnet_standin, appeal=appeal)

    def evaluation_appeal(u8):  # as ppjax.runs.evaluate scores a batch
        rule = appeal_resize_rule(appeal, "auto")
        return np.asarray(jax.jit(appeal_score, static_argnums=2)(
            appeal, imageio.to_float01(u8), rule))

    originals = np.stack([data.load_item(data.Item(p.name, str(p)), 2019).image
                          for p in sorted(d.iterdir())])
    protected = imageio.to_uint8(points[0]["images"])  # the PNG a protect run would write
    assert row["mean_appeal_before"] == pytest.approx(float(evaluation_appeal(originals).mean()),
                                                      rel=1e-5)
    assert row["mean_appeal"] == pytest.approx(float(evaluation_appeal(protected).mean()),
                                               rel=1e-5)
    assert row["mean_appeal"] != pytest.approx(row["mean_appeal_before"], rel=1e-7)
