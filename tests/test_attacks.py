"""The attack engine on tiny judges: success, constraints, early stop, best-so-far, objectives,
drivers, per-image seeds, tracing. Every claim is checked by re-running the judge (or a formula)
on the returned images, never by trusting the engine's own flags."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax.attacks import (
    BEST_RULES,
    OBJECTIVES,
    compile_attack,
    count_traces,
    get_attack,
    loop,
    read_indoor_classes,
    read_sensitive_categories,
    register,
    resolve_attack,
    with_appeal,
)
from ppjax.judges import Judge, JudgeSpec
from tests.conftest import photos_at

HW = (32, 32)
NUM_CLASSES = 10


class TinyCNN(nn.Module):
    """Mirror of ``tests.torch_ref.pgd.TinyCNN`` (flattens in torch's C, H, W order)."""

    num_classes: int = NUM_CLASSES
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = ((x01.astype(jnp.float32) - 0.45) / 0.25).astype(self.dtype)
        pad = ((1, 1), (1, 1))
        x = nn.relu(nn.Conv(8, (3, 3), (2, 2), padding=pad, dtype=self.dtype, name="conv1")(x))
        x = nn.relu(nn.Conv(16, (3, 3), (2, 2), padding=pad, dtype=self.dtype, name="conv2")(x))
        x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1).astype(jnp.float32)
        return nn.Dense(self.num_classes, name="fc")(x)


class TinyScore(nn.Module):
    """A tiny regression judge: one score per image (like KonCept512's MOS)."""

    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x01):
        x = nn.relu(nn.Conv(8, (3, 3), (2, 2), dtype=self.dtype, name="conv1")(x01 - 0.5))
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return 50.0 + 20.0 * nn.Dense(1, name="fc")(x)


def tiny_spec(output="logits") -> JudgeSpec:
    return JudgeSpec(name=f"tiny_{output}", model="tests.test_attacks:TinyCNN", input_hw=HW,
                     output=output, filename="-", url="-", converter="-",
                     architecture="tiny test CNN", preprocessing="(x - 0.45) / 0.25")


def make_judge(variables=None, seed=0) -> Judge:
    module = TinyCNN()
    if variables is None:
        variables = module.init(jax.random.key(seed), jnp.zeros((1, *HW, 3)))
    return Judge(variables, module, tiny_spec(), standin=True)


@pytest.fixture(scope="module")
def judge():
    return make_judge()


@pytest.fixture(scope="module")
def x(photo_paths):
    return jnp.asarray(photos_at(photo_paths, HW, 4))


def top1(judge, images):
    return np.asarray(jnp.argmax(judge(jnp.asarray(images)), -1))


def on_grid(images):
    v = np.asarray(images, np.float64) * 255.0
    return np.max(np.abs(v - np.round(v))) < 1e-3


# Reduced step counts keep the file fast; the compositions are those of the presets.
SHORT = {"cw_l2": dict(steps=30, search_steps=2), "ace": dict(steps=40),
         "perc_al": dict(steps=40)}


@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "pgd", "pgd_l2", "mifgsm", "cw_l2", "ace",
                                  "perc_al"])
def test_every_attack_succeeds_within_its_constraint(judge, x, name):
    clean = top1(judge, x)
    res = ppjax.attack(name, judge, x, **SHORT.get(name, {}))
    cfg = get_attack(name)
    imgs = np.asarray(res.images)
    assert on_grid(imgs)
    assert res.success.all(), (name, res.success)
    # independent check: the judge on the returned 8-bit images
    assert (top1(judge, imgs) != clean).all()
    assert (res.success_step >= 0).all() and (res.steps >= 1).any()
    assert (res.success_step <= res.steps).all()
    d = imgs.astype(np.float64) - np.asarray(x, np.float64)
    np.testing.assert_allclose(res.linf, np.abs(d).reshape(4, -1).max(1), atol=1e-6)
    np.testing.assert_allclose(res.l2, np.sqrt((d**2).reshape(4, -1).sum(1)), rtol=1e-5)
    if cfg.norm == "linf":
        assert np.abs(d).max() <= cfg.eps + 1e-6
    if cfg.norm == "l2":
        assert np.sqrt((d**2).reshape(4, -1).sum(1)).max() <= cfg.eps + 1e-6


