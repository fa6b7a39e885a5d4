"""Fast, consistent help: every sub-command's ``--help`` imports no JAX and returns quickly;
required options say so, defaults are printed once (never "None"); the judge choices are listed
from :mod:`ppjax.names`, whose copies of the registries' keys must not drift. ``ppjax attacks``
prints every resolved setting."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time

import pytest

from ppjax import cli, names
from tests.conftest import REPO

COMMANDS = sorted(cli.COMMANDS)
PROBE = ("import sys, contextlib, io\nfrom ppjax.cli import main\nbuf = io.StringIO()\n"
         "with contextlib.redirect_stdout(buf):\n    try:\n        main([{cmd!r}, '--help'])\n"
         "    except SystemExit:\n        pass\n"
         "print('JAX' if 'jax' in sys.modules else 'NOJAX', len(buf.getvalue()))")


def test_names_match_the_registries():
    from ppjax.attacks.presets import ALIASES, ATTACKS
    from ppjax.image import io
    from ppjax.judges import JUDGES
    from ppjax.runs import data

    assert names.JUDGE_NAMES == tuple(sorted(JUDGES))
    assert names.ATTACK_PRESETS == {k: tuple(v) for k, v in ATTACKS.items()}
    assert names.ATTACK_ALIASES == dict(ALIASES.items())
    assert names.TASK_NAMES == tuple(data.TASKS)  # years, then names
    assert io.RESIZE_RULES is names.RESIZE_RULES


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_is_fast_and_loads_no_jax(cmd):
    code = PROBE.format(cmd=cmd)
    run = [sys.executable, "-c", code]
    subprocess.run(run, cwd=REPO, capture_output=True, check=True)  # warm the file cache
    t0 = time.perf_counter()
    res = subprocess.run(run, cwd=REPO, capture_output=True, text=True, check=True)
    took = time.perf_counter() - t0
    flag, size = res.stdout.split()
    assert flag == "NOJAX" and int(size) > 100, res.stdout
    # quiet machine: <= 0.3 s; the bound is generous for a loaded test machine
    assert took < 1.0, f"ppjax {cmd} --help took {took:.2f} s"


def _help(cmd: str) -> str:
    parser = cli.build_parser(cmd)
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    return sub.format_help()


@pytest.mark.parametrize("cmd", COMMANDS)
def test_required_marked_and_each_default_printed_once(cmd):
    text = _help(cmd)
    flat = re.sub(r"\s+", " ", text)
    assert "(default: None)" not in flat and "None:" not in flat
    parser = cli.build_parser(cmd)
    sub = next(a for a in parser._actions if a.dest == "command").choices[cmd]
    for action in sub._actions:
        if not action.option_strings or action.help is None:
            continue
        h = sub._get_formatter()._expand_help(action)  # the line --help prints
        assert len(re.findall(r"\bdefault:", h.lower())) <= 1, (cmd, action.dest, h)
        if action.required:
            assert h.endswith("(required)"), (cmd, action.dest)


def test_judge_choices_are_listed():
    for cmd in ("protect", "fetch", "convert", "standin"):
        flat = re.sub(r"\s+", " ", _help(cmd))
        assert all(n in flat for n in names.JUDGE_NAMES), cmd
    assert "resnet50_places365" in re.sub(r"\s+", " ", _help("evaluate"))


def test_attacks_lists_every_resolved_setting(capsys):
    from ppjax.attacks import AttackConfig, resolve_attack

    assert cli.main(["attacks", "pgd"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[2:]}
    fields = [f.name for f in dataclasses.fields(AttackConfig)]
    assert sorted(rows) == sorted(fields)
    presets = out.splitlines()[1].split()[1:]
    assert presets == list(names.ATTACK_PRESETS["pgd"])
    madry = resolve_attack("pgd", "madry")
    assert rows["steps"][presets.index("madry")] == str(madry.steps)
    assert rows["eps"][presets.index("default")] == "8/255"
    assert cli.main(["attacks"]) == 0
    over = capsys.readouterr().out
    assert re.search(r"^cw_l2\s+default\s+objective=\S+ norm=\S+ eps=\S+ steps=\d+", over, re.M)
    assert cli.main(["attacks", "nope"]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
