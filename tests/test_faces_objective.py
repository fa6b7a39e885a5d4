"""Objective "faces": the in-graph cascade against the host cascade (:func:`ppjax.faces.cascade`),
finite gradients, and a short PGD that hides two faces from facenet-pytorch's own MTCNN after
8-bit rounding (the independent reference, through tests/facenet_shim.py)."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests import facenet_shim, faces_ref

torch = pytest.importorskip("torch")
fp = facenet_shim.import_facenet()

SIDE = 160


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    yield from faces_ref.torch_one_thread()


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return faces_ref.mtcnn_judge(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """[2 faces on a real background, a real photo with no face], uint8 [2, 160, 160, 3]."""
    import skimage.data

    coffee = Image.fromarray(skimage.data.coffee()).resize((SIDE, SIDE), Image.BICUBIC)
    return np.stack([faces_ref.lfw_composite((0, 1), SIDE, 64), np.asarray(coffee)])


@pytest.fixture(scope="module")
def judged(judge):
    """One compiled program: the objective's terms, the judge's score and the cascade."""
    from ppjax.attacks.objectives import OBJECTIVES
    from ppjax.faces.objective import cascade_terms

    obj = OBJECTIVES["faces"](None)
    chained = OBJECTIVES["faces_chain"](None)

    def loss(x, j, kappa):
        terms = obj.evaluate({"judge": j}, x, {}, SimpleNamespace(kappa=kappa))  # reads cfg.kappa
        return jnp.sum(terms.loss), terms

    @jax.jit
    def run(j, x, kappa):
        (_, terms), grad = jax.value_and_grad(loss, has_aux=True)(x, j, kappa)
        chain = (chained.evaluate({"judge": j}, x, {}, SimpleNamespace(kappa=kappa)),
                 cascade_terms(j, x, kappa, chain=True))
        return terms, j.score(x), cascade_terms(j, x, kappa), grad, chain

    return run


def test_clean_faces_are_detected_not_success(judge, images, judged):
    from ppjax.faces import detect
    from ppjax.faces.objective import PNET_WEIGHT

    x = jnp.asarray(images / np.float32(255))
    terms, score, casc, _, (cterms, ccasc) = judged(judge, x, 0.0)
    assert [len(f) for f in detect(judge, images)] == [2, 0]
    assert np.asarray(terms.success).tolist() == [False, True]
    assert float(terms.loss[0]) > 0
    np.testing.assert_allclose(np.asarray(terms.score), np.asarray(score), atol=1e-6)
    np.testing.assert_allclose(np.asarray(terms.loss), np.asarray(
        PNET_WEIGHT * casc.hinge_p + casc.hinge_r + casc.hinge_o), rtol=1e-6)
    # "faces_chain": the same P-Net term, each proposal once (min of its stages: never more)
    np.testing.assert_allclose(np.asarray(cterms.loss), np.asarray(
        PNET_WEIGHT * ccasc.hinge_p + ccasc.hinge_r + ccasc.hinge_o), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(cterms.success), np.asarray(terms.success))
    assert float(ccasc.hinge_r[0] + ccasc.hinge_o[0]) <= float(casc.hinge_r[0] + casc.hinge_o[0])


def test_near_faces_is_the_area_rule():
    """A window counts when >= NEAR_FRACTION of its area lies in a face box grown REGION_GROW
    times about its centre (brute force over pixels); no region: every window counts."""
    from ppjax.faces.objective import NEAR_FRACTION, REGION_GROW, face_regions, near_faces, window_geometry

    geom = window_geometry(120, 100, 20, 0.709)[0]
    face = np.array([30.0, 40.0, 62.0, 80.0], np.float32)
    got = np.asarray(near_faces(geom, face_regions(face[None])[None]))[0]
    c, half = (face[:2] + face[2:]) / 2, (face[2:] - face[:2]) * REGION_GROW / 2
    lo, hi = c - half, c + half
    for box, g in zip(geom[::7], got[::7], strict=True):
        ix = max(0.0, min(box[2], hi[0]) - max(box[0], lo[0]))
        iy = max(0.0, min(box[3], hi[1]) - max(box[1], lo[1]))
        area = (box[2] - box[0]) * (box[3] - box[1])
        assert g == float(ix * iy >= NEAR_FRACTION * area)
    assert 0 < got.sum() < len(got)
    assert np.asarray(near_faces(geom, face_regions(np.zeros((0, 4)))[None])).all()
    assert (face_regions(np.zeros((17, 4)) + face) == -1).all()  # too many faces: no regions


def test_region_mask_is_the_grown_boxes():
    """The pixels that take a gradient: pixel centres inside a face box grown REGION_GROW times
    (brute force); every pixel when no region is given."""
    from ppjax.faces.objective import REGION_GROW, face_regions, region_mask

    boxes = np.array([[10.0, 12.0, 30.0, 40.0], [50.0, 5.0, 70.5, 20.0]], np.float32)
    got = np.asarray(region_mask(face_regions(boxes)[None], (48, 80)))[0, ..., 0]
    ys, xs = np.mgrid[0:48, 0:80] + 0.5
    want = np.zeros((48, 80), bool)
    for b in boxes:
        c, half = (b[:2] + b[2:]) / 2, (b[2:] - b[:2]) * REGION_GROW / 2
        want |= ((xs >= c[0] - half[0]) & (xs < c[0] + half[0]) & (ys >= c[1] - half[1])
                 & (ys < c[1] + half[1]))
    np.testing.assert_array_equal(got, want)
    assert np.asarray(region_mask(face_regions(np.zeros((0, 4)))[None], (4, 5))).all()


def test_in_graph_stage1_is_the_host_stage1(judge, images):
    """The proposals that pass P-Net (in-graph NMS) are the host cascade's stage-1 boxes."""
    from ppjax.faces.cascade import stage1
    from ppjax.faces.objective import K_PROPOSALS, M_CANDIDATES, proposals, window_geometry
    from ppjax.models.mtcnn import pyramid_scales

    geom, sid = window_geometry(SIDE, SIDE, 20, 0.709)

    @jax.jit
    def run(j, x):
        levels = j.module.apply(j.variables, x, method="pyramid")
        cat = [jnp.concatenate([getattr(lv, f)[0].reshape(-1, *getattr(lv, f).shape[3:])
                                for lv in levels]) for f in ("prob", "logit", "reg")]
        return levels, proposals(geom, sid, *cat, 0.0, K_PROPOSALS, M_CANDIDATES)

    levels, prop = run(judge, jnp.asarray(images[:1] / np.float32(255)))
    ours = np.asarray(prop.boxes)[np.asarray(prop.passing)]
    ref = stage1([(np.asarray(lv.prob[0]), np.asarray(lv.reg[0])) for lv in levels],
                 pyramid_scales(SIDE, SIDE), 0.6)
    assert not bool(prop.overflow) and len(ref) >= 2
    np.testing.assert_allclose(ours, ref[:, :4], atol=1e-3)


