"""Converted-judge storage: an orbax checkpoint plus ``metadata.json``.

Layout of one converted judge (``<weights_dir>/<name>/``)::

    metadata.json   # judge name, architecture, preprocessing, source file, sha256, standin flag
    state/          # orbax StandardCheckpointer directory with {"params": ..., "batch_stats": ...}

Writes are atomic: everything goes to a temporary sibling directory that is renamed into place,
so a failed or interrupted conversion never leaves a half-written judge behind.
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


def load_converted(judge_dir: str | os.PathLike, abstract_variables: Any) -> tuple[Any, dict]:
    """Restore variables shaped like ``abstract_variables`` (e.g. from ``jax.eval_shape(init)``)."""
    judge_dir = Path(judge_dir).resolve()
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract_variables
    )
    ckpt = ocp.StandardCheckpointer()
    try:
        variables = ckpt.restore(judge_dir / STATE, target)
    finally:
        ckpt.close()
    return variables, read_metadata(judge_dir)
