"""Faults ``ppjax protect`` must survive without losing or half-writing anything (issue 27): odd
files in the images folder (symlink loops, dangling links, folders named like images, FIFOs,
devices, sockets, unreadable files), fuzzed JPEG/PNG/WebP/GIF files, a full disk, SIGTERM and
SIGINT while images are in flight, and broken judge weights.

The runs use the AlexNet-Places365 stand-in (the cheapest 256x256 judge) with one attack step;
every ``ppjax`` subprocess shares this module's compilation cache. ``pytest -m fuzz`` runs the
full fuzz set (520 files); the default run takes a fixed-seed subset of 60.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from ppjax import cli
from ppjax.runs.layout import file_sha256
from tests.fuzz_images import fuzz_files

REPO = Path(__file__).resolve().parents[1]
RUN = "FLT"
JUDGE = "alexnet_places365"
N_FUZZ_QUICK, N_FUZZ_FULL, FUZZ_SEED = 60, 520, 27
N_CLEAN = 12


@pytest.fixture(autouse=True)
def fresh_logging():
    """``cli.main`` in-process points the root logger at this test's captured stderr; drop
    that handler afterwards, so later tests do not log into a closed stream."""
    yield
    for h in logging.root.handlers[:]:
        logging.root.removeHandler(h)


def protect_args(images, out, wdir, extra=(), steps=1, batch=4):
    return ["protect", "--task", "2019", "--judge", JUDGE, "--attack", "ifgsm", "--set",
            f"steps={steps}", "--images", str(images), "--out", str(out), "--run-code", RUN,
            "--standin", "--weights-dir", str(wdir), "--batch-size", str(batch),
            "--no-progress", "--workers", "2", *extra]


def _default_signals():
    # A test run started in the background by a shell without job control (`make test &`,
    # nohup) ignores SIGINT, and a child inherits that: ppjax then rightly keeps ignoring it, so
    # the CLI under test gets the default dispositions, as from a terminal.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def start_cli(args, cache, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.Popen([sys.executable, "-m", "ppjax.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_signals)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=900)
    return proc.returncode, stdout, stderr


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ppjax.convert import get_converter
    from ppjax.judges import get_spec

    d = tmp_path_factory.mktemp("weights")
    get_converter(get_spec(JUDGE).converter).make_standin(weights_dir=d)
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


def manifest_of(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    entries = [json.loads(x) for x in lines if x.strip()]
    return {e["name"]: e for e in entries}


def assert_whole(out: Path) -> dict[str, dict]:
    """The folder holds exactly the PNGs its manifest lists as ok, each with its recorded
    sha256, and nothing half-written; returns the manifest."""
    man = manifest_of(out)
    ok = {e["output"]: e["sha256"] for e in man.values() if e["status"] == "ok"}
    on_disk = sorted(p.name for p in (out / "images").iterdir())
    assert on_disk == sorted(ok), "PNGs on disk differ from the manifest's"
    for name, sha in ok.items():
        assert file_sha256(out / "images" / name) == sha, name
    assert not list(out.glob(".*.tmp"))
    return man


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "unexpected" not in stderr, stderr[-3000:]


# ------------------------------------------------------------------ odd files and fuzzed files

def odd_files(d: Path) -> dict[str, str]:
    """Write the odd entries into ``d``; returns ``{name: expected reason fragment}``."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "loop_a.jpg").symlink_to("loop_b.jpg")
    (d / "loop_b.jpg").symlink_to("loop_a.jpg")
    (d / "self.png").symlink_to("self.png")
    (d / "dangling.jpg").symlink_to("gone.jpg")
    (d / "folder.jpg").mkdir()
    os.mkfifo(d / "fifo.jpg")
    want = {"loop_a.jpg": "symlink loop", "loop_b.jpg": "symlink loop",
            "self.png": "symlink loop", "dangling.jpg": "broken symlink",
            "folder.jpg": "a folder", "fifo.jpg": "FIFO"}
    try:
        os.mknod(d / "device.jpg", 0o644 | 0o020000, os.makedev(1, 3))  # /dev/null's numbers
        want["device.jpg"] = "character device"
    except (PermissionError, OSError):
        pass  # not root: no device file (the FIFO and socket cover non-regular files)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(d / "socket.png"))
    want["socket.png"] = "socket"
    if os.geteuid() != 0:  # root reads any file: tested with a dropped euid below
        (d / "unreadable.jpg").write_bytes(b"\xff\xd8")
        (d / "unreadable.jpg").chmod(0)
        want["unreadable.jpg"] = "unreadable"
    return want


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory, photo_paths, weights, cache):
    d = tmp_path_factory.mktemp("odd") / "images"
    want = odd_files(d)
    for p in photo_paths:
        shutil.copy(p, d / p.name)
    fuzz = fuzz_files(photo_paths, d, N_FUZZ_QUICK, FUZZ_SEED)
    out = tmp_path_factory.mktemp("odd_out")
    rc, stdout, stderr = start_cli(protect_args(d, out, weights, batch=8), cache)
    return out, want, fuzz, [p.name for p in photo_paths], rc, stderr


