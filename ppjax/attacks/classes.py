"""Class sets of the MediaEval tasks: the MEPP sensitive categories and the Places365
indoor/outdoor file, as class indices or a boolean mask (objective ``group``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_sensitive_categories(path: str | Path) -> tuple[int, ...]:
    """Places365 indices of ``MEPP18senscats.txt`` (lines ``/b/bedroom 52``; the file starts
    with a UTF-8 byte-order mark and has trailing spaces)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not parts[1].isdigit():
            raise ValueError(f"{path}:{n}: expected '<category> <index>', got {line!r}")
        out.append(int(parts[1]))
    return tuple(sorted(set(out)))


def read_indoor_classes(path: str | Path) -> tuple[int, ...]:
    """Indices of the indoor classes of ``IO_places365.txt`` (line i = class i, ``1`` = indoor,
    ``2`` = outdoor)."""
    out = []
    lines = [ln for ln in Path(path).read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("1", "2"):
            raise ValueError(f"{path}:{i + 1}: expected '<category> 1|2', got {line!r}")
        if parts[1] == "1":
            out.append(i)
    return tuple(out)


def class_mask(indices, num_classes: int) -> np.ndarray:
    """Boolean mask [num_classes] with True at ``indices``."""
    idx = np.asarray(list(indices), np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_classes):
        raise ValueError(f"class indices must lie in [0, {num_classes}); got {idx.min()}..{idx.max()}")
    m = np.zeros(num_classes, bool)
    m[idx] = True
    return m
