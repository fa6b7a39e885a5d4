"""Where ppjax keeps converted weights and task data.

Both directories are configurable:
  * weights: ``$PPJAX_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/ppjax/weights`` (``~/.cache/ppjax/weights``);
  * data:    ``$PPJAX_DATA_DIR``, else ``$XDG_CACHE_HOME/ppjax/data``.
Every CLI command also takes ``--weights-dir`` / ``--data-dir``, which win over the environment.
"""

from __future__ import annotations

import os
from pathlib import Path


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ppjax"


def weights_dir(override: str | os.PathLike | None = None) -> Path:
    """Directory holding converted judges, one sub-directory per judge name."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("PPJAX_WEIGHTS_DIR")
    return Path(env).expanduser().resolve() if env else _cache_root() / "weights"


def data_dir(override: str | os.PathLike | None = None) -> Path:
    """Directory holding label files and lists (``places365/``, ``pixelprivacy/``)."""
    if override:
        return Path(override).expanduser().resolve()
    env = os.environ.get("PPJAX_DATA_DIR")
    return Path(env).expanduser().resolve() if env else _cache_root() / "data"


def downloads_dir(override: str | os.PathLike | None = None) -> Path:
    """Where original (unconverted) checkpoint files are downloaded or placed by hand."""
    return weights_dir(override) / "downloads"


def beside_checkout(*parts: str) -> Path:
    """A path beside a source checkout of ppjax, e.g. ``beside_checkout("shared", "data")`` for
    ``../shared/data`` (the project's test photos and lists, never committed). It may not exist (an
    installed wheel, a fresh machine): callers check."""
    return Path(__file__).resolve().parents[2].joinpath(*parts)
