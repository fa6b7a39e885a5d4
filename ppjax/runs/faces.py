"""The task ``faces``: size buckets, and the task's attack (docs/faces.md).

Photos keep their own size (no squashing to a fixed size). The streaming engine runs one shape
per compiled program, so photos are grouped in **size buckets**: each side is rounded up to a
multiple of :data:`BUCKET_STEP` (128 px) up to 1024 px, and of :data:`BUCKET_STEP_LARGE`
(256 px) above; the photo is edge-padded (its border pixels repeated: no new edge, nothing that
looks like a face) to its bucket's canvas, attacked there, and the result cropped back. So a
512x384 photo runs on a 512x384 canvas, a 500x333 one too, and a 1500x1000 on 1536x1024: one
compilation per bucket seen, never one per photo. Photos over
:attr:`ppjax.runs.data.TaskSpec.max_side` (2048 px) on the long side are first downscaled
(:func:`ppjax.image.io.cap_long_side`), as an upload would, and their manifest line says so.

The slots of a bucket's stream are bounded by pixels (:func:`bucket_slots`), so a set of large
photos does not hold eight 2048-px pyramids in memory at once.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator

import numpy as np

BUCKET_STEP = 128
BUCKET_STEP_LARGE = 256
LARGE_SIDE = 1024
#: Pixels of all slots of one bucket's stream together (8 slots of 512x512).
SLOT_PIXELS = 8 * 512 * 512


def bucket_side(n: int) -> int:
    """A side of ``n`` px rounded up to its bucket (see the module docstring)."""
    if n < 1:
        raise ValueError(f"image side must be >= 1, got {n}")
    step = BUCKET_STEP if n <= LARGE_SIDE else BUCKET_STEP_LARGE
    return step * math.ceil(n / step)


def bucket_hw(h: int, w: int) -> tuple[int, int]:
    """The canvas (height, width) of a photo of ``h`` x ``w`` px."""
    return bucket_side(h), bucket_side(w)


def square_canvas(h: int, w: int, step: int = 256) -> tuple[int, int]:
    """A coarser rule for sets of many sizes (``benchmarks.faces``): a square canvas, the long
    side rounded up to a multiple of ``step``. Fewer compilations, more padded pixels."""
    s = step * math.ceil(max(h, w) / step)
    return s, s


def bucket_slots(hw: tuple[int, int], slots: int, photos: int | None = None) -> int:
    """Slots for a bucket's stream: at most ``slots``, at most :data:`SLOT_PIXELS` in all, and
    at most ``photos`` (the photos expected in that bucket, when known: an empty slot computes
    as much as a full one), never fewer than 2 (:data:`ppjax.attacks.stream.MIN_SLOTS`)."""
    n = min(int(slots), SLOT_PIXELS // (hw[0] * hw[1]))
    if photos is not None:
        n = min(n, int(photos))
    return max(2, n)


def release_programs() -> None:
    """Drop every compiled program this process holds (``jax.clear_caches``), between two
    buckets: a bucket's attack programs are never used again in the run, and each compiled
    program keeps memory mappings of its own, so a run over photos of many sizes otherwise ends
    in LLVM's "Cannot allocate memory" at the kernel's map limit (``vm.max_map_count``). With the
    persistent compilation cache (``ppjax protect``), a program needed again loads from disk."""
    import jax

    from ppjax.faces import cascade

    cascade.release()
    jax.clear_caches()


def pad_to(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``img`` [h, w, 3] edge-padded at the bottom and right to ``hw`` (>= its size)."""
    h, w = img.shape[:2]
    if (h, w) == tuple(hw):
        return img
    if h > hw[0] or w > hw[1]:
        raise ValueError(f"image {w}x{h} does not fit the canvas {hw[1]}x{hw[0]}")
    return np.pad(img, ((0, hw[0] - h), (0, hw[1] - w), (0, 0)), mode="edge")


def crop_to(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The top-left ``hw`` of ``img`` (undoes :func:`pad_to`)."""
    return img[:hw[0], :hw[1]]


def predicted_hw(path, max_side: int) -> tuple[int, int] | None:
    """(height, width) a photo will have once decoded and capped at ``max_side``, from its
    header alone (EXIF rotation included); None when the header is unreadable (the decoder then
    reports the error)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
    except Exception:  # any unreadable header: the decoder reports it, per file
        return None
    s = min(1.0, max_side / max(h, w))
    return (max(1, round(h * s)), max(1, round(w * s))) if s < 1 else (h, w)


def by_bucket(items, max_side: int) -> tuple[list, dict]:
    """``items`` (:class:`ppjax.runs.data.Item`) ordered by their predicted bucket (unreadable
    headers last), so each bucket's photos stream together; stable within a bucket. Also
    returns the number of photos predicted per bucket (``{(h, w): n}``)."""
    items, keys = list(items), []
    for it in items:  # one header read per photo
        hw = predicted_hw(it.path, max_side)
        keys.append((1, (0, 0)) if hw is None else (0, bucket_hw(*hw)))
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return [items[i] for i in order], dict(Counter(b for known, b in keys if known == 0))


def runs_of_bucket(loaded: Iterator, hw_of) -> Iterator[tuple[tuple[int, int], Iterator]]:
    """Split a stream into consecutive runs of one bucket: yields ``(bucket, sub-iterator)``;
    each sub-iterator must be exhausted before the next is used (as ``itertools.groupby``,
    but lazy, so a bucket's stream starts before the next bucket's photos are decoded).
    ``hw_of(x)`` is the bucket of element ``x``."""
    it = iter(loaded)
    head = [next(it, None)]
    while head[0] is not None:
        hw = hw_of(head[0])

        def run(hw=hw):
            while head[0] is not None and hw_of(head[0]) == hw:
                x = head[0]
                head[0] = next(it, None)
                yield x

        yield hw, run()