def test_crops_match_the_host_crops(images):
    from ppjax.faces.cascade import crops_at
    from ppjax.faces.objective import crops_from, integral

    img = images[0]
    boxes = np.array([[20.7, 30.2, 84.9, 95.1], [-10.0, -5.5, 40.0, 44.0],
                      [120.3, 100.0, 190.0, 170.0], [50.0, 60.0, 58.0, 68.0]], np.float32)
    crop = jax.jit(lambda x, b, size: jax.tree.map(
        lambda a: a[0], crops_from(integral(x[None]), b[None], size)), static_argnums=2)
    for size in (24, 48):
        ref, keep = crops_at(img.astype(np.float64), boxes, size)
        ours, ok = crop(jnp.asarray(img / np.float32(255)), jnp.asarray(boxes), size)
        assert np.asarray(ok).all() and len(keep) == len(boxes)
        np.testing.assert_allclose(np.asarray(ours), ref, atol=2e-5)


def test_crops_of_an_attacked_image_and_their_gradients_match_torch(images):
    """Off the 8-bit grid (an iterate of the attack), many boxes at once through the summed-area
    tables: values and input gradients against torch's area resize (``interpolate(mode="area")``)
    of the same clipped crops, in float64."""
    import torch.nn.functional as F  # noqa: N812

    from ppjax.faces.objective import crops_from, integral

    rng = np.random.default_rng(5)
    x = np.clip(images[0] / 255.0 + rng.uniform(-8, 8, images[0].shape) / 255.0, 0, 1)
    boxes = np.array([[20.7, 30.2, 84.9, 95.1], [-10.0, -5.5, 40.0, 44.0],
                      [120.3, 100.0, 190.0, 170.0], [50.0, 60.0, 58.0, 68.0],
                      [3.0, 140.0, 159.9, 170.0]], np.float32)
    xt = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64, requires_grad=True)
    for size in (24, 48):
        w = rng.normal(size=(len(boxes), size, size, 3))

        def ours(v, size=size, w=w):
            crops, ok = crops_from(integral(v[None]), jnp.asarray(boxes)[None], size)
            return jnp.sum(crops[0] * jnp.asarray(w, jnp.float32)), (crops[0], ok[0])

        (_, (crops, ok)), g = jax.value_and_grad(ours, has_aux=True)(jnp.asarray(x, jnp.float32))
        ref, total = [], 0
        for k, (x1, y1, x2, y2) in enumerate(boxes):  # facenet-pytorch's clip: [a-1, b)
            a, b = max(int(y1), 1), min(int(y2), x.shape[0])
            c, d = max(int(x1), 1), min(int(x2), x.shape[1])
            crop = F.interpolate(xt[:, :, a - 1:b, c - 1:d], size=(size, size), mode="area")
            ref.append(crop[0].permute(1, 2, 0))
            total = total + (ref[-1] * torch.from_numpy(w[k])).sum()
        gt, = torch.autograd.grad(total, xt)
        assert np.asarray(ok).all()
        np.testing.assert_allclose(np.asarray(crops), torch.stack(ref).detach().numpy(),
                                   atol=2e-6)
        np.testing.assert_allclose(np.asarray(g), gt[0].permute(1, 2, 0).numpy(), atol=1e-4)


