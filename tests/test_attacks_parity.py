"""Parity of ppjax's PGD with a PGD written in plain torch (tests/torch_ref/pgd.py), on the same
judge: a torch CNN converted to Flax by the project's strict converter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

import ppjax
from ppjax.convert.common import random_torch_state_dict, torch_to_flax
from tests.conftest import photos_at
from tests.test_attacks import HW, TinyCNN, make_judge
from tests.torch_ref.pgd import TinyCNN as TorchTinyCNN
from tests.torch_ref.pgd import pgd_linf


def test_pgd_matches_torch_reference(photo_paths):
    torch.manual_seed(0)
    abstract = jax.eval_shape(TinyCNN().init, jax.random.key(0), jnp.zeros((1, *HW, 3)))
    sd = random_torch_state_dict(abstract, seed=5)
    tmodel = TorchTinyCNN(size=HW[0])
    tmodel.load_state_dict(sd)
    judge = make_judge(torch_to_flax({k: v.numpy() for k, v in sd.items()}, abstract,
                                     "random torch TinyCNN", "TinyCNN"))
    x = photos_at(photo_paths, HW, 6)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        labels = tmodel(xt).argmax(1)
    # the converted judge agrees with torch before any attack
    np.testing.assert_allclose(np.asarray(judge(jnp.asarray(x))), tmodel(xt).detach().numpy(),
                               rtol=1e-4, atol=1e-4)

    eps, alpha, steps = 8 / 255, 2 / 255, 5
    ref = pgd_linf(tmodel, xt, labels, eps, alpha, steps).numpy().transpose(0, 2, 3, 1)
    res = ppjax.attack("pgd", judge, x, labels.numpy(), eps=eps, step_size=alpha, steps=steps,
                       random_start=False, early_stop=False, best="final")
    ours = np.round(np.asarray(res.images) * 255).astype(int)
    theirs = np.round(ref * 255).astype(int)
    same = (ours == theirs).mean()
    assert same >= 0.99, f"only {same:.4f} of pixels identical"
    assert np.abs(ours - np.round(x * 255)).max() <= 8
    assert (np.asarray(res.steps) == steps).all()
    # it is a real attack, not a no-op: most pixels moved by the full budget
    assert (np.abs(ours - np.round(x * 255)) == 8).mean() > 0.5