def test_bounds_hold_after_rounding_for_off_grid_eps(judge, x):
    """A random start fills the eps ball; nearest rounding alone would overshoot it (7.65 grey
    levels -> 8), so the kept images sit exactly on the largest grid step inside eps."""
    eps = 0.03
    res = ppjax.attack("pgd", judge, x, eps=eps)  # same program as the preset: no recompile
    d = np.abs(np.asarray(res.images, np.float64) - np.asarray(x, np.float64))
    assert d.max() <= eps + 1e-7
    np.testing.assert_allclose(d.max() * 255, 7.0, atol=1e-3)
    eps = 0.3
    res = ppjax.attack("pgd_l2", judge, x, eps=eps, step_size=0.3)
    d = np.asarray(res.images, np.float64) - np.asarray(x, np.float64)
    norms = np.sqrt((d**2).reshape(4, -1).sum(1))
    assert norms.max() <= eps + 1e-6 and norms.min() > 0


def trajectory(judge, x, name, extra_judges=None, **kw) -> np.ndarray:
    """Every judged 8-bit iterate [steps + 1, B, H, W, 3] of one round, read from the Python
    driver's states with ``best="final"`` (then ``best.x`` is the current iterate)."""
    cfg = get_attack(name, best="final", early_stop=False, **kw)
    aux = {"labels": jnp.full(x.shape[0], -1, jnp.int32),
           "targets": jnp.full(x.shape[0], -1, jnp.int32)}
    seeds = ppjax.attacks.default_seeds(x.shape[0])
    states = loop.python_states(cfg, {"judge": judge, **(extra_judges or {})}, x, aux, seeds)
    return np.stack([np.asarray(s.best.x) for s in states])


def test_early_stop_freezes_protected_images(judge, x):
    cfg = dict(steps=10, step_size=1 / 255, eps=16 / 255)
    res = ppjax.attack("ifgsm", judge, x, **cfg)
    s = np.asarray(res.success_step)
    assert res.success.all() and (s > 0).all()
    np.testing.assert_array_equal(res.steps, s)  # no update after the first success
    # the kept image is the iterate of the first success, and it was the first success
    traj = trajectory(judge, x, "ifgsm", **cfg)
    clean = top1(judge, x)
    for b in range(4):
        np.testing.assert_array_equal(np.asarray(res.images)[b], traj[s[b], b])
        assert top1(judge, traj[s[b], b][None])[0] != clean[b]
        assert all(top1(judge, traj[t, b][None])[0] == clean[b] for t in range(s[b]))
    # margin steps: exactly ``extra_steps`` more updates, capped by the budget
    more = ppjax.attack("ifgsm", judge, x, extra_steps=2, best="last", **cfg)
    np.testing.assert_array_equal(more.success_step, s)
    np.testing.assert_array_equal(more.steps, np.minimum(s + 2, 10))
    assert more.success.all()


def test_best_so_far_is_the_least_distorted_success(judge, x):
    """C&W without binary search: judge every iterate of the trajectory independently; the kept
    image must be the successful iterate of smallest L2."""
    kw = dict(search_steps=1, const=1.0, step_size=0.02, steps=12)
    res = ppjax.attack("cw_l2", judge, x, **kw)
    traj = trajectory(judge, x, "cw_l2", **kw)
    n = traj.shape[0]
    clean = top1(judge, x)
    succ = np.stack([top1(judge, it) != clean for it in traj])  # [n, B]
    l2 = np.sqrt(((traj.astype(np.float64) - np.asarray(x)[None]) ** 2).reshape(n, 4, -1).sum(-1))
    assert succ.any(0).all() and not succ.all()  # several candidates, some failures
    first = succ.argmax(0)
    for b in range(4):
        cand = np.where(succ[:, b], l2[:, b], np.inf)
        assert res.success[b]
        np.testing.assert_allclose(res.l2[b], cand.min(), rtol=1e-5)
        np.testing.assert_array_equal(np.asarray(res.images)[b], traj[int(np.argmin(cand)), b])
    assert (np.argmin(np.where(succ, l2, np.inf), 0) != first).any()  # not just the first


