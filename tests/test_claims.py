"""README claims no other test exercised (issue 27, item 7): exit code 3 and ``-v``, the
``judges`` / ``convert NAME PATH`` / ``fetch-data`` commands, and the presets ``pgd/madry``,
``pgd/restarts``, ``pgd/foolbox``, ``vmifgsm/paper``, ``square/paper``, ``perc_al/kappa40`` and
``perc_al/untargeted`` (each resolved as the CLI does and run on a tiny judge)."""

from __future__ import annotations

import filecmp
import importlib.util
import logging

import jax.numpy as jnp
import numpy as np
import pytest

import ppjax
from ppjax import cli
from ppjax.attacks import resolve_attack

JUDGE = "alexnet_places365"


@pytest.fixture(autouse=True)
def fresh_logging():
    """``cli.main`` in-process points the root logger at this test's captured stderr; drop
    that handler afterwards, so later tests do not log into a closed stream."""
    yield
    for h in logging.root.handlers[:]:
        logging.root.removeHandler(h)


def test_unexpected_error_is_exit_3_with_the_traceback_under_v(monkeypatch, capsys):
    def boom():
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "persistent_compilation_cache", boom)
    assert cli.main(["judges"]) == 3
    err = capsys.readouterr().err
    assert "unexpected ZeroDivisionError: a bug" in err and "ppjax -v" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli.main(["-v", "judges"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


@pytest.fixture(scope="module")
def standin_source(tmp_path_factory):
    """The AlexNet stand-in's source file in the published (CSAIL) layout."""
    from ppjax.config import downloads_dir
    from ppjax.convert import get_converter
    from ppjax.judges import get_spec

    d = tmp_path_factory.mktemp("w")
    get_converter(get_spec(JUDGE).converter).make_standin(weights_dir=d)
    # torch's layout where torch is installed, else the same numbers as .npz (docs/gpu.md)
    return next(p for p in (downloads_dir(d) / (get_spec(JUDGE).filename + ext)
                            for ext in (".standin", ".standin.npz")) if p.exists())


def test_convert_and_judges_commands(standin_source, tmp_path, capsys):
    wdir = tmp_path / "weights"
    assert cli.main(["judges", "--weights-dir", str(wdir)]) == 0
    before = capsys.readouterr().out
    assert cli.main(["convert", JUDGE, str(standin_source), "--weights-dir", str(wdir)]) == 0
    assert f"{JUDGE}: converted to" in capsys.readouterr().out
    assert cli.main(["judges", "--weights-dir", str(wdir)]) == 0
    after = capsys.readouterr().out
    line = lambda text: next(x for x in text.splitlines() if JUDGE in x)  # noqa: E731
    assert line(before) != line(after)  # the listing changed for this judge, and only it
    assert [x for x in before.splitlines() if JUDGE not in x] == \
        [x for x in after.splitlines() if JUDGE not in x]
    judge = ppjax.load_judge(JUDGE, wdir)
    assert judge(jnp.zeros((1, 256, 256, 3))).shape == (1, 365)
    # a file that is not a checkpoint: exit 1, the message, nothing converted
    bad = tmp_path / "bad.pth.tar"
    bad.write_bytes(b"not a checkpoint")
    # (without torch, which reads .pth.tar files: a setup error naming it)
    want = 1 if importlib.util.find_spec("torch") else 2
    assert cli.main(["convert", JUDGE, str(bad), "--weights-dir", str(tmp_path / "w2")]) == want
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "w2" / JUDGE).exists()


def test_fetch_data_from_a_local_mirror(shared_data, tmp_path, capsys):
    """``ppjax fetch-data --from DIR`` copies every label file and list (the shared data folder
    has the layout), each byte for byte; a mirror without them is exit 1 with the file named."""
    from ppjax.judges.fetch import DATA_FILES, PLACES365_VAL

    have = [r for r in (*DATA_FILES, PLACES365_VAL) if (shared_data / r).exists()]
    if len(have) < len(DATA_FILES) + 1:
        mirror = tmp_path / "mirror"
        for rel in (*DATA_FILES, PLACES365_VAL):
            (mirror / rel).parent.mkdir(parents=True, exist_ok=True)
            src = shared_data / rel
            (mirror / rel).write_bytes(src.read_bytes() if src.exists() else rel.encode())
    else:
        mirror = shared_data
    out = tmp_path / "data"
    assert cli.main(["fetch-data", "--data-dir", str(out), "--from", str(mirror)]) == 0
    for rel in (*DATA_FILES, PLACES365_VAL):
        assert filecmp.cmp(out / rel, mirror / rel, shallow=False), rel
    assert cli.main(["fetch-data", "--data-dir", str(tmp_path / "d2"), "--from",
                     str(tmp_path / "empty")]) == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny():
    from tests.test_attacks import make_judge

    return make_judge()


@pytest.fixture(scope="module")
def tiny_x(photo_paths):
    from tests.conftest import photos_at

    return jnp.asarray(photos_at(photo_paths, (32, 32), 2))


# (attack, preset, what it claims, steps run here)
PRESETS = [
    ("pgd", "madry", "every step, final iterate", 3),
    ("pgd", "foolbox", "every step, final iterate", 3),
    ("pgd", "restarts", "restarts", 2),
    ("vmifgsm", "paper", "20 neighbours", 2),
    ("square", "paper", "p_init 0.05", 5),
    ("perc_al", "kappa40", "kappa 40", 3),
    ("perc_al", "untargeted", "alpha_c 0.1 -> 0.01", 3),
]


@pytest.mark.parametrize("attack,preset,claim,steps", PRESETS)
def test_preset_runs_as_claimed(tiny, tiny_x, attack, preset, claim, steps):
    cfg = resolve_attack(attack, preset, {"steps": steps})
    labels = np.asarray(jnp.argmax(tiny(tiny_x), -1))
    res = ppjax.attack(attack, tiny, tiny_x, labels, preset=preset, steps=steps)
    imgs = np.asarray(res.images)
    assert np.isfinite(imgs).all() and imgs.min() >= 0 and imgs.max() <= 1
    if attack in ("pgd", "vmifgsm", "square"):  # Linf attacks stay in their ball (8-bit)
        assert np.abs(imgs - np.asarray(tiny_x)).max() <= cfg.eps + 0.5 / 255 + 1e-6
    if claim == "every step, final iterate":
        assert not cfg.early_stop and cfg.best == "final"
        np.testing.assert_array_equal(np.asarray(res.steps), steps)  # no image stopped early
    elif claim == "restarts":
        assert cfg.restarts == 5
    elif claim == "20 neighbours":
        assert cfg.vmi_samples == 20
    elif claim == "p_init 0.05":
        assert cfg.square_p_init == 0.05 and resolve_attack(attack, preset, {}).steps == 10000
        assert (np.asarray(res.extras["queries"]) <= steps + 1).all()
    elif claim == "kappa 40":
        assert cfg.kappa == 40.0
        # a margin of 40 is out of the tiny judge's reach in 3 steps: nobody counts as fooled
        assert not np.asarray(res.success).any()
    else:
        assert (cfg.step_size2, cfg.step_size2_min) == (0.1, 0.01)