def test_odd_files_are_per_file_errors(odd_run):
    out, want, _, photos, rc, stderr = odd_run
    assert rc == 1, stderr[-3000:]
    assert_no_traceback(stderr)
    man = assert_whole(out)
    for name, why in want.items():
        assert man[name]["status"] == "error" and why in man[name]["error"], (name, man[name])
        assert f"{name}: " in stderr  # logged with its reason
    for name in photos:
        assert man[name]["status"] == "ok", man[name]


def test_fuzzed_files_are_protected_or_reported(odd_run):
    out, want, fuzz, photos, rc, stderr = odd_run
    assert_fuzz_run(out, fuzz, rc, stderr, len(want) + len(photos))


def assert_fuzz_run(out, fuzz, rc, stderr, n_other):
    assert rc == 1, stderr[-3000:]
    assert_no_traceback(stderr)
    man = assert_whole(out)
    assert set(fuzz) <= set(man)
    errors = {n: man[n]["error"] for n in fuzz if man[n]["status"] == "error"}
    assert all(errors.values())
    assert 0 < len(errors) < len(fuzz)  # the mutations leave some files decodable
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protected"] + summary["failed"] == len(fuzz) + n_other
    with zipfile.ZipFile(out / f"STANDIN_{RUN}.zip") as z:
        assert sorted(z.namelist()) == sorted(p.name for p in (out / "images").iterdir())
    return len(fuzz) - len(errors), len(errors)


@pytest.mark.fuzz
def test_fuzz_full(tmp_path, photo_paths, weights, cache):
    """The full fuzz set: 520 damaged files through ``ppjax protect``; prints the counts."""
    d = tmp_path / "images"
    fuzz = fuzz_files(photo_paths, d, N_FUZZ_FULL, FUZZ_SEED)
    rc, _, stderr = start_cli(protect_args(d, tmp_path / "out", weights, batch=8), cache)
    n_ok, n_err = assert_fuzz_run(tmp_path / "out", fuzz, rc, stderr, 0)
    print(f"fuzz: {len(fuzz)} files, {n_ok} protected, {n_err} reported, 0 crashes")


def test_unreadable_file_is_a_per_file_error(tmp_path):
    """Permission denied is the file's error with its reason (as root, by a dropped euid)."""
    from ppjax.runs import data

    folder = Path("/tmp") / f"ppjax-unreadable-{os.getpid()}"
    folder.mkdir(mode=0o755)
    try:
        (folder / "secret.jpg").write_bytes(b"\xff\xd8\xff")
        (folder / "secret.jpg").chmod(0)
        items, _ = data.scan_folder(folder)
        dropped = os.geteuid() == 0
        if dropped:
            os.seteuid(65534)
        try:
            lo = data.load_item(items[0], 2019)
        finally:
            if dropped:
                os.seteuid(0)
        assert lo.image is None and "unreadable" in lo.error
    finally:
        shutil.rmtree(folder)