def test_appeal_term_keeps_the_most_appealing_success(judge, x):
    """The extension point for an appeal judge: an objective wrapped by ``with_appeal`` and
    ``best="appeal"`` keep, among the successful iterates, the one the appeal judge likes best."""
    if "ce+appeal_test" not in OBJECTIVES:
        register("ce+appeal_test")(with_appeal(OBJECTIVES["ce"]))
    module = TinyScore()
    appeal = Judge(module.init(jax.random.key(4), jnp.zeros((1, *HW, 3))), module,
                   tiny_spec("score"), standin=True)
    kw = dict(objective="ce+appeal_test", hyper={"appeal_weight": 0.5}, eps=16 / 255, steps=8)
    res = ppjax.attack("ifgsm", judge, x, best="appeal", early_stop=False,
                       extra_judges={"appeal": appeal}, **kw)
    traj = trajectory(judge, x, "ifgsm", extra_judges={"appeal": appeal}, **kw)
    clean = top1(judge, x)
    for b in range(4):
        succ = np.array([top1(judge, it[b][None])[0] != clean[b] for it in traj])
        score = np.array([float(appeal.score(jnp.asarray(it[b][None]))[0]) for it in traj])
        assert res.success[b] and succ.any()
        best = int(np.argmax(np.where(succ, score, -np.inf)))
        np.testing.assert_array_equal(np.asarray(res.images)[b], traj[best, b])
        np.testing.assert_allclose(res.extras["appeal_after"][b], score[best], rtol=1e-5)


def test_ace_output_is_a_monotone_per_channel_curve(judge, x):
    res = ppjax.attack("ace", judge, x, steps=40)
    assert res.success.all()
    x0 = np.round(np.asarray(x) * 255).astype(int)
    y = np.round(np.asarray(res.images) * 255).astype(int)
    changed = 0
    for b in range(4):
        for c in range(3):
            xi, yi = x0[b, ..., c].ravel(), y[b, ..., c].ravel()
            levels = np.unique(xi)
            outs = []
            for v in levels:  # a function of the input value alone ...
                o = np.unique(yi[xi == v])
                assert len(o) == 1, (b, c, v, o)
                outs.append(o[0])
            assert (np.diff(outs) >= 0).all()  # ... and non-decreasing
            changed += int((xi != yi).sum())
    assert changed > 0


def test_group_protection_moves_top1_out_of_the_set(judge, x):
    clean = top1(judge, x)
    group = sorted(set(clean.tolist()) | {0, 1, 2})
    res = ppjax.attack("pgd", judge, x, objective="group", group=group, eps=16 / 255, steps=20)
    assert res.success.all()
    assert not np.isin(top1(judge, res.images), group).any()


def test_group_sets_from_the_published_lists(shared_data):
    sens = read_sensitive_categories(shared_data / "pixelprivacy" / "MEPP18senscats.txt")
    assert len(sens) == 60 and min(sens) >= 0 and max(sens) < 365
    names = (shared_data / "places365" / "categories_places365.txt").read_text().split("\n")
    by_index = {int(ln.split()[1]): ln.split()[0] for ln in names if ln.strip()}
    assert by_index[sens[0]] == "/a/airplane_cabin"
    indoor = read_indoor_classes(shared_data / "places365" / "IO_places365.txt")
    assert 100 < len(indoor) < 265
    assert by_index[indoor[0]] == "/a/airplane_cabin" and 0 not in indoor  # airfield is outdoor


