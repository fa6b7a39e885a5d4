"""Continuous batching (ppjax.attacks.stream): each image's result is byte-identical to running
it alone through ``ppjax.attack``, whatever the slot count, its neighbours or the arrival order;
refilling never recompiles; the input is consumed lazily."""

import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax.attacks import StreamItem, count_traces
from tests.conftest import photos_at
from tests.test_attacks import HW, make_judge

N = 5
# Attacks that exercise every per-image piece of state: a random start with restarts and
# early stop (per-image rounds), the C&W binary search with Adam (per-image constant, bounds
# and optimiser counter), PerC-AL's alternating cosine schedule with kept distortion.
CASES = {
    "pgd": dict(steps=6, restarts=2, random_start=True, eps=3 / 255, step_size=1 / 255),
    # no random start: the first iteration takes the clean judgement (labels) and a refill runs
    # no forward pass (ppjax.attacks.loop.clean_in_first_step); slots refill at once
    "ifgsm": dict(steps=6, eps=3 / 255, step_size=1 / 255),
    "cw_l2": dict(steps=5, search_steps=3, step_size=0.02, const=0.5),
    "perc_al": dict(steps=6),
    # transfer boosters drawing per-image randomness every step (DI, VMI neighbours) + TI (SGM
    # off: the tiny judge has no residual blocks)
    "mifgsm/all": dict(steps=4, ti_kernel=5, vmi_samples=2, sgm_gamma=1.0),
}


@pytest.fixture(scope="module")
def judge():
    return make_judge()


@pytest.fixture(scope="module")
def images(photo_paths):
    return photos_at(photo_paths, HW, N)


def items(images, order):
    seeds = [1000 + 17 * i for i in range(len(images))]
    return [StreamItem(i, images[i], seeds[i]) for i in order]


def alone(name, judge, image, seed):
    attack, _, preset = name.partition("/")
    return ppjax.attack(attack, judge, jnp.asarray(image[None]), preset=preset or None,
                        seeds=np.array([seed], np.uint32), **CASES[name])


