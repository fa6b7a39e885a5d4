"""ppjax.runs.pipeline: the prefetching decoder and the PNG writer against serial load_item /
encode_png, per-file errors, the memory bound, crashes and Ctrl-C."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppjax.image import io as imageio
from ppjax.runs import data, pipeline

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mixed_items(tmp_path_factory, photo_paths) -> list[data.Item]:
    """Real photos at several sizes, a PNG at the task size, a corrupt file, a missing file and
    a refused item, interleaved."""
    d = tmp_path_factory.mktemp("mixed")
    items = []
    for i, p in enumerate(photo_paths):
        im = Image.open(p).convert("RGB")
        for k, size in enumerate([(300, 200), (256, 256), (640, 480)]):
            q = d / f"p{i}_{k}.jpg" if k != 1 else d / f"p{i}_{k}.png"
            im.resize(size).save(q)
            items.append(data.Item(q.name, str(q)))
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    items.insert(2, data.Item("corrupt.jpg", str(d / "corrupt.jpg")))
    items.insert(4, data.Item("missing.jpg", str(d / "missing.jpg")))
    items.insert(5, data.Item("refused.jpg", str(d / "x.jpg"), error="refused: symlink"))
    return items


def _same(a: data.Loaded, b: data.Loaded) -> None:
    assert a.item == b.item
    assert a.error == b.error
    assert a.notes == b.notes
    if a.image is None:
        assert b.image is None
    else:
        np.testing.assert_array_equal(a.image, b.image)


@pytest.mark.parametrize("pool", pipeline.POOLS)
def test_prefetch_equals_serial_load_item(mixed_items, pool):
    ref = [data.load_item(it, 2019) for it in mixed_items]
    got = list(pipeline.prefetch(mixed_items, 2019, workers=2, depth=3, pool=pool))
    assert len(got) == len(ref)
    for a, b in zip(ref, got, strict=True):
        _same(a, b)
    errs = {g.item.name: g.error for g in got if g.error}
    assert set(errs) == {"corrupt.jpg", "missing.jpg", "refused.jpg"}
    assert "no such file" in errs["missing.jpg"] and errs["refused.jpg"] == "refused: symlink"


def test_prefetch_2020_rule_passed_through(mixed_items):
    ok = [it for it in mixed_items if it.name.endswith("_2.jpg")]  # 640x480: 2020 centre crop
    got = list(pipeline.prefetch(ok, 2020, rule="crop", workers=1, pool="process"))
    for it, g in zip(ok, got, strict=True):
        _same(data.load_item(it, 2020, rule="crop"), g)
        assert g.image.shape == (384, 512, 3)


@pytest.mark.parametrize("pool", pipeline.POOLS)
def test_prefetch_window_is_bounded(mixed_items, pool):
    """Items taken from the input and not yet handed back never exceed ``depth``, and the
    input is consumed lazily (an endless input works)."""
    depth = 3
    pulled = [0]

    def endless():
        while True:
            pulled[0] += 1
            yield mixed_items[pulled[0] % len(mixed_items)]

    got = 0
    peak = 0
    for _ in pipeline.prefetch(endless(), 2019, workers=2, depth=depth, pool=pool):
        got += 1
        peak = max(peak, pulled[0] - got + 1)  # +1: the one in our hands is still in flight
        time.sleep(0.005)  # a consumer slower than the workers: they must wait, not race ahead
        if got == 20:
            break
    assert peak <= depth
    assert pulled[0] <= got + depth


def _crash_on_bomb(item, task, rule, max_pixels):
    if item.name == "bomb.jpg":
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder fault / the OOM killer, for real
    if item.name == "raises.jpg":
        raise RuntimeError("loader bug")
    return data.load_item(item, task, rule, max_pixels)


def test_prefetch_crashed_worker_is_that_files_error(mixed_items):
    ok = [it for it in mixed_items if it.error is None and it.name.startswith("p")][:5]
    items = ok[:2] + [data.Item("bomb.jpg", ok[0].path)] + ok[2:4] + \
        [data.Item("raises.jpg", ok[0].path), data.Item("bomb.jpg", ok[1].path)] + ok[4:]
    got = list(pipeline.prefetch(items, 2019, workers=2, depth=4, pool="process",
                                 loader=_crash_on_bomb))
    assert [g.item for g in got] == items
    for it, g in zip(items, got, strict=True):
        if it.name == "bomb.jpg":
            assert g.image is None and "worker process died" in g.error
        elif it.name == "raises.jpg":
            assert g.image is None and "RuntimeError: loader bug" in g.error
        else:
            _same(data.load_item(it, 2019), g)


def _niceness(item, task, rule, max_pixels):
    return data.Loaded(item, None, [str(os.getpriority(os.PRIO_PROCESS, 0))])


def test_prefetch_workers_yield_the_cpu_to_the_device_loop(mixed_items):
    # where host work shares the cores with the device loop, the loop runs first
    got = list(pipeline.prefetch(mixed_items[:3], 2019, workers=2, depth=2, pool="process",
                                 loader=_niceness))
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert [int(g.notes[0]) for g in got] == [min(19, mine + pipeline.WORKER_NICE)] * 3


def test_prefetch_rejects_bad_settings():
    with pytest.raises(ValueError, match="depth"):
        pipeline.prefetch([], 2019, depth=0)
    with pytest.raises(ValueError, match="pool"):
        pipeline.prefetch([], 2019, pool="gpu")
    with pytest.raises(ValueError, match="unknown task"):
        pipeline.prefetch([], 2018)


_INTERRUPT = textwrap.dedent("""
    import signal, sys, time
    # Python's own Ctrl-C handler, whatever this process inherited: a shell starts background
    # jobs (e.g. `make test &`) with SIGINT ignored, and Python then installs none
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import psutil
    from ppjax.runs import data
    from ppjax.runs import pipeline
    from tests.test_pipeline import _slow

    items = [data.Item(f"{i}.jpg", sys.argv[1]) for i in range(100)]
    it = pipeline.prefetch(items, 2019, workers=2, depth=4, pool="process", loader=_slow)
    try:
        for x in it:
            kids = [p.pid for p in psutil.Process().children(recursive=True)]
            print("KIDS", *kids, flush=True)
    except KeyboardInterrupt:
        print("INTERRUPTED", flush=True)
        sys.exit(130)