def test_targeted_least_likely_and_topk(judge, x):
    clean = np.asarray(judge(x))
    targets = np.argsort(clean, -1)[:, -3]  # the third most likely class
    res = ppjax.attack("pgd", judge, x, objective="targeted", targets=targets, eps=16 / 255,
                       steps=20)
    assert res.success.all()
    np.testing.assert_array_equal(top1(judge, res.images), targets)
    res = ppjax.attack("ifgsm", judge, x, objective="least_likely", eps=16 / 255, steps=20,
                       step_size=2 / 255)
    assert res.success.all() and (top1(judge, res.images) != clean.argmax(-1)).all()
    res = ppjax.attack("pgd", judge, x, objective="topk", topk=5, eps=24 / 255, steps=30)
    assert res.success.all()
    adv = np.asarray(judge(res.images))
    assert not (np.argsort(-adv, -1)[:, :5] == clean.argmax(-1)[:, None]).any()


def test_score_judge_pushed_below_threshold(x):
    module = TinyScore()
    variables = module.init(jax.random.key(3), jnp.zeros((1, *HW, 3)))
    judge = Judge(variables, module, tiny_spec("score"), standin=True)
    before = np.asarray(judge.score(x))
    thr = float(before.min()) - 1.0
    res = ppjax.attack("ifgsm", judge, x, objective="score_below", threshold=thr, margin=0.5,
                       eps=16 / 255, steps=30, step_size=1 / 255)
    after = np.asarray(judge.score(res.images))
    assert res.success.all() and (after < thr).all()
    np.testing.assert_allclose(res.extras["score_after"], after, rtol=1e-5)


def _margin(z, labels):
    """``z_y - max_{j != y} z_j`` in numpy (the label margin, written out independently)."""
    z = np.asarray(z, np.float64)
    zy = z[np.arange(len(z)), labels]
    other = np.where(np.eye(z.shape[1], dtype=bool)[labels], -np.inf, z).max(-1)
    return zy - other


def test_clean_judgement_taken_by_the_first_iteration(judge, x, monkeypatch):
    """PGD-family attacks without random start judge ``x0`` in their first iteration, with the
    forward pass whose gradient they take, so :func:`init` runs no forward pass (a stream's
    refill is free): results equal judging the clean images up front, and the labels, least-
    likely targets and clean scores equal a fresh forward pass."""
    assert loop.clean_in_first_step(resolve_attack("ifgsm"))
    for name, settings in (("pgd", {}), ("ifgsm", {"random_start": True}),
                           ("ifgsm", {"eot": "jpeg"}), ("ifgsm", {"judge_jpeg": True}),
                           ("ifgsm", {"sgm_gamma": 0.5}), ("cw_l2", {}), ("ace", {})):
        assert not loop.clean_in_first_step(resolve_attack(name, None, settings)), name
    z0 = np.asarray(judge(x))
    for objective in ("ce", "least_likely"):
        kw = dict(objective=objective, eps=4 / 255, step_size=1 / 255, steps=5)
        jax.clear_caches()
        deferred = ppjax.attack("ifgsm", judge, x, **kw)
        jax.clear_caches()
        with monkeypatch.context() as m:
            m.setattr(loop, "clean_in_first_step", lambda cfg: False)
            upfront = ppjax.attack("ifgsm", judge, x, **kw)
        jax.clear_caches()
        for f in ("images", "success", "steps", "success_step"):
            np.testing.assert_array_equal(getattr(deferred, f), getattr(upfront, f), err_msg=f)
        labels = np.asarray(deferred.extras["labels"])
        np.testing.assert_array_equal(labels, np.asarray(upfront.extras["labels"]))
        np.testing.assert_array_equal(labels, z0.argmax(-1))
        np.testing.assert_allclose(deferred.extras["score_before"],
                                   upfront.extras["score_before"], rtol=1e-5, atol=1e-5)
        z = np.asarray(judge(jnp.asarray(deferred.images)))
        if objective == "ce":
            np.testing.assert_allclose(deferred.extras["score_before"], _margin(z0, labels),
                                       rtol=1e-5, atol=1e-5)
            np.testing.assert_array_equal(deferred.success, z.argmax(-1) != labels)
        else:  # success = the judge now names the clean bottom-1
            np.testing.assert_array_equal(deferred.success, z.argmax(-1) == z0.argmin(-1))


