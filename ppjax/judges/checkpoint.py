"""Converted-judge storage: an orbax checkpoint plus ``metadata.json``.

Layout of one converted judge (``<weights_dir>/<name>/``)::

    metadata.json   # judge name, architecture, preprocessing, source file, sha256, standin flag
    state/          # orbax StandardCheckpointer directory with {"params": ..., "batch_stats": ...}

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place,
so a failed or interrupted conversion never leaves a half-written judge behind.

Loads are checked: ``metadata.json`` records the sha256 of every file under ``state/``
(``state_sha256``, written at conversion) and :func:`load_converted` verifies them, the
metadata itself (present, a JSON object, naming the judge asked for) and orbax's restore, and
raises :class:`BrokenCheckpoint` with the reason. A checkpoint converted before the hashes
were recorded still loads (its restore is still checked).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

METADATA = "metadata.json"
STATE = "state"
HASHES = "state_sha256"  # metadata key: {path under state/: sha256 hex}


class BrokenCheckpoint(ValueError):
    """A converted judge that cannot be used as it is: the reason, without the remedy (the
    caller, which knows the judge, names the command that rebuilds it)."""


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_hashes(state_dir: Path) -> dict[str, str]:
    """``{path relative to state_dir: sha256}`` of every file of an orbax checkpoint."""
    return {p.relative_to(state_dir).as_posix(): _sha256(p)
            for p in sorted(state_dir.rglob("*")) if p.is_file()}


def save_converted(out_dir: str | os.PathLike, variables: Any, metadata: dict) -> Path:
    """Atomically write ``variables`` (a pytree of arrays) and ``metadata`` to ``out_dir``."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        variables = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), variables)
        ckpt = ocp.StandardCheckpointer()
        ckpt.save(tmp / STATE, variables)
        ckpt.wait_until_finished()
        ckpt.close()
        metadata = {**metadata, HASHES: state_hashes(tmp / STATE)}
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2, sort_keys=True))
        if out_dir.exists():
            old = out_dir.with_name(out_dir.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_metadata(judge_dir: str | os.PathLike) -> dict:
    return json.loads((Path(judge_dir) / METADATA).read_text())


def checked_metadata(judge_dir: str | os.PathLike, name: str | None = None) -> dict:
    """``metadata.json`` of a converted judge, checked: present, a JSON object, and (with
    ``name``) made for that judge.

    Raises:
      BrokenCheckpoint: with the reason.
    """
    path = Path(judge_dir) / METADATA
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BrokenCheckpoint(f"{path} is missing") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise BrokenCheckpoint(f"{path} is unreadable ({e})") from None
    if not isinstance(meta, dict):
        raise BrokenCheckpoint(f"{path} is not a JSON object")
    if name is not None and meta.get("judge", name) != name:
        raise BrokenCheckpoint(f"{path} holds the weights of judge {meta['judge']!r}, "
                               f"not {name!r}")
    return meta


def verify_state(judge_dir: str | os.PathLike, meta: dict) -> None:
    """Check every file recorded in ``meta[HASHES]`` against its sha256 (nothing to check for
    a checkpoint converted before the hashes were recorded).

    Raises:
      BrokenCheckpoint: naming every missing or changed file.
    """
    recorded = meta.get(HASHES)
    if not recorded:
        return
    state = Path(judge_dir) / STATE
    bad = []
    for rel, want in sorted(recorded.items()):
        p = state / rel
        if not p.is_file():
            bad.append(f"{rel} is missing")
        elif _sha256(p) != want:
            bad.append(f"{rel} has changed (sha256 differs from the one recorded at conversion)")
    if bad:
        raise BrokenCheckpoint(f"{state}: " + "; ".join(bad))


def load_converted(judge_dir: str | os.PathLike, abstract_variables: Any,
                   name: str | None = None) -> tuple[Any, dict]:
    """Restore variables shaped like ``abstract_variables`` (e.g. from ``jax.eval_shape(init)``),
    after checking the metadata (:func:`checked_metadata`) and the files' hashes
    (:func:`verify_state`).

    Raises:
      BrokenCheckpoint: the checkpoint cannot be used, with the reason (orbax's own error
        when only the restore finds it).
    """
    judge_dir = Path(judge_dir).resolve()
    meta = checked_metadata(judge_dir, name)
    verify_state(judge_dir, meta)
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_variables
    )
    try:
        ckpt = ocp.StandardCheckpointer()
        try:
            variables = ckpt.restore(judge_dir / STATE, target)
        finally:
            ckpt.close()
    except Exception as e:  # orbax reports damage as many kinds of error
        _quiet_stderr(0.5)
        raise BrokenCheckpoint(f"orbax cannot restore {judge_dir / STATE}: "
                               f"{type(e).__name__}: {e}") from None
    return variables, meta


def _quiet_stderr(seconds: float) -> None:
    """Silence file descriptor 2 for ``seconds``: after a failed restore, orbax's reads still
    in flight each print a traceback ("Event loop is closed") from background threads; the
    checkpoint is known broken by then, and the error that says so follows."""
    import sys
    import time

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            time.sleep(seconds)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