# ------------------------------------------------------------------ full disk and signals

@pytest.fixture(scope="module")
def clean_set(tmp_path_factory, photo_paths, weights, cache):
    """Twelve photos (two, under six names each) and their uninterrupted run."""
    d = tmp_path_factory.mktemp("clean") / "images"
    d.mkdir()
    for k in range(N_CLEAN // 2):
        for p in photo_paths:
            shutil.copy(p, d / f"{k}_{p.name}")
    ref = tmp_path_factory.mktemp("ref")
    rc, _, stderr = start_cli(protect_args(d, ref, weights, steps=8, batch=2), cache)
    assert rc == 0, stderr[-3000:]
    return d, ref


def assert_same_as(out: Path, ref: Path) -> None:
    names = sorted(p.name for p in (ref / "images").iterdir())
    assert sorted(p.name for p in (out / "images").iterdir()) == names
    for n in names:
        assert (out / "images" / n).read_bytes() == (ref / "images" / n).read_bytes(), n
    z = f"STANDIN_{RUN}.zip"
    assert (out / z).read_bytes() == (ref / z).read_bytes()


@contextlib.contextmanager
def small_tmpfs(mnt: Path, size: int):
    """A tmpfs of ``size`` bytes mounted at ``mnt`` (the test is skipped, with the reason,
    where none can be mounted); yields ``free()``, which grows it to 64 MiB."""
    mnt.mkdir()
    got = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if got.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {got.stderr.strip() or got.returncode}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_stops_cleanly_and_resumes(clean_set, weights, cache, tmp_path):
    images, ref = clean_set
    png = max(p.stat().st_size for p in (ref / "images").iterdir())
    size = (3 * png + png // 2) // 4096 * 4096 + 4096  # room for about three PNGs
    with small_tmpfs(tmp_path / "small", size) as free:
        out = tmp_path / "small" / "run"
        rc, _, stderr = start_cli(protect_args(images, out, weights, steps=8, batch=2), cache)
        assert rc == 2, stderr[-3000:]
        assert_no_traceback(stderr)
        assert "No space left on device" in stderr and "rerun the same command" in stderr
        man = assert_whole(out)
        assert all(e["status"] == "ok" for e in man.values())  # no file blamed for the disk
        assert len(man) < N_CLEAN
        free()
        rc, _, stderr = start_cli(protect_args(images, out, weights, steps=8, batch=2), cache)
        assert rc == 0, stderr[-3000:]
        assert_same_as(out, ref)


def stop_in_flight(args, cache, out: Path, sig, after: int):
    """Start ``ppjax protect``, send ``sig`` once the manifest has more than ``after`` lines
    (images are then in the engine's slots and the writer pool); returns (rc, stderr)."""
    proc = start_cli(args, cache, wait=False)
    man = out / "manifest.jsonl"
    deadline = time.time() + 600
    try:
        while time.time() < deadline and proc.poll() is None:
            if man.exists() and man.read_text("utf-8", errors="replace").count("\n") > after:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the signal"
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr


def test_signals_in_flight_finish_writes_then_resume_is_identical(clean_set, weights, cache,
                                                                   tmp_path):
    """SIGTERM (rc 143), then SIGINT on the resumed run (rc 130), each while images are in
    flight: both finish and record the files being written (the folder holds exactly what the
    manifest lists), and the last resume equals the uninterrupted run byte for byte."""
    images, ref = clean_set
    out = tmp_path / "run"
    args = protect_args(images, out, weights, steps=8, batch=2)
    done = 0
    for sig, code, word in ((signal.SIGTERM, 143, "terminated"),
                            (signal.SIGINT, 130, "interrupted")):
        rc, stderr = stop_in_flight(args, cache, out, sig, done)
        assert rc == code, stderr[-3000:]
        assert word in stderr and "Traceback" not in stderr
        n = len(assert_whole(out))
        assert done < n < N_CLEAN, (word, done, n)
        done = n
    rc, _, stderr = start_cli(args, cache)
    assert rc == 0, stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["skipped_on_resume"] == done
    assert_same_as(out, ref)


# ------------------------------------------------------------------ broken weights

@pytest.fixture()
def weights_copy(weights, tmp_path):
    """A copy of the stand-in's folder made of hard links (instant); :func:`_rewrite` replaces
    a file instead of changing the shared one."""
    d = tmp_path / "w"
    shutil.copytree(weights, d, symlinks=True, copy_function=os.link)
    return d, d / f"{JUDGE}.standin"


def _rewrite(p: Path, data: bytes) -> None:
    p.unlink()
    p.write_bytes(data)


def _largest_data_file(judge: Path) -> Path:
    return max((p for p in (judge / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _truncate(judge: Path) -> None:
    p = _largest_data_file(judge)
    _rewrite(p, p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(judge: Path) -> None:
    p = _largest_data_file(judge)
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF
    _rewrite(p, bytes(b))


def _edit_metadata(folder: Path, **changes) -> None:
    meta = json.loads((folder / "metadata.json").read_text())
    meta.update(changes)
    _rewrite(folder / "metadata.json", json.dumps(
        {k: v for k, v in meta.items() if v is not None}).encode())


def _drop_hashes(judge: Path) -> None:
    _edit_metadata(judge, state_sha256=None)


def _claim(judge: Path, name: str) -> None:
    _edit_metadata(judge, judge=name)


BREAKS = {
    "truncated": _truncate,
    "byte changed": _flip_byte,
    "truncated, no recorded hashes": lambda j: (_drop_hashes(j), _truncate(j)),
    "metadata not JSON": lambda j: _rewrite(j / "metadata.json", b"{not json"),
    "metadata a list": lambda j: _rewrite(j / "metadata.json", b"[]"),
    "another judge's weights": lambda j: _claim(j, "resnet18_places365"),
}


@pytest.mark.parametrize("kind", list(BREAKS))
def test_broken_weights_are_a_setup_error(kind, weights_copy, clean_set, tmp_path, capsys):
    wdir, judge = weights_copy
    BREAKS[kind](judge)
    rc = cli.main(protect_args(clean_set[0], tmp_path / "out", wdir))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"judge '{JUDGE}'" in err and f"ppjax standin {JUDGE}" in err, err
    assert not (tmp_path / "out" / "images").exists()  # nothing protected


def test_weights_of_another_judge_under_its_name(weights_copy, tmp_path):
    """The AlexNet stand-in stored as ResNet-18's, its metadata claiming ResNet-18 too: orbax's
    restore (other shapes) is the check, and it names the judge and the command."""
    from ppjax import load_judge
    from ppjax.errors import SetupError

    wdir, judge = weights_copy
    other = wdir / "resnet18_places365.standin"
    judge.rename(other)
    _claim(other, "resnet18_places365")
    with pytest.raises(SetupError, match="resnet18_places365") as e:
        load_judge("resnet18_places365", wdir, standin=True)
    assert "orbax cannot restore" in str(e.value)
    assert "ppjax standin resnet18_places365" in str(e.value)


def test_real_weights_message_names_convert(weights_copy, tmp_path):
    """A broken converted (not stand-in) judge: the message names ``ppjax convert NAME PATH``."""
    from ppjax import load_judge
    from ppjax.errors import SetupError

    wdir, judge = weights_copy
    real = wdir / JUDGE
    judge.rename(real)
    _truncate(real)
    with pytest.raises(SetupError) as e:
        load_judge(JUDGE, wdir)
    assert f"ppjax convert {JUDGE} " in str(e.value) and "changed" in str(e.value)


def test_old_checkpoint_without_hashes_still_loads(weights_copy):
    from ppjax import load_judge

    wdir, judge = weights_copy
    _drop_hashes(judge)
    assert load_judge(JUDGE, wdir, standin=True).standin


def test_missing_metadata_of_converted_judge(weights_copy, clean_set, tmp_path, capsys):
    wdir, judge = weights_copy
    real = wdir / JUDGE
    judge.rename(real)
    (real / "metadata.json").unlink()
    args = [a for a in protect_args(clean_set[0], tmp_path / "out", wdir) if a != "--standin"]
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2 and f"ppjax convert {JUDGE} " in err, err


# ------------------------------------------------------------------ files checked by evaluate

def test_evaluate_checks_files_against_the_run(clean_set, weights, tmp_path):
    """One pixel of one PNG changed, another PNG's copy in the zip changed, and a stray zip
    entry: each is a per-file error in the report (and report.md), and the changed files are
    not scored; ``trust_files`` skips the check."""
    import numpy as np
    from PIL import Image

    from ppjax import load_judge
    from ppjax.runs.evaluate import run_evaluate

    _, ref = clean_set
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    pngs = sorted((run / "images").iterdir())
    a, b = pngs[0], pngs[1]
    px = np.asarray(Image.open(a)).copy()
    px[0, 0, 0] ^= 1
    Image.fromarray(px).save(a)
    zpath = run / f"STANDIN_{RUN}.zip"
    with zipfile.ZipFile(zpath) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    entries[b.name] = entries[b.name][:-1] + bytes([entries[b.name][-1] ^ 1])
    entries["stray.png"] = b"x"
    with zipfile.ZipFile(zpath, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    judge = load_judge(JUDGE, weights, standin=True)
    rep = run_evaluate(None, run, tmp_path / "ev", judge=judge, no_appeal=True, progress=False)
    errs = {e["name"]: e["error"] for e in rep["errors"]}
    by_out = {e["output"]: n for n, e in manifest_of(run).items()}
    assert "changed after protect wrote it" in errs.pop(by_out[a.name])
    assert "differs from the PNG" in errs.pop(by_out[b.name])
    assert "not a file of the run" in errs.pop("stray.png")
    assert not errs and rep["n_images"] == N_CLEAN - 2 and rep["files_verified"]
    md = (tmp_path / "ev" / "report.md").read_text()
    assert by_out[a.name] in md and "stray.png" in md
    rep = run_evaluate(None, run, tmp_path / "ev2", judge=judge, no_appeal=True,
                       progress=False, trust_files=True)
    assert rep["n_failed"] == 0 and rep["n_images"] == N_CLEAN and not rep["files_verified"]


# ------------------------------------------------------------------ typed records, same bytes

def test_manifest_lines_and_summary_keep_their_format(odd_run):
    """:class:`ManifestEntry` writes the bytes the untyped dicts of earlier versions wrote (the
    dicts built here as ``runs/protect.py`` built them), and reads back every line of a run."""
    from ppjax.runs.layout import ManifestEntry, RunSummary

    def old_line(d):
        return (json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n").encode()

    ok = {"name": "ünï.jpg", "status": "ok", "output": "R_ünï.png", "notes": ["resized"],
          "seed": 7, "success": True, "steps": 3, "linf_levels": 2.0, "appeal_before": 5.1,
          "appeal_after": 5.2, "label": 4, "label_source": "list", "sha256": "ab"}
    assert ManifestEntry("ünï.jpg", "ok", "R_ünï.png", ("resized",), seed=7, success=True,
                         steps=3, linf_levels=2.0, sha256="ab", label=4, label_source="list",
                         appeal_before=5.1, appeal_after=5.2).line() == old_line(ok)
    bare = {k: v for k, v in ok.items() if k not in ("appeal_before", "appeal_after", "label",
                                                     "label_source")}
    assert ManifestEntry.from_json(bare).line() == old_line(bare)
    for err in ({"name": "a", "status": "error", "error": "bad", "output": None},
                {"name": "a", "status": "error", "error": "bad", "output": "R_a.png",
                 "notes": []}):
        assert ManifestEntry.from_json(err).line() == old_line(err)
    out = odd_run[0]
    for line in (out / "manifest.jsonl").read_bytes().splitlines(keepends=True):
        assert ManifestEntry.from_json(json.loads(line)).line() == line
    summary = json.loads((out / "summary.json").read_text())
    assert list(RunSummary(**summary).to_json()) == list(summary)  # same keys, same order
