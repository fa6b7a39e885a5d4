"""The host side of a streaming run: decode ahead of the device, write behind it.

* :func:`prefetch` decodes and resizes a set's items (:func:`ppjax.runs.data.load_item`, the one owner
  of that job) in a pool of workers ahead of the consumer, through a bounded window: at most
  ``depth`` items are taken from the input and not yet handed back, so memory stays bounded
  whatever the set size. Results come back in input order. Every failure stays with its file
  (``Loaded.error``): an undecodable file, a loader exception, and a worker process that died
  (a decoder fault, the OS killing it for memory) while it held the file.
* :class:`Writer` encodes PNGs (:func:`ppjax.image.io.encode_png`), hashes them (sha256 of the
  bytes) and writes them atomically (:func:`ppjax.image.io.atomic_write_bytes`, fsync) in a pool
  of workers; ``submit`` blocks while ``depth`` writes are pending and returns a
  :class:`concurrent.futures.Future` of the sha256, through which errors surface;
  :class:`RecordedWrites` records those futures in order (a full disk stops the run).
* :func:`write_zip_atomic` assembles the submission zip streaming from disk (the same bytes as
  building it in memory, without holding the whole set).

Mechanism, chosen by measurement (``python -m benchmarks.pipeline``, section ``pipeline_host``
of ``benchmarks/RESULTS.md``): worker processes for both pools, because they wrote fastest (PNG
encoding holds the GIL in part) and kept decoding beside a consumer that holds the GIL (the
device loop) where threads competed with it, they confine a decoder crash to its file, and
grain's ``mp_prefetch`` (which starts its workers per iterator) was slower. Workers come from
a forkserver, so none forks a multithreaded JAX process; like any multiprocessing code, a
script that uses the pools needs the ``if __name__ == "__main__":`` guard. Workers lower their
own priority (:data:`WORKER_NICE`): where they share the cores with the device loop (the CPU
backend), the loop runs first and they fill the time it waits.

Ctrl-C (or closing the iterator early) cancels cleanly: pending work is cancelled and worker
processes are terminated, so no child outlives the run. Workers ignore SIGINT themselves; the
main process decides.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import contextlib
import hashlib
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ppjax.errors import is_disk_full
from ppjax.image import io as imageio
from ppjax.runs import data, orphans

log = logging.getLogger("ppjax.runs.pipeline")

POOLS = ("process", "thread")

#: Scheduling priority the worker processes lower themselves by (``os.nice``): where the host
#: work shares CPU cores with the device loop (the CPU backend; the device loop's dispatch and
#: polling), the loop runs first and the workers fill the time it waits.
WORKER_NICE = 10
_END = object()


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decode workers when none are asked for: one per usable CPU, at most 8 (decode rates:
    benchmarks/RESULTS.md); more only costs memory (each worker may hold one full-size decoded
    photo)."""
    return max(1, min(8, cpu_count()))


def default_depth(workers: int) -> int:
    """Items in flight when no depth is asked for: 4 per worker, so every worker has the next
    file queued while the consumer takes the current one (a 2019 image is 192 KiB, a 2020 one
    576 KiB: 32 in flight are a few MiB)."""
    return 4 * workers


def _ignore_sigint() -> None:
    # Ctrl-C reaches the whole process group; the main process cancels and finishes the files
    # being written, workers must not die mid-file with a traceback of their own (they end with
    # the main process: ppjax.runs.orphans). SIGTERM keeps its default: a process pool stops a
    # broken pool's workers with it (Python 3.12 then waits for them), and ``ppjax``'s own
    # SIGTERM handling is the main process's (rc 143 after the files in flight).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _init_worker(main_pid: int) -> None:
    _ignore_sigint()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    orphans.exit_with(main_pid)  # a killed run leaves no worker behind


_CTX_LOCK = threading.Lock()
_CTX = None