@pytest.mark.parametrize("case", ["pgd_restarts", "cw_search", "eot_judge_jpeg",
                                  "score_jpeg_appeal"])
def test_final_judgement_equals_a_fresh_forward_pass(judge, x, case):
    """``finish`` reports judge outputs kept from ``init`` (clean images) and from the step that
    took each kept image, without a new forward pass: they must equal the judge run afresh on the
    returned images (and on the clean ones), through the judging JPEG where there is one."""
    from ppjax.image.jpeg import jpeg

    def view(images, q=None):
        images = jnp.asarray(images)
        return images if q is None else jpeg(images, q, subsampling="420", rounding="ste")

    tol = dict(rtol=1e-5, atol=1e-5)
    if case == "score_jpeg_appeal":
        scorer = Judge(TinyScore().init(jax.random.key(3), jnp.zeros((1, *HW, 3))), TinyScore(),
                       tiny_spec("score"), standin=True)
        appeal = Judge(TinyScore().init(jax.random.key(4), jnp.zeros((1, *HW, 3))), TinyScore(),
                       tiny_spec("score"), standin=True)
        before = np.asarray(scorer.score(view(x, 80.0)))
        thr = float(before.min()) - 0.02
        res = ppjax.attack("ifgsm", scorer, x, objective="score_below+appeal", threshold=thr,
                           hyper={"appeal_weight": 0.1}, best="appeal", extra_steps=2,
                           judge_jpeg=True, judge_quality=80.0, eps=2 / 255, steps=6,
                           step_size=1 / 255, driver="while", extra_judges={"appeal": appeal})
        after = np.asarray(scorer.score(view(res.images, 80.0)))
        np.testing.assert_allclose(res.extras["score_before"], before, **tol)
        np.testing.assert_allclose(res.extras["score_after"], after, **tol)
        np.testing.assert_array_equal(res.success, after < thr)
        assert res.success.any() and not res.success.all()  # both outcomes are checked
        for key, images in (("appeal_before", x), ("appeal_after", res.images)):
            np.testing.assert_allclose(res.extras[key], appeal.score(view(images, 80.0)), **tol)
        return
    q = None
    if case == "pgd_restarts":  # a round in which protected images sit out
        res = ppjax.attack("pgd", judge, x, eps=1 / 255, step_size=1 / 255, steps=2, restarts=3)
    elif case == "cw_search":  # binary search rounds, best = least distorted success
        res = ppjax.attack("cw_l2", judge, x, steps=3, search_steps=3, step_size=0.005,
                           const=0.01)
        assert (res.success_step >= 6).any()  # some kept images come from the third round
    else:  # non-fused evaluation: EOT gradient, success judged after the JPEG
        q = 90.0
        res = ppjax.attack("ifgsm", judge, x, eps=2 / 255, step_size=1 / 255, steps=2,
                           eot="jpeg", judge_jpeg=True, judge_quality=q)
    labels = np.asarray(res.extras["labels"])
    np.testing.assert_array_equal(labels, top1(judge, x))
    z0, z = judge(view(x, q)), judge(view(res.images, q))
    np.testing.assert_allclose(res.extras["score_before"], _margin(z0, labels), **tol)
    np.testing.assert_allclose(res.extras["score_after"], _margin(z, labels), **tol)
    np.testing.assert_array_equal(res.success, np.argmax(np.asarray(z), -1) != labels)
    assert res.success.any()
    assert case == "cw_search" or not res.success.all()  # both outcomes are checked


SMALL_PGD = dict(steps=3, restarts=2)  # one program shared by the next three tests


