"""Ensemble objectives (``ensemble_logits`` / ``ensemble_losses``): the loss against torch's
cross-entropy on the members' logits, traced weights (no recompilation), success on every member
or on a chosen one, and an attack that fools the ensemble inside its eps ball."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ppjax
from ppjax.attacks import count_traces, get_attack
from ppjax.attacks.ensembles import ensemble_members
from ppjax.attacks.objectives import make_objective
from ppjax.judges import Judge, JudgeSpec


class TinyClassifier(nn.Module):
    """Average-pool to 4x4, then a linear layer: a small differentiable classifier."""

    classes: int = 7
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        x = x.reshape(b, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(b, -1)
        return nn.Dense(self.classes, name="fc")(x - 0.5)


def _judge(seed, hw=(32, 32), scale=1.0):
    spec = JudgeSpec(name=f"tiny{seed}", model="-", input_hw=hw, output="logits", filename="-",
                     url="-", converter="-", architecture="test", preprocessing="none")
    mod = TinyClassifier()
    v = mod.init(jax.random.key(seed), jnp.zeros((1, *hw, 3)))
    v = jax.tree.map(lambda a: a * scale * 20.0, v)
    return Judge(variables=v, module=mod, spec=spec)


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 3)).astype(np.float32))


@pytest.mark.parametrize("reduce", ["logits", "losses"])
def test_loss_matches_torch_cross_entropy(reduce, x):
    judges = [_judge(1), _judge(2), _judge(3)]
    y = jnp.asarray([0, 3, 5], jnp.int32)
    w = [0.5, 2.0, 1.5]
    main, extra, hyper = ensemble_members(judges, w)
    cfg = get_attack("pgd", objective=f"ensemble_{reduce}", hyper=hyper)
    terms = make_objective(cfg).evaluate({"judge": main, **extra}, x, {"labels": y},
                                         cfg)
    zs = [torch.from_numpy(np.array(j(x))) for j in judges]
    wt = torch.tensor(w) / sum(w)
    yt = torch.from_numpy(np.array(y)).long()
    if reduce == "logits":
        ref = -F.cross_entropy(sum(wk * z for wk, z in zip(wt, zs, strict=True)), yt, reduction="none")
    else:
        ref = -sum(wk * F.cross_entropy(z, yt, reduction="none") for wk, z in zip(wt, zs, strict=True))
    np.testing.assert_allclose(np.asarray(terms.loss), ref.numpy(), rtol=1e-5, atol=1e-5)
    fooled = np.stack([z.argmax(-1).numpy() != np.asarray(y) for z in zs])
    np.testing.assert_array_equal(np.asarray(terms.success), fooled.all(0))
    assert np.isfinite(np.asarray(jax.grad(lambda a: make_objective(cfg).evaluate(
        {"judge": main, **extra}, a, {"labels": y}, cfg).loss.sum())(x))).all()


def test_member_of_another_input_size_is_resized(x):
    main, extra, hyper = ensemble_members([_judge(1), _judge(2, hw=(16, 16))])
    cfg = get_attack("pgd", objective="ensemble_losses", hyper=hyper)
    t = make_objective(cfg).evaluate({"judge": main, **extra}, x, {"labels": jnp.zeros(3, int)},
                                     cfg)
    small = jax.image.resize(x, (3, 16, 16, 3), "linear", antialias=True)
    ref = 0.5 * (F.cross_entropy(torch.from_numpy(np.array(main(x))), torch.zeros(3).long(),
                                 reduction="none")
                 + F.cross_entropy(torch.from_numpy(np.array(extra["ens01"](small))),
                                   torch.zeros(3).long(), reduction="none"))
    np.testing.assert_allclose(np.asarray(t.loss), -ref.numpy(), rtol=1e-5, atol=1e-5)


def test_attack_fools_all_or_chosen_member_without_recompiling(x):
    a, b = _judge(1), _judge(2)
    # a member that cannot be fooled: constant logits (zero kernel) favouring class 0
    rock = _judge(3)
    rock = rock.replace(variables=jax.tree.map(jnp.zeros_like, rock.variables))
    rock = rock.replace(variables={"params": {"fc": {
        "kernel": rock.variables["params"]["fc"]["kernel"],
        "bias": jnp.zeros(7).at[0].set(5.0)}}})
    labels = np.zeros(3, np.int32)  # class 0: the rock always predicts it
    eps = 8 / 255

    def run(weights, success_on):
        main, extra, hyper = ensemble_members([a, b, rock], weights, success_on)
        return ppjax.attack("pgd", main, x, labels, objective="ensemble_logits", hyper=hyper,
                            extra_judges=extra, steps=15, eps=eps, step_size=2 / 255,
                            backend="xla", driver="python")

    res_all = run([1.0, 1.0, 1.0], None)
    with count_traces() as traces:
        res_one = run([0.3, 2.0, 0.0], "tiny2")  # other weights, success on member 1: no retrace
    assert traces == {}, f"recompiled: {traces}"
    assert not np.asarray(res_all.success).any()  # the rock is never fooled
    assert np.asarray(res_one.success).all()
    adv = np.asarray(res_one.images)
    assert np.abs(adv * 255 - np.round(adv * 255)).max() < 1e-3  # 8-bit grid
    x8 = np.round(np.asarray(x) * 255) / 255
    assert np.abs(adv - x8).max() <= eps + 1e-6
    pb = np.asarray(b(jnp.asarray(adv))).argmax(-1)
    assert (pb != labels).all()  # checked outside the engine too


def test_ensemble_members_validates():
    a, b = _judge(1), _judge(2)
    with pytest.raises(ValueError, match="one non-negative weight per judge"):
        ensemble_members([a, b], [1.0])
    with pytest.raises(ValueError, match="not a member"):
        ensemble_members([a, b], success_on="nope")
    with pytest.raises(ValueError, match="member index"):
        ensemble_members([a, b], success_on=2)
    main, extra, hyper = ensemble_members([a, b], success_on=1)
    assert main is a and extra == {"ens01": b}
    assert hyper == {"w_judge": 1.0, "w_ens01": 1.0, "success_on": 1.0}
