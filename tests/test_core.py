"""The attack core's interfaces (issue 25): an objective declares its per-image inputs and the
API, the stream's slots and the loop carry them; the clean logits reach the objective
explicitly; a probe with its own state is chosen by the config, not by the loop."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax.attacks import StreamItem, register
from ppjax.attacks.objectives import (
    Input,
    Terms,
    as_logits,
    cross_entropy,
    from_output,
    label_margin,
)
from ppjax.attacks.probes import PROBES, make_probe
from tests.test_attacks import HW, make_judge


@register("test_avoid_class")
def _avoid(cfg):
    """Untargeted CE away from a per-image class named ``avoid`` (not ``labels``): the same
    attack as ``ce`` with labels = avoid, reached through a declared input."""

    def terms(out, models, x, aux, cfg):
        z = as_logits(out)
        y = aux["avoid"]
        return Terms(-cross_entropy(z, y), jnp.argmax(z, -1) != y, label_margin(z, y))

    return from_output(terms, prepare=None, inputs=(Input("avoid"),))


@pytest.fixture(scope="module")
def setup(photo_paths):
    from tests.conftest import photos_at

    judge = make_judge()
    x = photos_at(photo_paths, HW, 3)
    y = np.asarray(jnp.argmax(judge(jnp.asarray(x)), -1))
    return judge, x, y


def test_a_declared_input_is_carried_by_attack_and_stream(setup):
    judge, x, y = setup
    kw = dict(steps=4, eps=4 / 255, step_size=1 / 255)
    ref = ppjax.attack("ifgsm", judge, x, labels=y, **kw)
    ours = ppjax.attack("ifgsm", judge, x, objective="test_avoid_class", inputs={"avoid": y},
                        **kw)
    np.testing.assert_array_equal(ours.images, ref.images)
    np.testing.assert_array_equal(ours.success, ref.success)
    items = [StreamItem(i, x[i], seed=i, inputs={"avoid": int(y[i])}) for i in range(3)]
    rows = dict(ppjax.stream("ifgsm", judge, items, slots=2, objective="test_avoid_class", **kw))
    for i in range(3):
        one = ppjax.attack("ifgsm", judge, x[i:i + 1], objective="test_avoid_class",
                           inputs={"avoid": y[i:i + 1]}, seeds=[i], **kw)
        np.testing.assert_array_equal(rows[i].images, np.asarray(one.images)[0])
    with pytest.raises(ValueError, match=r"reads no per-image avoid \(it reads: labels, targets"):
        ppjax.attack("ifgsm", judge, x, inputs={"avoid": y}, **kw)


def test_the_probe_is_a_part_chosen_by_the_config():
    from ppjax.attacks import get_attack

    assert make_probe(get_attack("square")) is PROBES["square"]
    assert not PROBES["square"].judges_iterate
    assert make_probe(get_attack("pgd")).judges_iterate
    assert "square" in PROBES and "sign" not in PROBES
