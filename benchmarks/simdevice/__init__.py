"""The simulated accelerator's device time (issue 12, efficiency (b)): an XLA FFI custom call
(``hold.cc``) that holds an XLA worker thread for ``seconds_per_image`` x batch, so the host is
free during it, as with a real accelerator.

Built on first use with the system C++ compiler against the headers jaxlib ships
(``jax.ffi.include_dir()``), into ``benchmarks/simdevice/build/`` (ignored by git), keyed by the
source and the jaxlib version. :func:`available` says why not when there is no compiler.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "hold.cc"
TARGET = "ppjax_sim_hold"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") \
        or shutil.which("clang++")


def available() -> tuple[bool, str]:
    """(True, "") when the hold can be built here, else (False, why)."""
    if _compiler() is None:
        return False, "no C++ compiler (g++, c++ or clang++; or set CXX) to build hold.cc"
    return True, ""


@functools.cache
def library() -> ctypes.CDLL:
    """Build (once per source and jaxlib version) and load the hold; register it with XLA."""
    import jax
    import jaxlib

    cxx = _compiler()
    if cxx is None:
        raise RuntimeError(available()[1])
    key = hashlib.sha256(SOURCE.read_bytes() + jaxlib.__version__.encode()).hexdigest()[:16]
    lib = HERE / "build" / f"libppjax_sim_hold-{key}.so"
    if not lib.exists():
        lib.parent.mkdir(exist_ok=True)
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [cxx, "-O2", "-shared", "-fPIC", "-std=c++17", "-w",
               f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building {SOURCE.name} failed:\n{proc.stderr[-2000:]}")
        os.replace(tmp, lib)
    cdll = ctypes.CDLL(str(lib))
    cdll.ppjax_sim_set_seconds_per_image.argtypes = [ctypes.c_double]
    cdll.ppjax_sim_seconds_per_image.restype = ctypes.c_double
    cdll.ppjax_sim_images.restype = ctypes.c_int64
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(cdll.ppjax_sim_hold), platform="cpu")
    return cdll


def set_seconds_per_image(seconds: float) -> None:
    library().ppjax_sim_set_seconds_per_image(float(seconds))


def images() -> int:
    """Images that went through the hold since the last :func:`reset_images`."""
    return int(library().ppjax_sim_images())


def reset_images() -> None:
    library().ppjax_sim_reset_images()


def hold(x):
    """x: [B] float32 (one value per image) -> zeros [B], after the emulated device time."""
    import jax
    import jax.numpy as jnp

    library()
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(x.shape, jnp.float32),
                            vmap_method="broadcast_all")(x.astype(jnp.float32))