def test_eps_sweep_traces_once(judge, x):
    results = {}
    for driver in ("python", "scan"):
        with count_traces() as traces:
            for eps in (2, 4, 6, 8, 10):
                results[driver] = ppjax.attack("pgd", judge, x, eps=eps / 255, driver=driver,
                                               kappa=0.1 * eps, momentum=0.5, **SMALL_PGD)
        new = dict(traces)
        expect = {"whole": 1} if driver == "scan" else {"init": 1, "step": 1, "judge": 1,
                                                          "finish": 1, "advance": 1}
        assert new == expect, (driver, new)


def test_drivers_agree(judge, x):
    kw = dict(eps=10 / 255, kappa=1.0, momentum=0.5, **SMALL_PGD)
    outs = [ppjax.attack("pgd", judge, x, driver=d, **kw) for d in ("python", "scan", "while")]
    outs.append(ppjax.attack("pgd", judge, x, driver="python", chunk=2, **kw))
    for o in outs[1:]:
        np.testing.assert_array_equal(o.images, outs[0].images)
        np.testing.assert_array_equal(o.steps, outs[0].steps)
        np.testing.assert_array_equal(o.success, outs[0].success)
        np.testing.assert_array_equal(o.success_step, outs[0].success_step)


def _flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list | tuple) else cost)["flops"])


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_last_iteration_is_judged_without_a_gradient(judge, x, name, monkeypatch):
    # every step taken and the final iterate kept: the result is the last iteration's judgement
    kw = dict(eps=4 / 255, steps=1 if name == "fgsm" else 3, early_stop=False, best="final")
    cfg = get_attack(name, **kw)
    aux = {"labels": jnp.full(4, -1, jnp.int32), "targets": jnp.full(4, -1, jnp.int32)}
    seeds = ppjax.attacks.default_seeds(4)
    models = {"judge": judge}
    calls, compile_attack_ = [], loop.compile_attack

    def counting(cfg, **kw):  # the programs, their judge counted
        p = compile_attack_(cfg, **kw)
        return p._replace(judge=lambda *a: calls.append(1) or p.judge(*a))

    monkeypatch.setattr(loop, "compile_attack", counting)
    states = list(loop.python_states(cfg, models, x, aux, seeds))
    assert len(states) == cfg.steps + 1 and len(calls) == 1  # the last iteration: the judge's
    monkeypatch.undo()
    # the judge program saves the backward pass (the input gradient costs about a forward)
    c = jax.tree.map(jnp.float32, cfg)
    before = states[-2]
    forward = _flops(jax.jit(lambda j, v: j(v)), judge, x)
    saved = (_flops(jax.jit(loop.step_chunk, static_argnums=1), c, 1, models, x, seeds, before)
             - _flops(jax.jit(loop.judge_step), c, models, x, seeds, before))
    assert saved > 0.8 * forward, (saved, forward)
    fast = ppjax.attack(name, judge, x, driver="python", **kw)
    monkeypatch.setattr(loop, "last_apart", lambda cfg: False)  # the last iteration a full step
    full = ppjax.attack(name, judge, x, driver="python", **kw)
    np.testing.assert_array_equal(fast.images, full.images)
    np.testing.assert_array_equal(fast.success, full.success)
    np.testing.assert_array_equal(fast.steps, full.steps)
    np.testing.assert_allclose(fast.extras["score_after"], full.extras["score_after"],
                               rtol=1e-5, atol=1e-5)
    # and the judgement is the judge's own on the returned images
    z = np.asarray(judge(jnp.asarray(fast.images)), np.float64)
    np.testing.assert_array_equal(np.asarray(fast.success),
                                  z.argmax(-1) != np.asarray(fast.extras["labels"]))


