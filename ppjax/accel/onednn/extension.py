"""The oneDNN extension: compile ``ppjax/accel/csrc/onednn_conv.cc`` and load it into XLA.

The C++ source is compiled on first use with the system C++ compiler against the
``onednn-cpu-gomp`` wheel (extra ``ppjax[cpu]``), cached under ``$XDG_CACHE_HOME/ppjax/ext``
(one file per source/jax/oneDNN combination), loaded once per process, and its FFI targets
registered with XLA. When the compiler or the wheel is missing, :func:`available` is false and
:func:`why_unavailable` says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax

from ppjax.config import _cache_root

TARGET = "ppjax_onednn_conv"
POOL_FWD, POOL_BWD = "ppjax_onednn_maxpool_fwd", "ppjax_onednn_maxpool_bwd"
_SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "onednn_conv.cc"


class OneDnnUnavailable(RuntimeError):
    """The oneDNN path cannot be built or loaded here (the message says why and what to install)."""


def _dist_file(dist: str, suffix: str) -> Path | None:
    try:
        files = importlib.metadata.files(dist) or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix().endswith(suffix):
            return Path(f.locate()).resolve()
    return None


def wheel_paths() -> tuple[Path, Path]:
    """``(include dir, directory of libdnnl.so.3)`` of the installed oneDNN wheels
    (``onednn-devel-cpu-gomp``, ``onednn-cpu-gomp``); :class:`OneDnnUnavailable` saying what to
    install when either is missing."""
    header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    lib = _dist_file("onednn-cpu-gomp", "/libdnnl.so.3")
    if header is None or lib is None:
        raise OneDnnUnavailable(
            "the oneDNN wheels are not installed: pip install 'ppjax[cpu]' (or "
            "pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0)")
    return header.parents[2], lib.parent


def _compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which(
        "clang++")
    if not cxx:
        raise OneDnnUnavailable("no C++ compiler found (set $CXX or install g++)")
    return cxx


def build(verbose: bool = False) -> Path:
    """Compile the extension (once per source/jax/oneDNN combination) and return its path."""
    include, libdir = wheel_paths()
    jax_include = jax.ffi.include_dir()
    digest = hashlib.sha256()
    digest.update(_SOURCE.read_bytes())
    for part in (jax.__version__, str(include), str(libdir), sys.platform):
        digest.update(part.encode())
    out = _cache_root() / "ext" / f"onednn_conv-{digest.hexdigest()[:16]}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
           f"-I{jax_include}", f"-I{include}", str(_SOURCE), f"-L{libdir}", "-l:libdnnl.so.3",
           f"-Wl,-rpath,{libdir}"]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        tmp_out = Path(tmp) / out.name
        proc = subprocess.run([*cmd, "-o", str(tmp_out)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise OneDnnUnavailable(
                f"compiling {_SOURCE.name} failed ({' '.join(cmd[:1])}):\n{proc.stderr[-4000:]}")
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        os.replace(tmp_out, out)  # atomic: concurrent builders race harmlessly
    return out


@functools.cache
def load() -> ctypes.CDLL:
    """The extension, built if needed and loaded once per process, its FFI targets registered
    with XLA (:data:`TARGET`, :data:`POOL_FWD`, :data:`POOL_BWD`)."""
    lib = ctypes.CDLL(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.PpjaxOnednnConv), platform="cpu")
    jax.ffi.register_ffi_target(POOL_FWD, jax.ffi.pycapsule(lib.PpjaxOnednnMaxPoolFwd),
                                platform="cpu")
    jax.ffi.register_ffi_target(POOL_BWD, jax.ffi.pycapsule(lib.PpjaxOnednnMaxPoolBwd),
                                platform="cpu")
    lib.ppjax_onednn_maxpool_ws_bytes.restype = ctypes.c_int64
    return lib


@functools.cache
def why_unavailable() -> str | None:
    """``None`` when the oneDNN path works here, else the reason (one line or a compiler log)."""
    try:
        load()
    except (OneDnnUnavailable, OSError) as e:
        return str(e)
    return None


def available() -> bool:
    """Whether the oneDNN ops (:mod:`ppjax.accel.onednn.ops`) can run here (builds the extension
    on the first call)."""
    return why_unavailable() is None


def out_hw(h, w, kh, kw, strides, padding) -> tuple[int, int]:
    """Output height and width of a ``kh x kw`` window (convolution or pooling) over an
    ``h x w`` input with explicit ``((top, bottom), (left, right))`` padding: the geometry
    every call into the extension passes."""
    return ((h + padding[0][0] + padding[0][1] - kh) // strides[0] + 1,
            (w + padding[1][0] + padding[1][1] - kw) // strides[1] + 1)
