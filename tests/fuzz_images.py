"""Seeded mutations of real photos for the decoder-path fuzz tests (``tests/test_faults.py``).

:func:`fuzz_files` encodes the shared photos (shrunk, so that decoding stays cheap) as JPEG, PNG,
WebP and GIF, then damages each copy with one of :data:`MUTATIONS`: byte flips, truncation,
inserted or deleted bytes, a corrupted header, a corrupted chunk or segment length, or absurd
dimensions. The same seed gives the same files.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"))
MUTATIONS = ("flip", "truncate", "insert", "delete", "header", "length", "dims")


def encoded_photos(photos: list[Path], size=(128, 96)) -> dict[str, list[bytes]]:
    """``{format: [bytes per photo]}``: each photo shrunk to ``size`` (W, H) and encoded."""
    out: dict[str, list[bytes]] = {f: [] for f, _ in FORMATS}
    for p in photos:
        im = Image.open(p).convert("RGB").resize(size, Image.BICUBIC)
        for fmt, _ in FORMATS:
            buf = io.BytesIO()
            im.save(buf, fmt, **({"quality": 85} if fmt in ("JPEG", "WEBP") else {}))
            out[fmt].append(buf.getvalue())
    return out


def _length_offsets(b: bytes, fmt: str) -> list[int]:
    """Offsets of the 4-byte (PNG chunk, RIFF) or 2-byte (JPEG segment, GIF block) length
    fields of ``b``."""
    if fmt == "PNG":
        offs, i = [], 8
        while i + 8 <= len(b):
            offs.append(i)
            i += 12 + struct.unpack(">I", b[i:i + 4])[0]
        return offs
    if fmt == "JPEG":
        return [i + 2 for i in range(len(b) - 4) if b[i] == 0xFF and 0xC0 <= b[i + 1] <= 0xFE
                and b[i + 1] not in (0xD8, 0xD9) and not 0xD0 <= b[i + 1] <= 0xD7][:12]
    if fmt == "WEBP":
        return [4, 16]
    return [6, 8, 10]  # GIF: logical screen width, height, flags


def mutate(b: bytes, fmt: str, kind: str, rng: np.random.Generator) -> bytes:
    """``b`` damaged by one mutation ``kind`` (one of :data:`MUTATIONS`)."""
    a = bytearray(b)
    n = len(a)
    if kind == "flip":
        for i in rng.integers(0, n, int(rng.integers(1, 24))):
            a[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        a = a[: int(rng.integers(1, n))]
    elif kind == "insert":
        i = int(rng.integers(0, n))
        a[i:i] = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        i = int(rng.integers(0, n - 1))
        del a[i: i + int(rng.integers(1, 64))]
    elif kind == "header":
        for i in rng.integers(0, min(n, 32), int(rng.integers(1, 6))):
            a[i] = int(rng.integers(0, 256))
    elif kind == "length":
        offs = _length_offsets(b, fmt)
        i = offs[int(rng.integers(0, len(offs)))]
        width = 2 if fmt in ("JPEG", "GIF") else 4
        v = int(rng.choice([0, 1, 0xFFFF, int(rng.integers(0, 1 << (8 * width)))]))
        a[i: i + width] = (v % (1 << (8 * width))).to_bytes(width, "big" if fmt != "GIF" and
                                                              fmt != "WEBP" else "little")
    elif kind == "dims":
        big = int(rng.choice([0, 1, 30000, 65535]))
        if fmt == "PNG":
            a[16:24] = struct.pack(">II", big, int(rng.choice([1, 40000, big])))
        elif fmt == "GIF":
            a[6:10] = struct.pack("<HH", big, big)
        else:  # JPEG SOF / WebP: change what may be the size fields
            offs = _length_offsets(b, fmt)
            i = offs[-1] + 3 if fmt == "JPEG" and offs else 26
            a[i: i + 4] = struct.pack(">HH", big, big)
    else:
        raise ValueError(kind)
    return bytes(a)


def fuzz_files(photos: list[Path], folder: Path, n: int, seed: int) -> dict[str, str]:
    """Write ``n`` damaged copies of ``photos`` into ``folder`` (formats and mutations taken in
    turn, the details drawn from ``seed``). Returns ``{file name: mutation}``."""
    rng = np.random.default_rng(seed)
    enc = encoded_photos(photos)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        fmt, ext = FORMATS[i % len(FORMATS)]
        kind = MUTATIONS[(i // len(FORMATS)) % len(MUTATIONS)]
        src = enc[fmt][int(rng.integers(0, len(enc[fmt])))]
        name = f"fz{i:04d}_{kind}.{ext}"
        (folder / name).write_bytes(mutate(src, fmt, kind, rng))
        out[name] = kind
    return out