def test_iterates_before_the_last_are_not_judged_when_no_judgement_counts(judge, x,
                                                                            monkeypatch):
    from ppjax.attacks import probes

    # torchattacks' PGD: every step taken, the final iterate kept, and the judging a pass of
    # its own (the gradient at the float iterate): only the last iterate's judgement counts
    kw = dict(preset="torchattacks", eps=8 / 255, steps=6)
    assert not probes.judges_between(resolve_attack("pgd", "torchattacks", {"steps": 6}))
    fast = ppjax.attack("pgd", judge, x, **kw)
    monkeypatch.setattr(probes, "judges_between", lambda cfg: True)  # every iterate judged
    jax.clear_caches()  # (the programs are cached by the config, which has not changed)
    full = ppjax.attack("pgd", judge, x, **kw)
    jax.clear_caches()
    for field in ("images", "success", "steps", "linf"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(full, field))
    np.testing.assert_allclose(fast.extras["score_after"], full.extras["score_after"],
                               rtol=1e-6)
    # the judged run saw earlier successes; the other judged the last iterate only
    assert (np.asarray(full.success_step)[np.asarray(full.success)] < 6).any()
    np.testing.assert_array_equal(fast.success_step, np.where(fast.success, 6, -1))
    # and the success is the judge's own on the returned images
    z = np.asarray(judge(jnp.asarray(fast.images)))
    np.testing.assert_array_equal(fast.success, z.argmax(-1) != np.asarray(fast.extras["labels"]))
    # every judgement still counts where a success can change the run (early stop)
    assert probes.judges_between(resolve_attack("pgd", "default", {}))


def test_per_image_randomness_does_not_depend_on_the_batch(judge, x):
    seeds = np.array([11, 22, 33, 44], np.uint32)
    kw = dict(eps=4 / 255, **SMALL_PGD)
    full = ppjax.attack("pgd", judge, x, seeds=seeds, **kw)
    sub = ppjax.attack("pgd", judge, x[jnp.array([2, 0])], seeds=seeds[[2, 0]], **kw)
    np.testing.assert_array_equal(np.asarray(sub.images), np.asarray(full.images)[[2, 0]])
    np.testing.assert_array_equal(np.asarray(sub.steps), np.asarray(full.steps)[[2, 0]])
    other = ppjax.attack("pgd", judge, x, seeds=seeds + 1, **kw)
    assert not np.array_equal(np.asarray(other.images), np.asarray(full.images))


def test_bf16_compute(judge, x):
    res = ppjax.attack("pgd", judge, x, dtype=jnp.bfloat16, eps=16 / 255)
    assert res.success.all() and on_grid(res.images)
    assert res.extras["score_after"].dtype == jnp.float32
    assert (top1(judge, res.images) != top1(judge, x)).all()


def test_eot_jpeg_success_survives_the_real_codec(judge, x):
    from ppjax.image.jpeg import pil_jpeg

    res = ppjax.attack("ifgsm", judge, x, eps=16 / 255, step_size=3 / 255, steps=10, eot="jpeg",
                       judge_jpeg=True, judge_quality=90.0, extra_steps=2, best="last")
    assert res.success.all()
    real = pil_jpeg(np.asarray(res.images), 90)
    assert (top1(judge, real) != top1(judge, x)).all()


def test_eot_clean_averages_the_iterate_and_the_eot_views(judge, x):
    """``eot_clean``: the gradient is the mean of the 8-bit iterate's own (as without EOT) and
    the EOT view's (a fixed JPEG-90 here, so the draws are deterministic), one step of plain
    gradient descent compared against the two single-view runs."""
    kw = dict(eps=1.0, step="sgd", step_size=1e-4, steps=1, random_start=False,
              early_stop=False, best="final")
    jpeg = dict(eot="jpeg", eot_quality_lo=90.0, eot_quality_hi=90.0)

    def moved(**more):
        res = ppjax.attack("pgd", judge, x, **kw, **more)
        return np.asarray(res.extras["final_iterate"]) - np.asarray(x)

    plain, through_jpeg = moved(), moved(**jpeg)
    both = moved(**jpeg, eot_clean=True)
    inside = (np.asarray(x) > 0.01) & (np.asarray(x) < 0.99)  # no clipping at 0 or 1
    assert np.abs(plain - through_jpeg)[inside].max() > 1e-6  # the two views differ
    np.testing.assert_allclose(both[inside], ((plain + through_jpeg) / 2)[inside],
                               atol=1e-7, rtol=1e-4)


