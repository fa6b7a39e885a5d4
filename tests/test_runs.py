"""Runs that never lie and never block (issue 14): every bad input a user tried is refused before
any write with exit code 2 and a message naming it; a second run on one ``--out`` is refused; a
lock left by a kill -9 never blocks; stand-in outputs carry their mark; input-folder rules."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ppjax
from ppjax import cli
from ppjax.attacks import get_attack
from ppjax.image import io as imageio
from ppjax.runs import data
from ppjax.runs.layout import LOCK, STANDIN_TEXT
from tests.test_imageio import png_raw

REPO = Path(__file__).resolve().parents[1]
RUN = "TEAM_r1"


def _args(images, out, wdir, *extra):
    return ["protect", "--task", "2019", "--attack", "ifgsm", "--set", "steps=1", "--images",
            str(images), "--out", str(out), "--run-code", RUN, "--standin", "--weights-dir",
            str(wdir), "--batch-size", "2", "--no-progress", *extra]


def _tree(root: Path, skip: Path | None = None) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` (except ``skip``) with its size and mtime."""
    out = {}
    for p in root.rglob("*"):
        if skip is not None and (p == skip or skip in p.parents):
            continue
        st = p.lstat()
        out[str(p)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def photos(tmp_path, photo_paths):
    """Two small real photos in a folder of their own."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in photo_paths[:2]:
        Image.open(p).convert("RGB").resize((64, 48), Image.BICUBIC).save(d / (p.stem + ".png"))
    return d


def _refused(capsys, tmp_path, args, *needles):
    """Run ``args``; assert exit code 2, each needle in the message, no traceback, and nothing
    written anywhere under ``tmp_path``."""
    before = _tree(tmp_path)
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in err
    assert _tree(tmp_path) == before
    return err


def test_negative_eps_is_refused(photos, standin_weights, tmp_path, capsys):
    _refused(capsys, tmp_path, _args(photos, tmp_path / "o", standin_weights, "--set", "eps=-1"),
             "eps=-1 is out of range")


def test_bad_kinds_and_missing_folder_reported_together(photos, standin_weights, tmp_path, capsys):
    err = _refused(capsys, tmp_path, _args(tmp_path / "phots", tmp_path / "o", standin_weights,
                                           "--set", "eps=abc", "--set", "judge_quality=0"),
                   "2 problems", "eps must be a finite number, got 'abc'", "phots does not exist")
    assert err.count("  - ") == 2


def test_label_outside_the_classes_is_refused(photos, standin_weights, tmp_path, capsys):
    lst = tmp_path / "list.csv"
    names = sorted(p.name for p in photos.iterdir())
    lst.write_text(f"{names[0]},999\n{names[1]},3\n")
    _refused(capsys, tmp_path, _args(photos, tmp_path / "o", standin_weights, "--list", str(lst)),
             "not classes of resnet50_places365 (0..364)", f"{names[0]}: 999")


def test_empty_folder_is_refused(standin_weights, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".DS_Store").write_bytes(b"x")
    _refused(capsys, tmp_path, _args(tmp_path / "empty", tmp_path / "o", standin_weights),
             "no images to protect", ".DS_Store (hidden file)")


def test_out_is_a_file_or_unwritable(photos, standin_weights, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _refused(capsys, tmp_path, _args(photos, tmp_path / "afile", standin_weights),
             "exists and is not a folder")
    _refused(capsys, tmp_path, _args(photos, tmp_path / "afile" / "sub", standin_weights),
             "is a file, not a folder")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        if os.geteuid() == 0:  # root writes anywhere: a folder that cannot be created instead
            err = _refused(capsys, tmp_path, _args(photos, "/proc/ppjax-test-out", standin_weights))
            assert "cannot create the output folder" in err or "not writable" in err
        else:
            _refused(capsys, tmp_path, _args(photos, ro / "o", standin_weights), "not writable")
    finally:
        ro.chmod(0o755)


def test_interrupted_during_validation_writes_nothing(photos, standin_weights, tmp_path, capsys,
                                                       monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "dataset_scan", interrupt)
    before = _tree(tmp_path)
    assert cli.main(_args(photos, tmp_path / "o", standin_weights)) == 130
    assert "interrupted" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def _hold_lock(out: Path) -> subprocess.Popen:
    """A process holding ``out``'s run lock (as a running ``ppjax protect`` does)."""
    code = ("import sys, time; from pathlib import Path; from ppjax.runs.layout import OutputLock\n"
            "out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)\n"
            "with OutputLock(out):\n    print('locked', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_refused_run_then_lock_then_kill9_then_corrected_run(photos, standin_weights, tmp_path,
                                                             capsys):
    """The whole story on one --out: a run refused in validation leaves nothing behind; a second
    run while another holds the folder is refused; after a kill -9 of the holder, the corrected
    run works. Stand-in marks, hidden files and a symlink leaving the folder are checked on it."""
    out = tmp_path / "out"
    (photos / "..jpg").write_bytes(b"hidden")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    (photos / "link.png").symlink_to(secret)
    _refused(capsys, tmp_path, _args(photos, out, standin_weights, "--set", "eps=abc"), "abc")

    holder = _hold_lock(out)
    try:
        rc = cli.main(_args(photos, out, standin_weights))
        err = capsys.readouterr().err
        assert rc == 2 and "another ppjax run is working in" in err and f"pid {holder.pid}" in err
        assert sorted(p.name for p in out.iterdir()) == [LOCK]  # no config.json, nothing else
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()

    outside = _tree(tmp_path, skip=out)
    rc = cli.main(_args(photos, out, standin_weights))
    cap = capsys.readouterr()
    assert rc == 1, cap.err  # the symlink is a per-file error; the photos are done
    assert _tree(tmp_path, skip=out) == outside  # nothing written outside --out
    assert "link.png: refused: symlink leads outside the image folder" in cap.err
    assert "skipped 1 hidden file(s)" in cap.err and "..jpg" in cap.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["standin"] is True and summary["protected"] == 2 and summary["failed"] == 1
    assert summary["skipped_inputs"] == [{"name": "..jpg", "reason": "hidden file"}]
    assert summary["zip"] == f"STANDIN_{RUN}.zip" and not (out / f"{RUN}.zip").exists()
    with zipfile.ZipFile(out / summary["zip"]) as z:
        names = sorted(z.namelist())
        assert len(names) == 2
        for n in names:
            with Image.open(out / "images" / n) as im:
                assert im.text == STANDIN_TEXT  # the PNG's own text chunk says STAND-IN
    assert cap.out.startswith("STAND-IN ")
    stored = json.loads((out / "config.json").read_text())
    from ppjax.attacks import AttackConfig, resolve_attack

    want = resolve_attack("ifgsm", None, {"steps": 1})  # every field, resolved, is recorded
    rec = stored["attack_resolved"]
    assert rec["preset"] == "default" and rec["overrides"] == {"steps": 1}
    assert sorted(rec["resolved"]) == sorted(f.name for f in dataclasses.fields(AttackConfig))
    assert rec["resolved"]["eps"] == want.eps and rec["resolved"]["steps"] == 1
    assert stored["ppjax"]["version"] == ppjax.__version__
    assert stored["ppjax"]["commit"] is None or len(stored["ppjax"]["commit"]) >= 40


def test_bomb_message_names_the_applied_limit(tmp_path):
    huge = png_raw(30_000, 30_000, 8, 2, None)  # 900 Mpx: over Pillow's own hard limit too
    limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode_rgb(huge)
    assert f"900000000 pixels exceeds the limit of {limit} pixels" in str(e.value)
    small = png_raw(300, 200, 8, 2, None)
    with pytest.raises(imageio.DecodeError) as e:
        imageio.decode_rgb(small, max_pixels=1000)
    assert "60000 pixels exceeds the limit of 1000 pixels (max_pixels)" in str(e.value)


def test_folder_rules(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    img = np.zeros((4, 4, 3), np.uint8)
    for n in ("a.png", "..jpg", ".b.png"):
        Image.fromarray(img).save(d / n, "PNG")
    (d / "notes.txt").write_text("x")
    (d / "sub").mkdir()
    (d / "inside.png").symlink_to(d / "a.png")
    (tmp_path / "out.png").write_bytes((d / "a.png").read_bytes())
    (d / "outside.png").symlink_to(tmp_path / "out.png")
    (d / "broken.png").symlink_to(d / "gone.png")
    items, skipped = data.scan_folder(d)
    assert dict(skipped) == {"..jpg": "hidden file", ".b.png": "hidden file",
                             "notes.txt": "not an image extension", "sub": "folder (not searched)"}
    by = {it.name: it for it in items}
    assert sorted(by) == ["a.png", "broken.png", "inside.png", "outside.png"]
    assert by["a.png"].error is None and by["inside.png"].error is None
    assert "outside the image folder" in by["outside.png"].error
    assert "broken symlink" in by["broken.png"].error
    assert data.load_item(by["outside.png"], 2019).error == by["outside.png"].error
    lst = tmp_path / "l.csv"
    lst.write_text("../out.png,1\na.png,2\noutside.png,3\n")
    listed = {it.name: it for it in data.mepp_items(d, lst)}
    assert listed["../out.png"].error is None  # a listed name is the user's explicit choice
    assert listed["a.png"].error is None
    assert "outside the image folder" in listed["outside.png"].error  # a symlink is not


@pytest.mark.parametrize("kw, msg", [
    ({"eps": 0.0}, "eps=0 is out of range"),
    ({"eps": "abc"}, "eps must be a finite number"),
    ({"steps": 2.5}, "steps must be an integer"),
    ({"early_stop": "no"}, "early_stop must be true or false"),
    ({"eot_quality_lo": 96.0}, "eot_quality_lo=96 is above eot_quality_hi=95"),
    ({"judge_quality": 101}, "judge_quality=101 is out of range"),
    ({"const": -1.0, "search_steps": 1}, "const=-1 is out of range"),
    ({"early_stop": False}, "best='final'"),
    ({"const": 0.1}, "search_steps=1 for that single constant"),
])
def test_attack_settings_are_checked(kw, msg):
    name = ("camouflage" if "quality" in next(iter(kw)) else "cw_l2" if "const" in kw
            else "pgd")
    with pytest.raises(ValueError, match="^attack") as e:
        get_attack(name, **kw)
    assert msg in str(e.value)


def test_contradictions_resolved_by_saying_what_is_meant_are_allowed():
    cfg = get_attack("pgd", early_stop=False, best="final")
    assert not cfg.early_stop and cfg.best == "final"
    cfg = get_attack("cw_l2", const=0.1, search_steps=1)
    assert cfg.const == 0.1 and cfg.rounds == 1
    assert get_attack("pgd", "madry").best == "final"  # Madry et al. return the last iterate


def test_help_loads_no_jax_and_lists_exit_codes():
    code = ("import sys, io, contextlib; from ppjax import cli\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            "    try: cli.main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print('JAX' if 'jax' in sys.modules else 'NOJAX'); print(buf.getvalue())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NOJAX")
    for word in ("protect", "sweep", "evaluate", "exit codes", "usage or setup error"):
        assert word in r.stdout


def test_command_table_is_a_registry_of_lazy_modules():
    """``ppjax.cli.COMMANDS`` is a Registry: an unknown name lists the commands; each command's
    module, imported on use, gives that command a real parser (with an entry) and imports no
    other command's module."""
    import argparse

    from ppjax.registry import Registry, UnknownName

    assert isinstance(cli.COMMANDS, Registry)
    with pytest.raises(UnknownName, match="unknown command 'nope'; known: attacks, bench, convert, evaluate"):
        cli.COMMANDS["nope"]
    for name in cli.COMMANDS:
        parser = cli.build_parser(name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        assert callable(sub.choices[name].get_default("func")), name
        others = [n for n in cli.COMMANDS if cli.COMMANDS[n].module.target
                  != cli.COMMANDS[name].module.target]
        assert all(sub.choices[n].get_default("func") is None for n in others), name


def test_every_option_has_help_and_protect_lists_the_attacks():
    import argparse

    from ppjax.attacks import ATTACKS

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("protect", "sweep", "fetch", "fetch-data", "convert", "standin", "judges"):
        for act in sub.choices[name]._actions:
            assert act.help, (name, act.dest)
    text = sub.choices["protect"].format_help()
    for attack, presets in ATTACKS.items():
        line = next(x for x in text.splitlines() if x.strip().startswith(attack + " "))
        assert all(p in line for p in presets), line
    assert "(default: 8)" in text and "(default: float32)" in text  # --batch-size: 8 slots


def test_torchattacks_preset_matches_torchattacks_pgd(photo_paths):
    """``pgd/torchattacks`` is torchattacks.PGD: same defaults (eps 8/255, alpha 2/255, 10 steps,
    every step, final iterate); compared on one judge (a torch CNN converted to Flax), with the
    random start off on both sides (their RNGs differ) and the defaults read from torchattacks."""
    import jax
    import jax.numpy as jnp
    import torch
    import torchattacks

    import ppjax
    from benchmarks.torch_ref.pgd import TinyCNN as TorchTinyCNN
    from ppjax.convert.common import random_torch_state_dict, torch_to_flax
    from tests.conftest import photos_at
    from tests.test_attacks import HW, TinyCNN, make_judge

    abstract = jax.eval_shape(TinyCNN().init, jax.random.key(0), jnp.zeros((1, *HW, 3)))
    sd = random_torch_state_dict(abstract, seed=5)
    tmodel = TorchTinyCNN(size=HW[0]).eval()
    tmodel.load_state_dict(sd)
    judge = make_judge(torch_to_flax({k: v.numpy() for k, v in sd.items()}, abstract,
                                     "random torch TinyCNN", "TinyCNN"))
    theirs = torchattacks.PGD(tmodel)  # its defaults
    cfg = get_attack("pgd", "torchattacks")
    assert (cfg.eps, cfg.step_size, cfg.steps, cfg.random_start) == pytest.approx(
        (theirs.eps, theirs.alpha, theirs.steps, theirs.random_start))
    theirs.random_start = False
    x = photos_at(photo_paths, HW, 4)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        labels = tmodel(xt).argmax(1)
    ref = theirs(xt, labels).numpy().transpose(0, 2, 3, 1)
    res = ppjax.attack("pgd", judge, x, labels.numpy(), preset="torchattacks", random_start=False)
    ours = np.round(np.asarray(res.images) * 255).astype(int)
    same = (ours == np.round(ref * 255).astype(int)).mean()
    assert same >= 0.99, f"only {same:.4f} of pixels identical"
    assert (np.asarray(res.steps) == theirs.steps).all()  # every step taken, as torchattacks


def test_benchmark_models_do_not_need_the_tests_package():
    import torch  # noqa: F401  (the child builds torch models; skipped where torch is absent)

    code = ("import sys; sys.modules['tests'] = None\n"
            "from benchmarks import torch_models\n"
            "torch_models.resnet50(); torch_models.nima_mobilenet_v2(); print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_protect_resolves_the_attack_once_and_runs_what_it_records(standin_weights, tmp_path,
                                                                      photo_paths, monkeypatch):
    """``ppjax protect`` turns the attack's name, preset and settings into a config once, in the
    validation before anything is written; the engine runs that very config, and config.json
    records it (nothing re-resolved on the way, where it could drift from the record)."""
    import ppjax.attacks
    from ppjax.attacks import api, presets
    from ppjax.runs.provenance import attack_record

    resolved, ran = [], []

    def counted(*a, **k):
        resolved.append(presets.resolve_attack(*a, **k))
        return resolved[-1]

    for mod in (ppjax.attacks, api):  # every name the callers take it by
        monkeypatch.setattr(mod, "resolve_attack", counted)
    engine = ppjax.attacks.stream
    monkeypatch.setattr(ppjax.attacks, "stream", lambda acfg, *a, **k: (ran.append(acfg),
                                                                         engine(acfg, *a, **k))[1])
    (tmp_path / "in").mkdir()
    Image.open(photo_paths[0]).convert("RGB").resize((64, 48)).save(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    assert cli.main(_args(tmp_path / "in", out, standin_weights)) == 0
    assert len(resolved) == 1 and len(ran) == 1 and ran[0] is resolved[0]
    stored = json.loads((out / "config.json").read_text())["attack_resolved"]
    want = attack_record(ran[0], "ifgsm", None, (("steps", 1),))
    assert stored == json.loads(json.dumps(want))