""")


def _slow(item, task, rule, max_pixels):
    time.sleep(0.5)
    return data.load_item(item, task, rule, max_pixels)


def test_prefetch_ctrl_c_leaves_no_child(photo_paths):
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-c", _INTERRUPT, str(photo_paths[0])], cwd=REPO,
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.startswith("KIDS"), p.stderr.read()
    workers = [psutil.Process(int(k)) for k in line.split()[1:]]
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "INTERRUPTED" in out
    assert "Traceback" not in err  # workers ignore SIGINT: no per-worker traceback
    gone, alive = psutil.wait_procs([w for w in workers if w.is_running()], timeout=10)
    assert not [w for w in alive if w.status() != psutil.STATUS_ZOMBIE]


def test_prefetch_closed_early_stops_workers(mixed_items):
    """The pool's workers are children of the fork server, not of this process: watch every
    descendant, and check the workers were seen (else the test would watch nothing)."""
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    it = pipeline.prefetch(mixed_items * 5, 2019, workers=2, depth=4, pool="process",
                           loader=_slow)
    next(it)
    # the fork server and multiprocessing's resource tracker are this process's own children
    # and stay by design; the workers are the fork server's (they share its command line)
    workers = [c for c in me.children(recursive=True) if c.pid not in before
               and c.ppid() != me.pid]
    assert len(workers) == 2, [(c.pid, c.ppid(), c.cmdline()) for c in workers]
    it.close()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive


# --------------------------------------------------------------------------- Writer

@pytest.mark.parametrize("pool", pipeline.POOLS)
def test_writer_equals_serial_encode(tmp_path, photos_256, pool):
    imgs = imageio.to_uint8(photos_256[:4])
    text = {"ppjax-standin": "STAND-IN test"}
    with pipeline.Writer(workers=2, depth=2, pool=pool) as w:
        futs = [w.submit(tmp_path / f"{i}.png", x, text if i % 2 else None)
                for i, x in enumerate(imgs)]
    for i, (x, f) in enumerate(zip(imgs, futs, strict=True)):
        ref = imageio.encode_png(x, text if i % 2 else None)
        got = (tmp_path / f"{i}.png").read_bytes()
        assert got == ref
        assert f.result() == hashlib.sha256(ref).hexdigest()
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{i}.png")), x)
    assert Image.open(tmp_path / "1.png").text == text
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temporary left behind


def test_writer_failures_surface_through_the_future(tmp_path, photos_256):
    img = imageio.to_uint8(photos_256[0])
    with pipeline.Writer(workers=2) as w:
        bad_dir = w.submit(tmp_path / "no" / "such" / "dir.png", img)
        bad_img = w.submit(tmp_path / "f.png", img.astype(np.float32))
        good = w.submit(tmp_path / "ok.png", img)
    with pytest.raises(FileNotFoundError):
        bad_dir.result()
    with pytest.raises(ValueError, match="uint8"):
        bad_img.result()
    assert good.result() == hashlib.sha256((tmp_path / "ok.png").read_bytes()).hexdigest()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(tmp_path / "late.png", img)


def test_writer_submit_blocks_at_depth(tmp_path, photos_256, monkeypatch):
    """With a slow disk, pending writes never exceed ``depth`` and ``submit`` waits."""
    real = imageio.atomic_write_bytes

    def slow(path, png):
        time.sleep(0.05)
        real(path, png)

    monkeypatch.setattr(imageio, "atomic_write_bytes", slow)
    img = imageio.to_uint8(photos_256[0])
    buf = img.copy()
    t0 = time.perf_counter()
    with pipeline.Writer(workers=1, depth=2, pool="thread") as w:
        futs = []
        for i in range(8):
            buf[:] = img if i % 2 == 0 else 255 - img
            futs.append(w.submit(tmp_path / f"{i}.png", buf))  # buffer reused at once
            assert w.pending <= 2
    assert w.max_pending == 2
    assert time.perf_counter() - t0 >= 8 * 0.05
    for i, f in enumerate(futs):
        exp = img if i % 2 == 0 else 255 - img
        assert f.result() == hashlib.sha256(imageio.encode_png(exp)).hexdigest()


def test_writer_recovers_from_a_killed_worker(tmp_path, photos_256):
    """A writer process killed (OOM killer, a crash) fails the writes it held, through their
    futures; the next submits start a fresh pool and succeed."""
    psutil = pytest.importorskip("psutil")
    from concurrent.futures.process import BrokenProcessPool

    img = imageio.to_uint8(photos_256[0])
    me = psutil.Process()
    before = {c.pid for c in me.children(recursive=True)}
    with pipeline.Writer(workers=1, pool="process") as w:
        w.submit(tmp_path / "a.png", img).result()
        killed = 0
        for c in me.children(recursive=True):
            if c.pid not in before and "forkserver" in " ".join(c.cmdline()) and \
                    c.ppid() != me.pid:  # the worker (a child of the fork server)
                c.kill()
                killed += 1
        assert killed == 1
        outcomes = []
        for i in range(3):
            f = w.submit(tmp_path / f"b{i}.png", img)
            try:
                outcomes.append(f.result(timeout=60))
                break
            except BrokenProcessPool:
                outcomes.append("broken")
    assert outcomes[-1] == hashlib.sha256(imageio.encode_png(img)).hexdigest()
    assert set(outcomes[:-1]) <= {"broken"}


def test_write_zip_atomic_equals_in_memory_zip(tmp_path, photos_256):
    """Byte-identical to the same entries written by ``ZipFile.writestr`` into memory (as
    ppjax's zips were built before they were streamed), and readable by zipfile."""
    import io
    import zipfile

    files = []
    for i, x in enumerate(imageio.to_uint8(photos_256[:3])):
        p = tmp_path / f"{'cba'[i]}_{i}.png"
        p.write_bytes(imageio.encode_png(x))
        files.append(p)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for p in sorted(files, key=lambda q: q.name):
            info = zipfile.ZipInfo(p.name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.create_system = 3
            z.writestr(info, p.read_bytes())
    got = pipeline.write_zip_atomic(tmp_path / "streamed.zip", files, chunk=4096)
    assert got.read_bytes() == buf.getvalue()
    with zipfile.ZipFile(got) as z:
        assert z.namelist() == sorted(p.name for p in files) and z.testzip() is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_recorded_writes_blame_files_but_not_the_disk():
    """:class:`pipeline.RecordedWrites` (both ``protect`` streams' recorder): done writes are
    recorded in submission order with their sha256, a failed write is that file's error, and a
    full disk is no file's: a non-blocking drain raises it, a blocking one records the rest
    first and :meth:`raise_if_full` raises it after."""
    import concurrent.futures as cf
    import dataclasses
    import errno

    @dataclasses.dataclass(frozen=True)
    class Entry:
        name: str
        output: str
        notes: tuple = ()
        sha256: str | None = None

    class Prog:
        def __init__(self):
            self.log = []

        def ok(self, entry, sync=True):
            self.log.append(("ok", entry.name, entry.sha256))

        def error(self, name, err, notes=None):
            self.log.append(("error", name, err))

        def sync(self):
            self.log.append(("sync",))

    def fut(result=None, exc=None):
        f = cf.Future()
        f.set_exception(exc) if exc else f.set_result(result)
        return f

    full = OSError(errno.ENOSPC, "No space left on device")
    prog = Prog()
    w = pipeline.RecordedWrites(prog)
    w.add(fut("aa"), Entry("a", "A.png"))
    w.add(fut(exc=ValueError("bad image")), Entry("b", "B.png"))
    w.add(fut(exc=full), Entry("c", "C.png"))
    pending = cf.Future()
    w.add(pending, Entry("d", "D.png"))
    with pytest.raises(OSError) as e:
        w.drain(block=False)
    assert e.value is full
    assert prog.log == [("ok", "a", "aa"), ("error", "b", "writing B.png: bad image"), ("sync",)]
    pending.set_result("dd")
    w.drain(block=True)  # the run's final drain: no raise, the finished write recorded
    assert prog.log[3:] == [("ok", "d", "dd"), ("sync",)]
    with pytest.raises(OSError, match="No space left"):
        w.raise_if_full()
    quiet = pipeline.RecordedWrites(Prog())
    quiet.add(fut(exc=ValueError("x")), Entry("e", "E.png"))
    quiet.drain(block=True)
    quiet.raise_if_full()  # only a full disk stops the run