def test_bad_input_is_reported(judge, x):
    with pytest.raises(KeyError, match="unknown attack"):
        ppjax.attack("nope", judge, x)
    with pytest.raises(TypeError, match="unknown setting"):
        ppjax.attack("pgd", judge, x, epsilon=0.1)
    with pytest.raises(ValueError, match="targets"):
        ppjax.attack("pgd", judge, x, objective="targeted")
    with pytest.raises(ValueError, match="norm"):
        get_attack("pgd", norm="l3")


def test_final_float_iterate_is_returned(judge, x):
    """The continuous iterate the loop ended with comes back (extras["final_iterate"]); with
    best="final" the returned 8-bit images are exactly its rounding, inside the eps ball."""
    eps = 6 / 255
    res = ppjax.attack("pgd", judge, x, eps=eps, steps=3, early_stop=False, best="final")
    f = np.asarray(res.extras["final_iterate"])
    assert f.dtype == np.float32 and f.shape == np.asarray(x).shape
    assert not on_grid(f)  # random start: off the 8-bit grid
    np.testing.assert_array_equal(np.round(f * 255), np.round(np.asarray(res.images) * 255))
    x8 = np.round(np.asarray(x) * 255) / 255
    assert np.abs(f - x8).max() <= eps + 1e-6


def test_unknown_settings_are_refused_naming_the_valid_ones(judge, x):
    with pytest.raises(TypeError, match=r"'appeal' is not a setting.*appeal_judge"):
        ppjax.attack("camouflage", judge, x, appeal=True)
    with pytest.raises(TypeError, match=r"unknown setting\(s\) epsilon; known: .*\beps\b"):
        ppjax.attack("pgd", judge, x, epsilon=0.1)
    with pytest.raises(KeyError, match=r"unknown attack 'nope'; known: .*\bpgd\b"):
        resolve_attack("nope")


def _first_success(cfg, cand, best_key, ever):
    """A best-rule registered from outside the loop: keep the first success (an image never
    fooled follows its iterate)."""
    return (cand.succ | cand.live) & ~ever, jnp.zeros_like(best_key)


def test_a_registered_best_rule_is_used_without_touching_the_loop(judge, x):
    if "first_success" not in BEST_RULES:
        BEST_RULES.register("first_success", _first_success)
    kw = dict(steps=8, step_size=1 / 255, eps=16 / 255)
    res = ppjax.attack("ifgsm", judge, x, early_stop=False, best="first_success", backend="xla",
                       **kw)
    traj = trajectory(judge, x, "ifgsm", **kw)  # every judged iterate, judged again below
    clean = top1(judge, x)
    fooled = np.stack([top1(judge, t) != clean for t in traj])  # [steps + 1, B]
    assert fooled.any(0).all()
    first = fooled.argmax(0)
    np.testing.assert_array_equal(res.success_step, first)
    np.testing.assert_array_equal(np.asarray(res.images), traj[first, np.arange(len(first))])
    np.testing.assert_array_equal(res.steps, 8)  # every step taken (no early stop)


def test_compile_attack_programs_run_the_attack(judge, x):
    cfg = get_attack("pgd", eps=6 / 255, **SMALL_PGD)
    models, b = {"judge": judge}, x.shape[0]
    aux = {"labels": jnp.full(b, -1, jnp.int32), "targets": jnp.full(b, -1, jnp.int32)}
    seeds = ppjax.attacks.default_seeds(b)
    p = compile_attack(cfg)
    state = p.init(models, x, aux, seeds)
    for r in range(cfg.rounds):
        if r:
            state = p.advance(x, seeds, state)
        for _ in range(cfg.steps + 1):
            state = p.step(models, x, seeds, state)
    got = p.finish(models, x, state)
    ref = ppjax.attack(cfg, judge, x, driver="scan", backend="xla")
    for k in ("images", "success", "steps", "success_step"):
        np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(getattr(ref, k)), k)
