"""Fidelity to the papers and the organisers (issue 13).

* ACE (BMVC and journal) and PerC-AL (default and kappa) against compact torch references
  (``tests/torch_attack_ref.py``, written from the algorithms) on the torch replica of
  ResNet-50 with the calibrated stand-in's weights: same images, per image success identical on
  >= 90% and final distortion within 10% where both fooled.
* What the originals do that ppjax used to do differently: continuous PerC-AL iterate, clean
  image for a never-fooled image, per-image plateau stop, the stand-in's input dependence.
* The 2020 organisers' centre crop without resize and alpha rule, the appeal resize rules,
  evaluation's relative drop / ranked flag / JPEG runs / mixed-task refusal.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import ppjax
from ppjax.attacks import get_attack, loop
from ppjax.attacks.appeal import appeal_input, appeal_resize_rule, resize_bilinear
from ppjax.image import io as imageio
from tests import torch_attack_ref as ref

REF_HW = (64, 64)  # ResNet-50 is fully convolutional; small images keep CI lean
REF_B = 4
REF_STEPS = 60
# ACE vs its torch reference, per image, at the measured precision (4 photos, 60 steps): BMVC
# 3.5e-6 at most; journal 1e-7 on three images and 3.3e-3 on the fourth (its unit-length steps
# of size 1 let a float32 difference grow)
ACE_RTOL = {"ace": 1e-5, "ace_journal": 5e-3}


# ----------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def resnet_pair(standin_weights, resnet_standin):
    """(ppjax judge at REF_HW, torch replica) with the calibrated stand-in's weights, read from
    the stand-in file in the CSAIL layout."""
    from ppjax.config import downloads_dir
    from tests.torch_ref.resnet import resnet50

    src = downloads_dir(standin_weights) / "resnet50_places365.pth.tar.standin"
    sd = torch.load(src, weights_only=True)["state_dict"]
    net = resnet50(365)
    net.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    judge = resnet_standin.replace(spec=dataclasses.replace(resnet_standin.spec,
                                                            input_hw=REF_HW))
    return judge, ref.NHWCClassifier(net)


@pytest.fixture(scope="module")
def ref_images():
    from ppjax.convert.common import augmented_crops, calibration_photos

    return augmented_crops(calibration_photos(), REF_HW, REF_B, seed=11)


def u8(a) -> np.ndarray:
    return np.round(np.asarray(a, np.float64) * 255).astype(np.uint8)


def _agree(ours_success, ours_dist, theirs):
    s1, s2 = np.asarray(ours_success, bool), np.asarray(theirs["success"], bool)
    both = s1 & s2
    rel = np.abs(np.asarray(ours_dist)[both] - theirs["distortion"][both]) / np.maximum(
        theirs["distortion"][both], 1e-12)
    return float(np.mean(s1 == s2)), (float(rel.max()) if both.any() else 0.0), int(both.sum())


def test_standin_top1_depends_on_the_input(resnet_pair, ref_images, resnet_standin, photos_256):
    """The calibrated stand-in is not a constant classifier (the uncalibrated one gave one
    class to 7 of 8 photos), and the torch replica agrees with it."""
    judge, tm = resnet_pair
    z = np.asarray(judge(jnp.asarray(ref_images)))
    zt = tm(torch.as_tensor(ref_images)).detach().numpy()
    np.testing.assert_allclose(z, zt, rtol=1e-3, atol=1e-3)
    top = np.asarray(jnp.argmax(resnet_standin(jnp.asarray(photos_256)), -1))
    assert len(set(top.tolist())) >= 3, top


def perc_al_shadow(judge, model, x, labels, steps: int, kappa: float):
    """The torch reference's PerC-AL run (traced) and, at EVERY iteration t, ppjax's loop step
    started from the reference's state (its continuous perturbation delta_t). Per iteration:
    ``(ppjax's judgement, the reference's, the reference's signed distance to the decision,
    ||ppjax's delta_{t+1} - reference's delta_{t+1}|| / ||reference's step||)``. Comparing one
    step at a time from the same state tests the algorithm without the amplification of float
    rounding along a chaotic trajectory."""
    trace = []
    theirs = ref.perc_al(model, x, labels, steps, kappa=kappa, trace=trace)
    cfg = get_attack("perc_al", steps=steps, kappa=kappa)
    cfg = jax.tree.map(jnp.float32, cfg)  # the traced values as f32 arrays, as the programs
    b = len(x)
    aux = {"labels": jnp.asarray(labels, jnp.int32), "targets": jnp.full(b, -1, jnp.int32),
           "group": jnp.zeros(1, bool)}
    seeds = jnp.arange(b, dtype=jnp.uint32)
    x0 = jnp.asarray(x)
    s0 = jax.jit(lambda m: loop.init(cfg, m, x0, aux, seeds))({"judge": judge})
    one = jax.jit(lambda m, st: loop.step(cfg, m, x0, seeds, st))
    rows = []
    for t, (delta, adv, edge) in enumerate(trace):
        new = one({"judge": judge}, s0._replace(params=jnp.asarray(delta),
                                                progress=s0.progress._replace(t=jnp.int32(t))))
        err = np.zeros(b)
        if t < steps:
            nxt = trace[t + 1][0]
            size = np.sqrt(((nxt - delta) ** 2).reshape(b, -1).sum(1))
            err = np.sqrt(((np.asarray(new.params) - nxt) ** 2).reshape(b, -1).sum(1)) / (
                np.maximum(size, 1e-12))
        rows.append((np.asarray(new.progress.success), adv, edge, err))
    return theirs, rows


def check_shadow(rows, ce_tol: float, colour_tol: float, tie: float = 1e-3):
    """Same judgement at every iteration (except near-ties, |distance to the decision| <= tie)
    and the same next iterate: colour steps within ``colour_tol``, cross-entropy steps within
    ``ce_tol`` (relative to the step's length)."""
    for t, (ours, theirs, edge, err) in enumerate(rows):
        differ = (ours != theirs) & (np.abs(edge) > tie)
        assert not differ.any(), (t, ours, theirs, edge)
        colour = theirs & (ours == theirs)
        assert (err[colour] <= colour_tol).all(), ("colour step", t, err, theirs)
        assert (err[~theirs] <= ce_tol).all(), ("CE step", t, err, theirs)


@pytest.mark.parametrize("method", ["ace", "ace_journal", "perc_al", "perc_al_kappa"])
def test_method_agrees_with_torch_reference(resnet_pair, ref_images, method):
    """ACE (BMVC and journal): success and step counts identical on every image, and the final
    regulariser (journal: the CIEDE2000 distance) equal within :data:`ACE_RTOL` where both
    fooled (the measured precision).

    PerC-AL: the ALGORITHM is checked step for step (:func:`perc_al_shadow`, kappa 0; kappa on
    the small network): from the reference's state, ppjax judges the same way at every one of
    the 61 iterations and its next iterate is the reference's, colour steps to 1e-3 (measured
    <= 3.4e-4; they also pin the cosine schedule), cross-entropy steps to 0.1 (measured <= 2.4e-2,
    6.3% with kappa 1). The CE steps are looser because the calibrated ResNet-50's input
    gradient is ill-conditioned in float32: at the clean image, torch's own float32 gradient is
    4.7% from its float64 gradient on one of these images (ppjax's 4.3%).
    End to end, success is identical (the issue's >= 90%), but the final CIEDE2000 distortion
    is NOT within 10% on every image, and cannot be: PerC-AL keeps its 8-bit copy at the
    decision boundary (it steps back toward the clean image until it is no longer adversarial,
    then across again), and the trajectory visits near-ties (margins within 0.004-0.02 of 0) a
    few times per image. A float32 difference in a step decides such a tie either way and the
    trajectories part. Measured (4 images, 60 steps, distortions): torch float64 8.77, 4.90,
    16.84, 6.78; torch float32 with 2 threads 8.81, 4.90, 15.12, 6.66; with 1 thread 9.10,
    4.90, 18.71, 6.66; ppjax 8.80, 4.90, 16.37, 10.68. Torch float32 is itself 10-11% from
    torch float64 on the third image, and 1 vs 2 threads differ by 24% there. Checked end to
    end: within 10% on at least half the images."""
    judge, tm = resnet_pair
    x = ref_images
    labels = np.asarray(jnp.argmax(judge(jnp.asarray(x)), -1))
    torch.manual_seed(0)
    if method == "ace":
        res = ppjax.attack("ace", judge, x, labels, steps=REF_STEPS, backend="xla")
        theirs = ref.ace(tm, x, labels, REF_STEPS)
        dist = res.extras["best_key"]
    elif method == "ace_journal":
        res = ppjax.attack("ace", judge, x, labels, preset="journal", steps=REF_STEPS,
                           backend="xla")
        theirs = ref.ace(tm, x, labels, REF_STEPS, lam=0.0, lr=1.0, theta_min=1 / 64,
                         theta_max=16 / 64, journal=True)
        dist = np.asarray(ppjax_reg(res.images, x))
        theirs["distortion"] = np.asarray(ppjax_reg(theirs["images"], x))
    else:
        kappa = 1.0 if method == "perc_al_kappa" else 0.0  # stand-in logits are O(1), not O(40)
        res = ppjax.attack("perc_al", judge, x, labels, steps=REF_STEPS, kappa=kappa,
                           backend="xla")
        if kappa:  # kappa is checked step for step on the small network (CI time)
            theirs = ref.perc_al(tm, x, labels, REF_STEPS, kappa=kappa)
        else:
            theirs, rows = perc_al_shadow(judge, tm, x, labels, REF_STEPS, kappa)
            check_shadow(rows, ce_tol=0.1, colour_tol=1e-3)
        dist = res.extras["best_key"]
    agree, rel, both = _agree(res.success, np.where(res.success, dist, 0.0), theirs)
    assert both >= 1, (res.success, theirs["success"])
    assert agree >= 0.9, (method, res.success, theirs["success"])
    if method.startswith("ace"):
        np.testing.assert_array_equal(np.asarray(res.success), theirs["success"])
        np.testing.assert_array_equal(np.asarray(res.steps), theirs["steps"])
        assert rel <= ACE_RTOL[method], (method, np.asarray(dist), theirs["distortion"])
    elif method.startswith("perc_al"):
        s1, s2 = np.asarray(res.success), theirs["success"]
        both_m = s1 & s2
        d1, d2 = np.asarray(dist)[both_m], theirs["distortion"][both_m]
        assert np.mean(np.abs(d1 - d2) / d2 <= 0.10) >= 0.5, (method, d1, d2)
    else:
        assert rel <= 0.10, (method, np.asarray(dist), theirs["distortion"])
    # never-fooled images come back clean in both
    never = ~np.asarray(res.success)
    np.testing.assert_array_equal(u8(res.images)[never], u8(x)[never])


def ppjax_reg(images, x0):
    """Journal ACE keeps no regulariser; compare the images by their CIEDE2000 distance."""
    from ppjax.image.color import ciede2000_l2

    return ciede2000_l2(jnp.asarray(images), jnp.asarray(x0))


# ----------------------------------------------------------------------------- loop behaviour


@pytest.fixture(scope="module")
def tiny():
    from tests.test_attacks import make_judge

    return make_judge()


@pytest.fixture(scope="module")
def tiny_x(photo_paths):
    from tests.conftest import photos_at

    return jnp.asarray(photos_at(photo_paths, (32, 32), 4))


@pytest.fixture(scope="module")
def tiny_pair():
    """(ppjax tiny CNN judge, its torch replica on NHWC input) with the same random weights."""
    from ppjax.convert.common import torch_to_flax
    from tests.test_attacks import TinyCNN, make_judge
    from tests.torch_ref.pgd import TinyCNN as TorchTiny

    torch.manual_seed(3)
    tnet = TorchTiny().eval()
    abstract = jax.eval_shape(TinyCNN().init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    judge = make_judge(torch_to_flax(tnet.state_dict(), abstract, "tiny", "tiny"))

    class NHWC(torch.nn.Module):
        def forward(self, x):
            return tnet(x.permute(0, 3, 1, 2))

    return judge, NHWC()


@pytest.mark.parametrize("kappa", [0.0, 1.0])
def test_perc_al_step_for_step_on_a_small_network(tiny_pair, tiny_x, kappa):
    """On a small, well-conditioned network every PerC-AL iteration of ppjax equals the torch
    reference's to 1e-3 (judgement, colour and cross-entropy steps alike; measured <= 1.2e-4)."""
    judge, model = tiny_pair
    x = np.asarray(tiny_x)
    labels = np.asarray(jnp.argmax(judge(tiny_x), -1))
    theirs, rows = perc_al_shadow(judge, model, x, labels, 40, kappa)
    check_shadow(rows, ce_tol=1e-3, colour_tol=1e-3)
    assert theirs["success"].any() and any(r[1].any() and (~r[1]).any() for r in rows)


def test_perc_al_iterate_is_continuous_and_output_on_grid(tiny, tiny_x):
    cfg = get_attack("perc_al", steps=3)
    aux = {"labels": jnp.full(4, -1, jnp.int32), "targets": jnp.full(4, -1, jnp.int32),
           "group": jnp.zeros(10, bool)}
    seeds = jnp.arange(4, dtype=jnp.uint32)
    states = list(loop.python_states(cfg, {"judge": tiny}, tiny_x, aux, seeds))
    delta = np.asarray(states[-1].params, np.float64) * 255.0
    assert np.abs(delta - np.round(delta)).max() > 0.05  # off the 8-bit grid
    best = np.asarray(states[-1].best.x, np.float64) * 255.0
    assert np.abs(best - np.round(best)).max() < 1e-3


def test_never_fooled_image_is_returned_clean(tiny, tiny_x):
    res = ppjax.attack("ace", tiny, tiny_x, steps=3, kappa=1e6)  # an unreachable margin
    assert not np.asarray(res.success).any()
    np.testing.assert_array_equal(u8(res.images), u8(tiny_x))
    last = ppjax.attack("ace", tiny, tiny_x, steps=3, kappa=1e6, unfooled="last")
    assert not np.array_equal(u8(last.images), u8(tiny_x))


def test_plateau_stop_is_per_image_and_matches_the_reference(tiny, tiny_x):
    """ACE with plateau 5 on the tiny CNN: ppjax's steps per image equal the torch reference's,
    and at least one image stopped before the budget while another ran longer."""
    from ppjax.convert.common import torch_to_flax
    from tests.test_attacks import make_judge, tiny_spec
    from tests.torch_ref.pgd import TinyCNN

    torch.manual_seed(3)
    tnet = TinyCNN().eval()
    abstract = jax.eval_shape(tiny.module.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    variables = torch_to_flax(tnet.state_dict(), abstract, "tiny", "tiny")
    judge = make_judge(variables)
    assert judge.spec == tiny_spec()

    class NHWC(torch.nn.Module):
        def forward(self, x):
            return tnet(x.permute(0, 3, 1, 2))

    x = np.asarray(tiny_x)
    labels = np.asarray(jnp.argmax(judge(tiny_x), -1))
    res = ppjax.attack("ace", judge, x, labels, steps=40, plateau=5, kappa=50.0, lam=5.0,
                       backend="xla")
    theirs = ref.ace(NHWC(), x, labels, 40, plateau=5, kappa=50.0)
    np.testing.assert_array_equal(np.asarray(res.steps), theirs["steps"])
    assert np.asarray(res.steps).min() < 40


# ----------------------------------------------------------------------------- 2020 inputs


def test_2020_centre_crop_without_resize_and_alpha_dropped(tmp_path):
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (401, 640, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: only the organisers' convert('RGB') keeps colours
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    from ppjax.runs import data

    item = data.Item(name="a.png", path=str(p), label=None)
    lo = data.load_item(item, 2020, "auto")
    # the organisers: Image.open(p).convert('RGB'), then a 512x384 centre crop
    full = np.asarray(Image.open(p).convert("RGB"))
    top, left = int(round((401 - 384) / 2)), int(round((640 - 512) / 2))
    np.testing.assert_array_equal(lo.image, full[top:top + 384, left:left + 512])
    assert any("alpha dropped" in n for n in lo.notes)
    assert any("without resizing" in n for n in lo.notes)
    lo19 = data.load_item(item, 2019, "auto")
    assert any("composited on white" in n for n in lo19.notes) and (lo19.image == 255).all()
    small = np.zeros((300, 400, 3), np.uint8)
    assert imageio.to_task_size(small, 2020, "auto")[0].shape == (384, 512, 3)  # resized
    with pytest.raises(imageio.DecodeError):
        imageio.to_task_size(small, 2020, "centre")


# ----------------------------------------------------------------------------- appeal resize


def test_appeal_resize_rules_follow_each_original(photo_paths):
    @dataclasses.dataclass(frozen=True)
    class Spec:
        name: str
        input_hw: tuple = (224, 224)

    @dataclasses.dataclass(frozen=True)
    class Fake:
        spec: Spec

        def replace(self, **kw):
            return dataclasses.replace(self, **kw)

    def J(name):  # a registered judge's own spec (its appeal_resize), else a bare one
        from ppjax.judges import JUDGES

        return Fake(JUDGES[name] if name in JUDGES else Spec(name))

    assert appeal_resize_rule(J("nima_mobilenet")) == "native"
    assert appeal_resize_rule(J("nima_mobilenetv2")) == "bilinear"
    assert appeal_resize_rule(J("other")) == "nearest"
    assert appeal_resize_rule(J("nima_mobilenet"), "nearest") == "nearest"
    a = np.asarray(Image.open(photo_paths[0]).convert("RGB").resize((256, 256)))
    # nima.pytorch: torchvision Resize((224, 224)) on a PIL image = Pillow BILINEAR
    pil = np.asarray(Image.fromarray(a).resize((224, 224), Image.BILINEAR), np.float32) / 255
    ours = np.asarray(resize_bilinear(jnp.asarray(a[None], jnp.float32) / 255, (224, 224)))[0]
    assert np.abs(ours - pil).max() <= 2.5 / 255 and np.abs(ours - pil).mean() <= 0.5 / 255
    j, same = appeal_input(J("nima_mobilenet"), jnp.zeros((1, 256, 256, 3)))
    assert same.shape == (1, 256, 256, 3) and j.spec.input_hw == (256, 256)


# ----------------------------------------------------------------------------- evaluation


def test_compare_refuses_mixed_tasks_and_jpeg_runs_are_collected(tmp_path):
    from ppjax.runs.evaluate import collect_run, run_compare

    for task in (2019, 2020):
        d = tmp_path / str(task)
        d.mkdir()
        (d / "report.json").write_text(json.dumps({"task": task, "protection": {}}))
    with pytest.raises(ValueError, match="mixes tasks"):
        run_compare([tmp_path / "2019", tmp_path / "2020"], tmp_path / "cmp")
    run = tmp_path / "run"
    run.mkdir()
    for n in ("T_a.jpg", "T_b.JPEG", "T_c.png", "notes.txt"):
        (run / n).write_bytes(b"")
    files, errors, _ = collect_run(run, run_code="T")
    assert sorted(f.name for f in files) == ["T_a.jpg", "T_b.JPEG", "T_c.png"] and not errors


def test_relative_drop_and_ranked_flag():
    """2019: relative drop = (clean - protected) / clean; 2020: ranked when the accuracy fell
    by at least half (the organisers' rule), computed on 4 images."""
    from types import SimpleNamespace

    from ppjax.runs.evaluate import summarise

    judge = SimpleNamespace(label="j")
    rows = [{"correct": c, "correct_clean": cc, "score": 0.0}
            for c, cc in ((False, True), (True, True), (False, True), (True, False))]
    for task in (2019, 2020):
        rep = summarise(task, rows, [], run="run", judge=judge, standin=True)
        p = rep["protection"]
        assert p["relative_accuracy_drop"] == pytest.approx((0.75 - 0.5) / 0.75)
        if task == 2020:
            assert p["ranked"] is False  # a 33% reduction is not ranked
    rows[1]["correct"] = False
    rep = summarise(2020, rows, [], run="run", judge=judge, standin=True)
    assert rep["protection"]["relative_accuracy_drop"] == pytest.approx(1 - 0.25 / 0.75)
    assert rep["protection"]["ranked"] is True


# ----------------------------------------------------------------------------- stand-ins


@pytest.mark.parametrize("name", ["nima_mobilenet", "nima_mobilenetv2"])
def test_calibrated_nima_standin_scores_depend_on_the_photo(name, tmp_path):
    """BatchNorm statistics calibrated on real photos: the NIMA stand-in's mean score varies
    across photos (the shared photos and scikit-image's) at least 3x as much as with the random
    statistics (measured: Keras 0.064 -> 0.32, PyTorch 0.017 -> 0.087 standard deviation)."""
    from ppjax.convert import get_converter
    from ppjax.convert.common import calibration_photos
    from ppjax.judges import get_spec

    conv = get_converter(get_spec(name).converter)
    x = np.stack([np.asarray(Image.fromarray(a).resize((224, 224), Image.BILINEAR), np.float32)
                  / 255.0 for _, a in calibration_photos()])
    spread = {}
    for calibrate in (False, True):
        d = tmp_path / str(calibrate)
        conv.make_standin(weights_dir=d, calibrate=calibrate)
        judge = ppjax.load_judge(name, weights_dir=d, standin=True)
        scores = np.asarray(jax.jit(lambda j, xb: j.score(xb))(judge, jnp.asarray(x)))
        assert np.isfinite(scores).all() and ((scores > 1) & (scores < 10)).all()
        spread[calibrate] = float(scores.std())
    assert spread[True] >= 3 * spread[False], spread