def same(a, b, where: str, exact: bool) -> None:
    """What is written (the 8-bit image, success, step counts, labels) is byte-identical;
    with ``exact`` (the same slot count) every float too. Across slot counts XLA may order a
    per-image float reduction differently for another batch shape, so float diagnostics
    (distortion, scores, the continuous iterate) agree to float32 rounding."""
    np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images), err_msg=where)
    for f in ("success", "steps", "success_step", "linf"):
        np.testing.assert_array_equal(np.asarray(getattr(a, f)), np.asarray(getattr(b, f)),
                                      err_msg=f"{where}: {f}")
    assert set(a.extras) == set(b.extras)
    for k in ("l2", *a.extras):
        u = np.asarray(a.extras[k] if k != "l2" else a.l2)
        v = np.asarray(b.extras[k] if k != "l2" else b.l2)
        if exact or not np.issubdtype(u.dtype, np.floating):
            np.testing.assert_array_equal(u, v, err_msg=f"{where}: {k}")
        else:
            np.testing.assert_allclose(u, v, rtol=2e-6, atol=1e-7, err_msg=f"{where}: {k}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_image_equals_running_it_alone(judge, images, name):
    ref = {}
    for it in items(images, range(N)):
        r = alone(name, judge, it.image, it.seed)
        ref[it.key] = ppjax.AttackResult(**{f: (v[0] if f != "extras" else
                                                {k: e[0] for k, e in v.items()})
                                            for f, v in r._asdict().items()})
    steps = np.array([ref[i].steps for i in range(N)])
    # varied difficulty: images finish at different times, so slots are refilled mid-run
    if name in ("pgd", "ifgsm"):
        assert len(set(steps.tolist())) > 1, steps
    for slots, order in ((2, range(N)), (4, [4, 2, 0, 3, 1]), (2, [1, 3, 0, 4, 2]), (8, [2, 0, 1, 4, 3])):
        attack, _, preset = name.partition("/")
        got = dict(ppjax.attacks.stream(attack, judge, items(images, order), slots=slots,
                                        preset=preset or None, **CASES[name]))
        assert sorted(got) == list(range(N))
        for i in range(N):
            same(got[i], ref[i], f"image {i}, {slots} slots, order {list(order)}",
                 exact=slots == 2)


@pytest.mark.parametrize("chunk", [1, 2])
def test_on_chunk_runs_once_per_compiled_chunk(judge, images, chunk):
    """``on_chunk`` runs after every chunk dispatch: 3 images in 4 slots, a fixed budget of 3
    updates = 4 iterations each, all in lockstep: ceil(4 / chunk) chunks."""
    calls = []
    got = dict(ppjax.attacks.stream("ifgsm", judge, items(images[:3], range(3)), slots=4,
                                    chunk=chunk, steps=3, early_stop=False, best="final",
                                    on_chunk=lambda: calls.append(1)))
    assert sorted(got) == [0, 1, 2] and all(int(r.steps) == 3 for r in got.values())
    assert len(calls) == -(-4 // chunk)


def test_refills_never_recompile_and_input_is_consumed_lazily(judge, images):
    cfg = dict(steps=6, random_start=True, eps=3 / 255, step_size=1 / 255)
    pulled, yielded, gap = [0], [0], []

    def source(n):
        for i in range(n):
            pulled[0] += 1
            yield StreamItem(i, images[i % N], i)

    list(ppjax.attacks.stream("pgd", judge, source(2), slots=2, **cfg))  # compile
    with count_traces() as traces:
        for _key, _res in ppjax.attacks.stream("pgd", judge, source(12), slots=2,
                                               eps=2 / 255, **{k: v for k, v in cfg.items()
                                                               if k != "eps"}):
            yielded[0] += 1
            gap.append(pulled[0] - yielded[0])
    assert yielded[0] == 12
    assert dict(traces) == {}
    # held at once: the running slots, the finished ones waiting to be fetched, the next
    # refill's (taken while the device computes)
    assert max(gap) <= 3 * 2


def test_bad_stream_input_is_refused(judge, images):
    bad = [StreamItem(0, images[0], 0), StreamItem(1, images[1][:16], 1)]
    with pytest.raises(ValueError, match="expects"):
        list(ppjax.attacks.stream("pgd", judge, bad, slots=2, steps=2))
    with pytest.raises(ValueError, match="targeted"):
        list(ppjax.attacks.stream("pgd", judge, [StreamItem(0, images[0], 0)], slots=2,
                                  objective="targeted", steps=2))


def test_slots_in_lockstep_take_their_last_iteration_without_a_gradient(judge, images,
                                                                       monkeypatch):
    """FGSM: every running slot reaches its last iteration (which only judges) at once, so the
    stream runs it as the judge program, with no backward pass (``loop.judge_step``): once per
    fill of the slots. Each image still equals running it alone."""
    from ppjax.attacks import loop

    calls, compile_attack = [], loop.compile_attack

    def counting(cfg, **kw):
        p = compile_attack(cfg, **kw)
        return p._replace(judge=lambda *a: calls.append(1) or p.judge(*a))

    monkeypatch.setattr(loop, "compile_attack", counting)
    got = dict(ppjax.attacks.stream("fgsm", judge, items(images, range(N)), slots=2,
                                    eps=3 / 255))
    monkeypatch.undo()
    assert len(calls) == -(-N // 2)  # 5 images in 2 slots: 3 fills, one judge call each
    for it in items(images, range(N)):
        r = ppjax.attack("fgsm", judge, jnp.asarray(it.image[None]), eps=3 / 255,
                         seeds=np.array([it.seed], np.uint32))
        ref = ppjax.AttackResult(**{f: (v[0] if f != "extras" else
                                        {k: e[0] for k, e in v.items()})
                                    for f, v in r._asdict().items()})
        same(got[it.key], ref, f"image {it.key}", exact=True)
