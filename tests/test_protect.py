"""``ppjax protect`` / ``ppjax evaluate`` end to end on the ResNet-50 stand-in: bad files, a kill -9
and resume compared byte for byte, and the report's numbers recomputed independently."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from ppjax import cli, load_judge
from ppjax.runs.layout import output_name, safe_stem
from tests.test_imageio import make_broken_folder

REPO = Path(__file__).resolve().parents[1]
RUN = "TEAM_run1"
ATTACK = ["--attack", "ifgsm", "--set", "steps=1"]


def _protect_args(images, out, wdir, batch, extra=()):
    return ["protect", "--task", "2019", *ATTACK, "--images", str(images), "--out", str(out),
            "--run-code", RUN, "--standin", "--weights-dir", str(wdir), "--batch-size", str(batch),
            "--no-progress", "--resize", "squash", *extra]  # the tests' Pillow references squash


@pytest.fixture(scope="module")
def src(tmp_path_factory, photo_paths):
    d = tmp_path_factory.mktemp("src")
    for p in photo_paths:
        shutil.copy(p, d / p.name)
    base = np.asarray(Image.open(photo_paths[-1]).convert("RGB").resize((96, 64), Image.BICUBIC))
    kinds = make_broken_folder(d, base)
    kinds.update({p.name: "ok" for p in photo_paths})
    return d, kinds


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    """A persistent compilation cache shared by this module's ``ppjax`` subprocesses only: the
    attack compiles once, the later runs (killed, resumed, list) load it."""
    return tmp_path_factory.mktemp("jax_cache")


def _ppjax(args, cache, wait=True, env=None):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "ppjax.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=900)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def run1(src, standin_weights, tmp_path_factory, jax_cache):
    """The uninterrupted run, batch size 4."""
    images, kinds = src
    out = tmp_path_factory.mktemp("run1")
    rc, stdout, stderr = _ppjax(_protect_args(images, out, standin_weights, 4), jax_cache)
    return out, rc, stdout, stderr


def test_protect_processes_good_files_and_reports_bad_ones(src, run1):
    images, kinds = src
    out, rc, stdout, stderr = run1
    assert rc == 1, stderr  # some files failed
    ours = [x for x in stderr.splitlines() if x.startswith(("ERROR ppjax", "INFO ppjax"))]
    assert ours and all("STAND-IN" in x for x in ours)
    assert "STAND-IN" in stdout
    manifest = {}
    for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        e = json.loads(line)
        manifest[e["name"]] = e
    assert set(manifest) == set(kinds)
    for name, kind in kinds.items():
        e = manifest[name]
        assert e["status"] == kind, (name, e)
        if kind == "error":
            assert e["error"]
            continue
        png = out / "images" / e["output"]
        assert e["output"] == output_name(RUN, name)
        im = Image.open(png)
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (256, 256)
    assert "decompression bomb" in manifest["bomb.png"]["error"]
    assert "truncated" in manifest["truncated.jpg"]["error"]
    assert "not an image" in manifest["notes.jpg"]["error"]
    assert any("CMYK" in n for n in manifest["cmyk.jpg"]["notes"])
    assert any("white" in n for n in manifest["rgba.png"]["notes"])
    assert any("EXIF" in n for n in manifest["rotated.jpg"]["notes"])
    assert any("16-bit" in n for n in manifest["deep16.png"]["notes"])
    assert any("resized" in n for n in manifest["cam_example.jpg"]["notes"])
    # every PNG (and nothing else) is in the zip, flat, byte for byte
    ok = sorted(e["output"] for e in manifest.values() if e["status"] == "ok")
    with zipfile.ZipFile(out / f"STANDIN_{RUN}.zip") as z:
        assert sorted(z.namelist()) == ok
        for n in ok:
            assert z.read(n) == (out / "images" / n).read_bytes()
    assert sorted(p.name for p in (out / "images").iterdir()) == ok
    summary = json.loads((out / "summary.json").read_text())
    assert summary["standin"] and "STAND-IN" in summary["judge"]
    assert summary["failed"] == 3 and summary["protected"] == len(ok)


def test_kill9_then_resume_is_byte_identical(src, run1, standin_weights, tmp_path, jax_cache):
    images, _ = src
    ref = run1[0]
    out = tmp_path / "run2"
    proc = _ppjax(_protect_args(images, out, standin_weights, 4), jax_cache, wait=False)
    man = out / "manifest.jsonl"
    deadline = time.time() + 400
    try:
        while time.time() < deadline and proc.poll() is None:
            if man.exists() and '"status": "ok"' in man.read_text("utf-8", errors="replace"):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    done = [json.loads(x) for x in man.read_text(encoding="utf-8").splitlines() if x.strip()
            and x.strip().endswith("}")]
    n_ok_killed = sum(e["status"] == "ok" for e in done)
    assert 1 <= n_ok_killed < 8
    # the resume skips what is done; the failed files are retried, so the images left share
    # batches with other images than in the uninterrupted run
    rc, _, stderr = _ppjax(_protect_args(images, out, standin_weights, 4), jax_cache)
    assert rc == 1, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_on_resume"] == n_ok_killed
    ref_files = sorted(p.name for p in (ref / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == ref_files
    for n in ref_files:
        assert (out / "images" / n).read_bytes() == (ref / "images" / n).read_bytes(), n
    assert (out / f"STANDIN_{RUN}.zip").read_bytes() == (ref / f"STANDIN_{RUN}.zip").read_bytes()
    assert (out / ".ppjax.lock").exists()  # the killed run held the lock: it never blocks
    # a resume with other settings is refused, and nothing is touched
    before = man.read_bytes()
    rc = cli.main(_protect_args(images, out, standin_weights, 4, ["--seed", "7"]))
    assert rc == 2 and man.read_bytes() == before


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_equal_one(src, run1, standin_weights, tmp_path, jax_cache):
    """jax.distributed with a coordinator on 127.0.0.1: two processes split the set, each
    writes its manifest shard, process 0 assembles the zip; images and zip equal the
    single-process run byte for byte."""
    images, _ = src
    ref, out = run1[0], tmp_path / "two"
    port = _free_port()
    procs = [_ppjax(_protect_args(images, out, standin_weights, 4), jax_cache, wait=False,
                    env={"PPJAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                         "PPJAX_NUM_PROCESSES": "2", "PPJAX_PROCESS_ID": str(k)})
             for k in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs  # the broken files fail in both
    shards = [json.loads(x) for k in range(2) for x in
              (out / f"manifest.{k}of2.jsonl").read_text().splitlines() if x.strip()]
    per = [sum(1 for _ in (out / f"manifest.{k}of2.jsonl").open()) for k in range(2)]
    assert min(per) >= 1 and len({e["name"] for e in shards}) == len(shards)  # a real split
    assert not (out / "manifest.jsonl").exists()
    ref_files = sorted(p.name for p in (ref / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == ref_files
    for n in ref_files:
        assert (out / "images" / n).read_bytes() == (ref / "images" / n).read_bytes(), n
    assert (out / f"STANDIN_{RUN}.zip").read_bytes() == (ref / f"STANDIN_{RUN}.zip").read_bytes()
    one, two = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    for k in ("images", "protected", "failed", "attack_success", "errors"):
        assert one[k] == two[k], k


def test_names_never_leave_out(tmp_path):
    for name in ("../../etc/passwd", "a/b\\c.jpg", "..", ".hidden.png", "x\x00y.jpg",
                 "Cafe\u0301 photo.JPG", "/abs/path/p.png"):
        o = output_name(RUN, name)
        assert "/" not in o and "\\" not in o and "\x00" not in o and not o.startswith(".")
        p = (tmp_path / o).resolve()
        assert p.parent == tmp_path.resolve()
    assert safe_stem("Cafe\u0301 photo.JPG") == "Caf\u00e9_photo"  # NFC, unicode kept
    assert safe_stem("Places365_val_00015483.jpg") == "Places365_val_00015483"


def test_list_with_labels_and_unsafe_names(standin_weights, tmp_path, photo_paths, jax_cache):
    """A MEPP-style list naming files in sub-folders and outside the image folder, with labels
    from a places365_val.txt: outputs stay flat inside --out, labels come from the list."""
    root = tmp_path / "set"
    (root / "imgs" / "sub").mkdir(parents=True)
    shutil.copy(photo_paths[0], root / "imgs" / "sub" / "a.jpg")
    shutil.copy(photo_paths[1], root / "outside.jpg")
    (root / "list.csv").write_text('"sub/a.jpg"\r\n"../outside.jpg"\r\n', encoding="utf-8")
    (root / "val.txt").write_text("a.jpg 12\noutside.jpg 300\n")
    out = tmp_path / "out"
    rc, _, stderr = _ppjax(_protect_args(root / "imgs", out, standin_weights, 4,
                                         ["--list", str(root / "list.csv"),
                                          "--labels", str(root / "val.txt")]), jax_cache)
    assert rc == 0, stderr
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == sorted([f"{RUN}_sub_a.png", f"{RUN}__outside.png"])
    entries = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert {e["name"]: e["label"] for e in entries} == {"sub/a.jpg": 12, "../outside.jpg": 300}
    assert all(e["label_source"] == "list" for e in entries)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set"]


def test_evaluate_numbers_recomputed(src, run1, standin_weights, resnet_standin, tmp_path):
    images, kinds = src
    ref = run1[0]
    ev = tmp_path / "ev"
    rc = cli.main(["evaluate", "--run", str(ref), "--out", str(ev), "--standin",
                   "--weights-dir", str(standin_weights), "--batch-size", "8"])
    assert rc == 1  # the run misses the three bad files
    rep = json.loads((ev / "report.json").read_text())
    md = (ev / "report.md").read_text()
    assert rep["standin"] and "STAND-IN" in md and "STAND-IN" in rep["judge"]
    assert rep["n_images"] == 8 and rep["n_failed"] == 3
    for f in ("grid.png", "heatmap.png", "hist_protection.png", "hist_nima.png"):
        assert Image.open(ev / f).size[0] > 100
    rows = {r["name"]: r for r in rep["per_image"]}
    manifest = {json.loads(x)["name"]: json.loads(x)
                for x in (ref / "manifest.jsonl").read_text().splitlines()}

    # top-1 on the PNGs as Pillow reads them, straight through the judge
    names = sorted(rows)
    adv = np.stack([np.asarray(Image.open(ref / "images" / manifest[n]["output"]))
                    for n in names]).astype(np.float32) / 255.0
    pred = np.asarray(jax.numpy.argmax(resnet_standin(adv), -1))
    labels = np.array([manifest[n]["label"] for n in names])
    assert [rows[n]["pred"] for n in names] == pred.tolist()
    assert rep["protection"]["top1_accuracy"] == pytest.approx(float(np.mean(pred == labels)))
    # clean top-1 of a photo, resized with Pillow directly, is the label protect recorded
    photo = "mountains.jpg"
    x0 = np.asarray(Image.open(images / photo).convert("RGB").resize((256, 256), Image.BICUBIC),
                    np.float32)[None] / 255.0
    assert int(np.argmax(resnet_standin(x0))) == manifest[photo]["label"] == rows[photo]["label"]
    assert rep["protection"]["top1_accuracy_clean"] == 1.0  # labels are clean predictions

    # PSNR by the numpy formula for that photo
    a = adv[names.index(photo)].astype(np.float64)
    mse = np.mean((a - x0[0]) ** 2)
    assert rows[photo]["psnr"] == pytest.approx(10 * np.log10(1.0 / mse), abs=1e-3)
    assert rep["quality"]["psnr_mean"] == pytest.approx(np.mean([rows[n]["psnr"] for n in names]))
    assert rep["quality"]["ssim_mean"] == pytest.approx(np.mean([rows[n]["ssim"] for n in names]))

    # NIMA mean: titu1994's Keras evaluation scores at native size (MobileNet with global
    # pooling takes any size; issue 13), stand-in NIMA, mean score
    import dataclasses

    nima = load_judge("nima_mobilenet", weights_dir=standin_weights, standin=True)
    native = nima.replace(spec=dataclasses.replace(nima.spec, input_hw=adv.shape[1:3]))
    x8 = np.stack([(x * 255).round().astype(np.uint8) for x in adv])
    s = np.asarray(native.score(x8.astype(np.float32) / 255.0))
    assert rep["appeal"]["resize"] == "native"
    assert rep["appeal"]["nima_mean"] == pytest.approx(float(s.mean()), abs=1e-4)


def test_bad_settings_fail_fast(src, standin_weights, tmp_path, capsys):
    images, _ = src
    for extra, msg in ((["--set", "bogus=1"], "bogus"), (["--preset", "nope"], "nope")):
        out = tmp_path / "o"
        assert cli.main(_protect_args(images, out, standin_weights, 4, extra)) == 2
        assert msg in capsys.readouterr().err and not out.exists()
    args = _protect_args(images, tmp_path / "o", standin_weights, 4)
    args[args.index("--run-code") + 1] = "../evil"
    assert cli.main(args) == 2 and not (tmp_path / "o").exists()


def test_parse_overrides():
    from ppjax.cli.overrides import parse_overrides

    got = dict(parse_overrides(["eps=8/255", "steps=3", "objective=ce", "early_stop=false"]))
    assert got == {"eps": 8 / 255, "steps": 3, "objective": "ce", "early_stop": False}
    with pytest.raises(ValueError):
        parse_overrides(["noequals"])


def test_config_defaults_keep_older_runs_resumable(tmp_path):
    """A run whose config.json predates a setting (here ``dtype``) resumes with that setting's
    default and is refused with any other value."""
    import dataclasses

    from ppjax.runs.layout import CONFIG, ProtectConfig, ResumeMismatch, check_or_store_config

    cfg = ProtectConfig(task=2019, attack="ifgsm", run_code="T_1", images="/x", judge="j")
    old = cfg.to_json()
    del old["dtype"]
    (tmp_path / CONFIG).write_text(json.dumps(old), encoding="utf-8")
    check_or_store_config(tmp_path, cfg)  # float32 == the default: same settings
    with pytest.raises(ResumeMismatch, match="dtype: 'float32' -> 'bfloat16'"):
        check_or_store_config(tmp_path, dataclasses.replace(cfg, dtype="bfloat16"))


def _png_level_of(path: Path) -> int:
    """The zlib level whose encoding reproduces the PNG at ``path`` byte for byte."""
    from ppjax.image import io as imageio

    im = Image.open(path)
    img, data = np.asarray(im.convert("RGB")), path.read_bytes()
    hits = [k for k in range(10) if imageio.encode_png(img, dict(im.text), k) == data]
    assert len(hits) == 1, hits
    return hits[0]


def test_png_level_is_a_run_setting_and_older_runs_resume_at_6(standin_weights, tmp_path,
                                                                photo_paths, capsys):
    """A new run writes PNGs at the default level 1 and stores it; a run whose config.json
    predates the setting (encoded at 6) resumes at 6, so its files stay byte-identical; another
    level on resume is refused; a level outside 0-9 is a usage error."""
    from ppjax.image import io as imageio
    from ppjax.runs.layout import CONFIG

    images = tmp_path / "set"
    images.mkdir()
    for p in photo_paths[:2]:
        shutil.copy(p, images / p.name)
    out = tmp_path / "out"
    assert cli.main(_protect_args(images, out, standin_weights, 2)) == 0
    pngs = sorted((out / "images").iterdir())
    assert len(pngs) == 2 and {_png_level_of(p) for p in pngs} == {imageio.PNG_LEVEL}
    cfg = json.loads((out / CONFIG).read_text())
    assert cfg["png_level"] == imageio.PNG_LEVEL == 1
    # make it a run from before the setting: no png_level, files at zlib level 6, one unfinished
    del cfg["png_level"]
    (out / CONFIG).write_text(json.dumps(cfg))
    entries = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    for e in entries:
        p = out / "images" / e["output"]
        im = Image.open(p)
        p.write_bytes(imageio.encode_png(np.asarray(im.convert("RGB")), dict(im.text), 6))
        e["sha256"] = hashlib.sha256(p.read_bytes()).hexdigest()
    gone = entries[-1]["output"]
    (out / "manifest.jsonl").write_text(json.dumps(entries[0]) + "\n")
    (out / "images" / gone).unlink()
    rc = cli.main(_protect_args(images, out, standin_weights, 2, ["--png-level", "1"]))
    assert rc == 2 and "png_level: 6 -> 1" in capsys.readouterr().err
    assert not (out / "images" / gone).exists()
    assert cli.main(_protect_args(images, out, standin_weights, 2)) == 0
    assert {_png_level_of(p) for p in (out / "images").iterdir()} == {6}
    assert json.loads((out / "summary.json").read_text())["skipped_on_resume"] == 1
    with pytest.raises(SystemExit) as e:
        cli.main(_protect_args(images, tmp_path / "o2", standin_weights, 2, ["--png-level", "10"]))
    assert e.value.code == 2 and not (tmp_path / "o2").exists()


def test_cli_keeps_apersistent_compilation_cache(tmp_path, monkeypatch):
    """The CLI caches compiled programs under the ppjax cache unless told otherwise."""
    from ppjax.cli import persistent_compilation_cache

    before = jax.config.jax_compilation_cache_dir
    try:
        monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
        monkeypatch.delenv("PPJAX_NO_COMPILATION_CACHE", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
        persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "ppjax" / "jax")
        jax.config.update("jax_compilation_cache_dir", before)
        monkeypatch.setenv("PPJAX_NO_COMPILATION_CACHE", "1")
        persistent_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == before
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
