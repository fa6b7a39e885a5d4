"""Settings that cannot lie (issue 24): one validation reads each field's declared range and
help (``ppjax.attacks.config.setting``) and reports every problem at once, in the API and the
CLI; pixel-unit values above 1 come back with the 8/255 hint; other libraries' names are
refused naming ppjax's; CLI booleans take True/False in any case; labels and targets outside
the judge's classes are refused (only -1 means "the clean top-1")."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import ppjax
from ppjax import cli
from ppjax.attacks import AttackConfig, SettingsError, get_attack, resolve_attack
from ppjax.attacks.config import FIELDS, SETTING_ALIASES
from ppjax.attacks.stream import StreamItem
from tests.test_attacks import HW, make_judge


def _refusal(name="pgd", **settings) -> str:
    with pytest.raises(SettingsError) as e:
        get_attack(name, **settings)
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)
    assert str(e.value).startswith(f"attack {name!r}: ")
    return str(e.value)


def test_every_problem_is_reported_at_once():
    msg = _refusal(alpha=2 / 255, steps=0, eps=8, early_stop="no", judge_quality=101)
    for needle in ("unknown setting(s) alpha; known: step_size (ppjax's name for alpha)",
                   "steps must be >= 1", "eps=8 is out of range: eps is in [0, 1] units: did "
                   "you mean 8/255?", "early_stop must be true or false, got 'no'",
                   "judge_quality=101 is out of range"):
        assert needle in msg, (needle, msg)


def test_pixel_units_above_one_are_refused_with_the_hint_where_they_are_pixels():
    assert "did you mean 2/255?" in _refusal(step_size=2)
    assert "did you mean 16/255?" in _refusal("mifgsm", eps=16.0)
    assert "pixel values are in [0, 1]" in _refusal(eps=300)
    # L2 radii and parameter-space steps are not pixel values: above 1 is meaningful there
    assert get_attack("pgd_l2", eps=3.0).eps == 3.0
    assert get_attack("cw_l2", step_size=2.0).step_size == 2.0
    assert get_attack("fgsm").step_size == 1.0  # FGSM's one step of 1, clipped to eps


def test_other_libraries_names_are_refused_naming_ppjax_s():
    assert SETTING_ALIASES["alpha"] == "step_size" and SETTING_ALIASES["epsilon"] == "eps"
    for alias, field in SETTING_ALIASES.items():
        assert field in FIELDS and alias not in FIELDS
        assert f"known: {field} (ppjax's name for {alias})" in _refusal(**{alias: 0.5})


@pytest.mark.parametrize("text,value", [("False", False), ("false", False), ("FALSE", False),
                                        ("True", True), ("true", True), (" TRUE ", True)])
def test_booleans_take_true_and_false_in_any_case(text, value):
    cfg = resolve_attack("pgd", settings={"early_stop": text, "best": "final"})
    assert cfg.early_stop is value


def test_every_field_declares_its_help_and_every_number_its_range():
    unranged = set()
    for name, f in FIELDS.items():
        assert f.metadata["help"], name
        if isinstance(f.default, int | float) and not isinstance(f.default, bool):
            if f.metadata["lo"] is None and f.metadata["hi"] is None:
                unranged.add(name)
    # the only numbers that may take any value: a new field must declare its range
    assert unranged == {"theta_min", "theta_max", "threshold"}
    with pytest.raises(SettingsError, match="adam_b1=1 is out of range"):
        AttackConfig(step="adam", adam_b1=1.0)  # the config validates itself too


def test_a_sweep_over_traced_values_shares_the_static_structure():
    a, b = get_attack("pgd"), get_attack("pgd", eps=4 / 255, step_size=1 / 255)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    assert jax.tree.structure(a) != jax.tree.structure(get_attack("pgd", steps=11))
    assert not any(hasattr(a, m) for m in ("static", "hyperparameters"))
    doubled = jax.tree.map(lambda v: 2 * v, a)
    assert doubled.eps == 2 * a.eps and doubled.steps == a.steps


@pytest.fixture(scope="module")
def judge():
    return make_judge()


def test_labels_outside_the_judges_classes_are_refused(judge):
    x = np.zeros((2, *HW, 3), np.float32)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\) or -1.*"
                                         r"got 400, -5"):
        ppjax.attack("pgd", judge, x, labels=[400, -5])
    with pytest.raises(ValueError, match=r"targets must be .*got 10"):
        ppjax.attack("pgd", judge, x, objective="targeted", targets=[3, 10])
    items = [StreamItem("a", x[0], 0, label=2), StreamItem("b", x[1], 1, label=-2)]
    with pytest.raises(ValueError, match=r"image 'b': label must be class indices .*got -2"):
        list(ppjax.stream("pgd", judge, items, slots=2))


def test_the_cli_reports_every_setting_problem_at_once(tmp_path, capsys):
    rc = cli.main(["protect", "--task", "2019", "--attack", "ifgsm", "--images",
                   str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--run-code", "T_r1",
                   "--standin", "--weights-dir", str(tmp_path / "w"), "--no-progress",
                   "--set", "eps=8", "--set", "alpha=2/255", "--set", "steps=0",
                   "--set", "early_stop=False", "--set", "best=final"])
    err = capsys.readouterr().err
    assert rc == 2, err
    for needle in ("did you mean 8/255?", "step_size (ppjax's name for alpha)",
                   "steps must be >= 1"):
        assert needle in err, (needle, err)
    assert "early_stop must" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