def _mp_context():
    """A forkserver context whose server has ``ppjax.runs.data`` (numpy, Pillow) preloaded: workers
    start quickly and never inherit JAX's threads (forking a multithreaded process can
    deadlock)."""
    global _CTX
    with _CTX_LOCK:
        if _CTX is None:
            ctx = multiprocessing.get_context("forkserver")
            # the server exits with this process (ppjax.runs.orphans): it holds our stdout/stderr
            os.environ["PPJAX_ORPHAN_GUARD"] = str(os.getpid())
            ctx.set_forkserver_preload(["ppjax.runs.orphans", "ppjax.runs.data", "ppjax.runs.pipeline"])
            _CTX = ctx
        return _CTX


@contextlib.contextmanager
def _sigint_deferred():
    """Hold a Ctrl-C that arrives while the pool starts a worker or queues a file, and deliver
    it right after: a KeyboardInterrupt in the middle of a worker's start-up would leave a
    process the pool does not know about, which nothing would stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if got:
            os.kill(os.getpid(), signal.SIGINT)


def _make_executor(pool: str, workers: int) -> cf.Executor:
    if pool == "process":
        return cf.ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker,
                                      initargs=(os.getpid(),))
    return cf.ThreadPoolExecutor(workers, thread_name_prefix="ppjax-pipeline")


def _stop_executor(ex: cf.Executor, now: bool) -> None:
    """Shut ``ex`` down; ``now``: cancel what is queued and terminate worker processes instead
    of letting them finish (Ctrl-C, an abandoned iterator). Threads cannot be killed: a running
    task finishes on its own (one file each, at most ``workers``)."""
    procs = list((getattr(ex, "_processes", None) or {}).values())  # no public handle in 3.11
    if not now:
        ex.shutdown(wait=True)
        return
    ex.shutdown(wait=False, cancel_futures=True)
    for p in procs:  # SIGKILL: workers hold no state worth a clean exit
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=5)


def _check(workers, depth, pool) -> tuple[int, int]:
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; use one of {POOLS}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    depth = default_depth(workers) if depth is None else int(depth)
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return workers, depth


Loader = Callable[[data.Item, int, str, int | None], data.Loaded]


def prefetch(items: Iterable[data.Item], task: int, rule: str = "auto",
             max_pixels: int | None = None, workers: int | None = None, depth: int | None = None,
             pool: str = "process", loader: Loader = data.load_item) -> Iterator[data.Loaded]:
    """Decode ``items`` to the task's size ahead of the consumer, in input order.

    Args:
      items: any iterable of :class:`ppjax.runs.data.Item`; consumed lazily, at most ``depth`` ahead
        of what has been yielded.
      task, rule, max_pixels: as :func:`ppjax.runs.data.load_item`.
      workers: pool size (default :func:`default_workers`: one per usable CPU, at most 8).
      depth: items taken from ``items`` and not yet yielded, at most (default
        :func:`default_depth`: 4 per worker). Bounds memory whatever the set size.
      pool: ``"process"`` (default; see the module docstring) or ``"thread"``.
      loader: the function run per item (default :func:`ppjax.runs.data.load_item`); with processes
        it must be picklable (a module-level function).
    Yields:
      one :class:`ppjax.runs.data.Loaded` per item, in input order: ``image`` [H, W, 3] uint8 at the
      task's size, or ``error`` (a decode error, a loader exception, a crashed worker).
    """
    workers, depth = _check(workers, depth, pool)
    data.get_task(task)  # raises the usual "unknown task" error before any work
    return _prefetch(iter(items), task, rule, max_pixels, workers, depth, pool, loader)


def _prefetch(it, task, rule, max_pixels, workers, depth, pool, loader):
    ex = _make_executor(pool, workers)
    window: collections.deque = collections.deque()  # (item, future), input order
    args = (task, rule, max_pixels)

    def submit(item):
        refused = getattr(item, "error", None)  # a data.Item refused before decoding
        if refused:  # no worker needed
            f = cf.Future()
            f.set_result(data.Loaded(item, None, [], refused))
            return f
        with _sigint_deferred():
            try:
                return ex.submit(loader, item, *args)
            except BrokenProcessPool as e:  # a worker died since: retried when its turn comes
                f = cf.Future()
                f.set_exception(e)
                return f

    def fill(limit):
        while len(window) < limit:
            item = next(it, _END)
            if item is _END:
                return
            window.append((item, submit(item)))

    clean = False
    try:
        fill(depth)
        while window:
            item, fut = window.popleft()
            try:
                loaded = fut.result()
            except BrokenProcessPool:
                # a worker died; the pool is unusable and every queued file failed with it.
                # Retry this file alone in a fresh pool: if it kills that one too, it is the
                # culprit; then requeue the rest (a later culprit is found the same way).
                _stop_executor(ex, now=True)
                ex = _make_executor(pool, workers)
                loaded = _alone(ex, loader, item, args)
                if loaded is None:
                    _stop_executor(ex, now=True)
                    ex = _make_executor(pool, workers)
                    loaded = data.Loaded(item, None, [], "decoding crashed: the worker process "
                                         "died on this file (a decoder fault, or the OS killed "
                                         "it for memory)")
                window = collections.deque((i, f if _succeeded(f) else submit(i))
                                           for i, f in window)
            except Exception as e:  # the loader raised: this file's error, the run goes on
                loaded = data.Loaded(item, None, [], f"decoding failed: {type(e).__name__}: {e}")
            fill(depth - 1)  # the one being handed over still counts
            yield loaded
        clean = True
    finally:
        _stop_executor(ex, now=not clean)


def _succeeded(f: cf.Future) -> bool:
    return f.done() and not f.cancelled() and f.exception() is None


def _alone(ex, loader, item, args) -> data.Loaded | None:
    """``loader(item)`` in ``ex`` with nothing beside it; None when the worker died."""
    try:
        return ex.submit(loader, item, *args).result()
    except BrokenProcessPool:
        return None
    except Exception as e:
        return data.Loaded(item, None, [], f"decoding failed: {type(e).__name__}: {e}")


def encode_write(path: str | os.PathLike, img: np.ndarray, text: dict[str, str] | None = None,
                 level: int = imageio.PNG_LEVEL) -> str:
    """Encode ``img`` [H, W, 3] uint8 as PNG (``text`` chunks, zlib ``level``), write it
    atomically (fsync) to ``path`` and return the sha256 (hex) of the bytes written. One file's
    whole write job."""
    png = imageio.encode_png(img, text, level)
    imageio.atomic_write_bytes(path, png)
    return hashlib.sha256(png).hexdigest()


class Writer:
    """A bounded pool that encodes, hashes and atomically writes PNGs off the caller's thread.

    ``submit`` returns at once unless ``depth`` writes are pending, then blocks until one ends
    (the caller cannot outrun the disk and pile up images). Use as a context manager, or call
    :meth:`close`, which waits for every pending write.

    Args:
      workers: pool size (default :func:`default_workers`).
      depth: pending writes at most (default 4 per worker).
      pool: ``"process"`` (default; see the module docstring) or ``"thread"``. A worker process
        that dies fails the writes it held (their futures raise ``BrokenProcessPool``); the
        next ``submit`` starts a fresh pool.
    """

    def __init__(self, workers: int | None = None, depth: int | None = None,
                 pool: str = "process"):
        self.workers, self.depth = _check(workers, depth, pool)
        self.pool = pool
        self._ex = _make_executor(pool, self.workers)
        self._slots = threading.BoundedSemaphore(self.depth)
        self._lock = threading.Lock()
        self.pending = 0  # submitted, not finished
        self.max_pending = 0  # the most ever pending at once (an instrument for the bound)
        self._closed = False

    def submit(self, path: str | os.PathLike, img: np.ndarray, text: dict[str, str] | None = None,
               level: int = imageio.PNG_LEVEL) -> cf.Future:
        """Queue ``img`` [H, W, 3] uint8 for ``path`` (PNG, zlib ``level``); the future's result
        is the sha256 (hex) of the PNG written, or the exception that stopped it (bad image,
        unwritable folder, ...). The image is copied, so the caller may reuse its buffer."""
        if self._closed:
            raise RuntimeError("Writer is closed")
        imageio.check_png_level(level)
        img = np.array(img, copy=True)  # the caller's buffer may be reused at once
        self._slots.acquire()
        with self._lock:
            self.pending += 1
            self.max_pending = max(self.max_pending, self.pending)
        try:
            try:
                fut = self._ex.submit(encode_write, str(Path(path)), img, text, level)
            except BrokenProcessPool:  # a worker died earlier: its writes failed, go on
                _stop_executor(self._ex, now=True)
                self._ex = _make_executor(self.pool, self.workers)
                fut = self._ex.submit(encode_write, str(Path(path)), img, text, level)
        except BaseException:
            self._release(None)
            raise
        fut.add_done_callback(self._release)
        return fut

    def _release(self, _fut) -> None:
        with self._lock:
            self.pending -= 1
        self._slots.release()

    def close(self, cancel: bool = False) -> None:
        """Wait for every pending write (``cancel``: drop the queued ones, stop the workers)."""
        if self._closed:
            return
        self._closed = True
        _stop_executor(self._ex, now=cancel)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type, *_) -> None:
        # a KeyboardInterrupt should not wait for the queue; a normal exit writes everything
        self.close(cancel=exc_type is KeyboardInterrupt)


class RecordedWrites:
    """The PNG writes in flight (:meth:`Writer.submit`'s futures), recorded through ``prog`` in
    submission order once done: ``prog.ok(entry, sync=False)`` with the sha256 filled in, then
    one ``prog.sync()`` per drain; ``prog.error(name, err, notes)`` for a write that failed.

    A write that finds the disk full (:func:`ppjax.errors.is_disk_full`) is no file's fault: it
    gets no manifest line (the file is redone on resume), the next non-blocking drain raises it
    to stop the run, and the final blocking drain (in a ``finally``) still records every write
    that did finish; :meth:`raise_if_full` then raises it (``ppjax protect`` turns it into
    :class:`ppjax.errors.DiskFull`, exit code 2). Both ``protect`` streams use this one class."""

    def __init__(self, prog):
        self.prog = prog
        self.pending: collections.deque = collections.deque()
        self.full: list[OSError] = []

    def add(self, fut: cf.Future, entry) -> None:
        """Track ``fut`` (its result: the PNG's sha256) for ``entry`` (a dataclass with
        ``name``, ``output``, ``notes`` and ``sha256`` fields)."""
        self.pending.append((fut, entry))

    def drain(self, block: bool) -> None:
        """Record the finished writes (``block``: wait for all of them)."""
        import dataclasses

        n = 0
        while self.pending and (block or self.pending[0][0].done()):
            fut, entry = self.pending.popleft()
            try:
                entry = dataclasses.replace(entry, sha256=fut.result())
            except Exception as e:
                if is_disk_full(e):
                    self.full.append(e)
                else:  # this file failed to write; the run goes on
                    self.prog.error(entry.name, f"writing {entry.output}: {e}", entry.notes)
                continue
            self.prog.ok(entry, sync=False)
            n += 1
        if n:  # one fsync for the lines of this drain
            self.prog.sync()
        if self.full and not block:
            raise self.full[0]

    def raise_if_full(self) -> None:
        """After the final blocking drain: raise the full disk's error, if a write met it."""
        if self.full:
            raise self.full[0]


def write_zip_atomic(dst: str | os.PathLike, files: Iterable[str | os.PathLike],
                     chunk: int = 1 << 20) -> Path:
    """A deterministic zip of ``files`` (flat, sorted by name, stored, fixed timestamps, mode
    0644) written to ``dst`` atomically, streaming each file from disk in ``chunk`` pieces, so
    memory does not grow with the set (a zip of 3000 PNGs is ~350 MB). The bytes equal those of
    ``ZipFile.writestr`` of the same entries into memory: the sizes are set before each entry
    is opened, as ``writestr`` does."""
    import tempfile
    import zipfile

    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        os.fchmod(fd, 0o666 & ~imageio._umask())
        with os.fdopen(fd, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
                for p in sorted((Path(q) for q in files), key=lambda q: q.name):
                    info = zipfile.ZipInfo(p.name, date_time=(1980, 1, 1, 0, 0, 0))
                    info.external_attr = 0o644 << 16
                    info.create_system = 3
                    info.file_size = p.stat().st_size
                    with open(p, "rb") as src, z.open(info, "w") as out:
                        while block := src.read(chunk):
                            out.write(block)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return dst