def test_gradients_are_finite(judge, images, judged):
    _, _, _, g, _ = judged(judge, jnp.asarray(images / np.float32(255)), 1.0)
    g = np.asarray(g)
    assert np.isfinite(g).all() and np.abs(g[0]).max() > 0


def test_pgd_hides_two_faces_from_facenet_pytorch(judge, images, judged):
    import ppjax
    from ppjax.faces import detect

    x0 = images[:1] / np.float32(255)
    r = ppjax.attack("pgd", judge, x0, objective="faces", eps=8 / 255, steps=40, kappa=1.0,
                     backend="xla")
    adv8 = np.round(np.asarray(r.images[0]) * 255).astype(np.uint8)
    assert np.abs(adv8.astype(int) - images[0].astype(int)).max() <= 8
    assert bool(np.asarray(r.success)[0])
    boxes, _ = fp.MTCNN(keep_all=True).detect(adv8)
    assert boxes is None, f"facenet-pytorch still finds {len(boxes)} face(s)"
    assert len(detect(judge, adv8)[0]) == 0
    x = np.stack([adv8, images[1]]) / np.float32(255)  # the batch shape compiled above
    terms = judged(judge, jnp.asarray(x), 0.0)[0]
    assert bool(terms.success[0])


def test_chain_hinges_is_the_or_of_the_stages():
    """R-Net OR O-Net cuts a proposal: brute force over random hinges and O-Net picks."""
    from ppjax.faces.objective import chain_hinges

    rng = np.random.default_rng(3)
    b, k, j = 3, 10, 4
    hr = np.where(rng.random((b, k)) < 0.3, 0.0, rng.random((b, k)) * 3).astype(np.float32)
    ho = (rng.random((b, j)) * 3).astype(np.float32)
    io = np.stack([rng.permutation(k)[:j] for _ in range(b)]).astype(np.int32)
    counts_o = rng.random((b, j)) < 0.8
    got_r, got_o = (np.asarray(v) for v in chain_hinges(jnp.asarray(hr), jnp.asarray(ho),
                                                          jnp.asarray(io), jnp.asarray(counts_o)))
    for i in range(b):
        to_o = {int(io[i, t]): t for t in range(j) if counts_o[i, t]}
        want_r = sum(float(hr[i, p]) for p in range(k) if p not in to_o)
        want_o = sum(min(float(hr[i, p]), float(ho[i, t])) for p, t in to_o.items())
        assert got_r[i] == pytest.approx(want_r, rel=1e-6, abs=1e-6)
        assert got_o[i] == pytest.approx(want_o, rel=1e-6, abs=1e-6)


def test_jittered_crops_average_the_stage_hinges(judge, images, monkeypatch):
    """Objective "faces_jitter": the boxes moved and scaled about their centres (a formula);
    its R-Net and O-Net hinges, the mean over each proposal's crop and the JITTERS crops, are
    objective "faces"' own without jitters, and P-Net's term and the certified cascade (success)
    never change."""
    from ppjax.faces import objective as fo

    # centre (20, 40), side (20, 40): moved by (0.1, -0.2) sides = (2, -8), scaled 0.5
    got = fo.jittered(jnp.asarray([[[10.0, 20.0, 30.0, 60.0]]]), ((0.1, -0.2, 0.5),))
    np.testing.assert_allclose(np.asarray(got), [[[17.0, 22.0, 27.0, 42.0]]])
    x = jnp.asarray(images / np.float32(255))

    def terms(jitter):
        return jax.jit(lambda j, x: fo.cascade_terms(j, x, 1.0, jitter=jitter))(judge, x)

    plain, jit = terms(False), terms(True)
    np.testing.assert_array_equal(np.asarray(plain.detected), np.asarray(jit.detected))
    np.testing.assert_array_equal(np.asarray(plain.hinge_p), np.asarray(jit.hinge_p))
    assert float(jit.hinge_r[0]) > 0 and float(jit.hinge_o[0]) > 0
    assert float(jit.hinge_r[0]) != float(plain.hinge_r[0])
    monkeypatch.setattr(fo, "JITTERS", ())
    alone = terms(True)
    for f in ("hinge_r", "hinge_o"):
        np.testing.assert_allclose(np.asarray(getattr(alone, f)), np.asarray(getattr(plain, f)),
                                   rtol=1e-6)
