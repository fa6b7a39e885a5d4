"""``make demo`` on a fresh machine: a copy of the checkout with no ``../shared`` beside it and an
empty data directory runs on scikit-image's embedded sample photos; a missing ``DEMO_IMAGES`` is
an error; a demo on new photos starts a fresh run instead of crashing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from ppjax.runs.demo import SAMPLE_PHOTOS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    """The checkout's tracked files (as they are in the working tree) in an empty temp dir."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    root = tmp_path_factory.mktemp("fresh") / "ppjax"
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / f)
    assert not (root.parent / "shared").exists()
    return root


def _demo(clone: Path, weights: Path, *args) -> subprocess.CompletedProcess:
    home = clone.parent / "home"
    (home / "data").mkdir(parents=True, exist_ok=True)  # an empty data directory
    env = dict(os.environ, PYTHONPATH=str(clone), JAX_PLATFORMS="cpu",
               PPJAX_DATA_DIR=str(home / "data"), XDG_CACHE_HOME=str(home / "cache"),
               JAX_COMPILATION_CACHE_DIR=str(home / "jax"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("PPJAX_TEST_DATA", None)
    return subprocess.run([sys.executable, "-m", "ppjax.runs.demo", "--out", "out/demo", "--no-fetch",
                           "--weights-dir", str(weights), "--set", "steps=1", "--no-faces",
                           *args],  # the faces part: tests/test_faces_task.py
                          cwd=clone, env=env, capture_output=True, text=True, timeout=1200)


def test_demo_on_a_fresh_clone(fresh_clone, standin_weights, photo_paths):
    r = _demo(fresh_clone, standin_weights)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "STAND-IN" in r.stdout and "STAND-IN DEMO" in r.stderr
    out = fresh_clone / "out" / "demo"
    assert sorted(p.name for p in (out / "sample-photos").iterdir()) == sorted(SAMPLE_PHOTOS)
    runs = list((out / "runs").iterdir())
    assert len(runs) == 1
    with zipfile.ZipFile(runs[0] / "STANDIN_ppjax_demo.zip") as z:
        assert len(z.namelist()) == len(SAMPLE_PHOTOS)
    assert "STAND-IN" in (out / "report.md").read_text()
    page = (out / "report.html").read_text()  # the page a person opens, one card per photo
    assert "STAND-IN" in page and page.count('<figure class="card') == len(SAMPLE_PHOTOS)

    # DEMO_IMAGES that does not exist is an error, and nothing changes
    r = _demo(fresh_clone, standin_weights, "--images", "no/such/photos")
    assert r.returncode == 2 and "no/such/photos does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    assert list((out / "runs").iterdir()) == runs

    # new photos: a fresh run beside the first, not a ResumeMismatch
    mine = fresh_clone.parent / "my photos"
    mine.mkdir()
    Image.open(photo_paths[0]).convert("RGB").resize((80, 60)).save(mine / "a.png")
    r = _demo(fresh_clone, standin_weights, "--images", str(mine))
    assert r.returncode == 0, r.stderr[-3000:]
    new = sorted(set((out / "runs").iterdir()) - set(runs))
    assert len(new) == 1 and new[0].name.startswith("my_photos-")
    with zipfile.ZipFile(new[0] / "STANDIN_ppjax_demo.zip") as z:
        assert z.namelist() == ["ppjax_demo_a.png"]


def test_demo_takes_the_photos_beside_the_checkout(tmp_path, monkeypatch):
    """Without a data directory of photos, the demo reads ``../shared/data/images`` beside the
    checkout (a path the package's depth decides: it broke once when the demo moved into runs/)."""
    from ppjax import config
    from ppjax.runs.demo import default_images

    monkeypatch.setenv("PPJAX_DATA_DIR", str(tmp_path / "empty"))
    assert config.beside_checkout("shared") == REPO.parent / "shared"
    shared = REPO.parent / "shared" / "data" / "images"
    if not shared.is_dir():
        pytest.skip("no ../shared/data/images beside this checkout")
    assert default_images(tmp_path / "out") == shared
