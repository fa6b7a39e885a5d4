"""What oneDNN runs natively on this CPU: the CPU's ISA flags, oneDNN's effective instruction
set, and which compute dtypes have native convolution kernels (probed once per process)."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os

import jax.numpy as jnp

from ppjax.accel.onednn.extension import OneDnnUnavailable, load, out_hw, wheel_paths, why_unavailable

# dnnl_cpu_isa_t values (oneapi/dnnl/dnnl_types.h) -> oneDNN's names.
_ISA_NAMES = {0x0: "default", 0x1: "sse41", 0x3: "avx", 0x7: "avx2", 0xF: "avx2_vnni",
              0x1F: "avx2_vnni_2", 0x27: "avx512_core", 0x67: "avx512_core_vnni",
              0xE7: "avx512_core_bf16", 0x1EF: "avx512_core_fp16", 0xFEF: "avx512_core_amx",
              0x1FEF: "avx512_core_amx_fp16"}
# The /proc/cpuinfo flags that decide which convolution kernels exist (reported by benchmarks).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8")
# A small convolution that every kernel family handles (3x3, 64 -> 64 channels).
_PROBE = ((2, 14, 14, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)))


def cpu_info() -> dict:
    """The CPU model and its ISA flags (of :data:`ISA_FLAGS`) from ``/proc/cpuinfo`` (Linux;
    elsewhere the model is ``platform.processor()`` and the flags are empty)."""
    import platform

    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if line.strip() == "":  # the first processor says it all
                    break
    except OSError:
        pass
    return {"model": model, "machine": platform.machine(),
            "flags": [f for f in ISA_FLAGS if f in flags]}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What oneDNN can run natively on this CPU, probed once per process (:func:`capabilities`).

    available: the extension builds and loads (``reason`` says why not).
    isa: oneDNN's effective instruction set (``avx2``, ``avx512_core_bf16``,
      ``avx512_core_amx``, ...); it honours ``ONEDNN_MAX_CPU_ISA``, so a larger CPU can imitate a
      smaller one.
    native_dtypes: compute dtypes with native convolution kernels, forward and input gradient:
      ``("float32",)``, or ``("float32", "bfloat16")`` with AVX512_BF16 or AMX.
    bf16_missing: when bfloat16 is not native, one line naming the missing CPU feature.
    kernels: oneDNN's kernel names for the probe convolution, per dtype and direction.
    cpu: :func:`cpu_info`.
    """

    available: bool
    reason: str | None
    isa: str | None
    native_dtypes: tuple[str, ...]
    bf16_missing: str | None
    kernels: dict
    cpu: dict

    @property
    def cpu_class(self) -> str:
        """"amx", "avx512_bf16", "avx512", "avx2" or "other" (by the oneDNN ISA); "none"
        when oneDNN is unavailable."""
        if not self.available:
            return "none"
        isa = self.isa or ""
        if "amx" in isa:
            return "amx"
        if "bf16" in isa or "fp16" in isa:
            return "avx512_bf16"
        if isa.startswith("avx512"):
            return "avx512"
        return "avx2" if isa.startswith("avx2") else "other"

    def native(self, dtype) -> bool:
        return self.available and jnp.dtype(dtype).name in self.native_dtypes


def require_native(dtype) -> None:
    """Raise :class:`OneDnnUnavailable` naming the missing CPU feature unless oneDNN runs
    ``dtype`` convolutions natively here."""
    caps = capabilities()
    if not caps.available:
        raise OneDnnUnavailable(caps.reason)
    if not caps.native(dtype):
        raise OneDnnUnavailable(f"oneDNN cannot run {jnp.dtype(dtype).name} convolutions here: "
                                f"{caps.bf16_missing}")


def _effective_isa() -> str:
    _, libdir = wheel_paths()
    lib = ctypes.CDLL(str(libdir / "libdnnl.so.3"))
    lib.dnnl_get_effective_cpu_isa.restype = ctypes.c_int
    code = int(lib.dnnl_get_effective_cpu_isa())
    return _ISA_NAMES.get(code, hex(code))


@functools.cache
def capabilities() -> Capabilities:
    """Probe (once per process) which dtypes oneDNN runs natively here. bfloat16 counts as
    native only when oneDNN has a kernel for both the forward convolution and its
    input gradient and its ISA has AVX512_BF16 or AMX; an AVX2-only CPU has no bf16 convolution
    kernel at all, and plain AVX-512 only emulating ones."""
    cpu = cpu_info()
    reason = why_unavailable()
    if reason is not None:
        return Capabilities(False, reason, None, (), "oneDNN is unavailable: " + reason, {}, cpu)
    isa = _effective_isa()
    x, w, strides, padding = _PROBE
    kernels, native = {}, ["float32"]
    for dt in (jnp.float32, jnp.bfloat16):
        for bwd in (False, True):
            key = f"{jnp.dtype(dt).name}_{'bwd_data' if bwd else 'fwd'}"
            try:
                kernels[key] = kernel_name(x, w, strides, padding, dtype=dt, backward=bwd)
            except OneDnnUnavailable as e:
                kernels[key] = f"none ({e})"
    bf16 = [kernels["bfloat16_fwd"], kernels["bfloat16_bwd_data"]]
    # AVX512_BF16 (or AMX) is what makes bf16 native: plain AVX-512 has emulating kernels
    # ("jit_bf16:avx512_core"), AVX2 none at all.
    bf16_isa = any(t in isa for t in ("bf16", "fp16", "amx"))
    if bf16_isa and all(not k.startswith(("none", "ref")) for k in bf16):
        native.append("bfloat16")
        missing = None
    else:
        flags = ", ".join(cpu["flags"]) or "none reported"
        missing = (f"this CPU ({cpu['model']}; oneDNN ISA {isa}; flags {flags}) has no native "
                   "bfloat16 convolution kernels: they need AVX512_BF16 or AMX")
        if os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"):
            cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
            missing += f" (oneDNN is capped by ONEDNN_MAX_CPU_ISA={cap})"
    return Capabilities(True, None, isa, tuple(native), missing, kernels, cpu)


def kernel_name(x_shape, w_shape, strides=(1, 1), padding=((0, 0), (0, 0)), groups: int = 1,
                dtype=jnp.float32, backward: bool = False) -> str:
    """oneDNN's name for the kernel it picks for one convolution (e.g. ``brg_conv_fwd:avx512_core_amx``)."""
    lib = load()
    n, h, w, c = x_shape
    kh, kw, _, o = w_shape
    oh, ow = out_hw(h, w, kh, kw, strides, padding)
    geo = (ctypes.c_int64 * 16)(n, h, w, c, oh, ow, o, kh, kw, groups, strides[0], strides[1],
                                padding[0][0], padding[0][1], padding[1][0], padding[1][1])
    buf = ctypes.create_string_buffer(256)
    rc = lib.ppjax_onednn_impl(ctypes.c_int64(int(backward)), ctypes.c_int(
        int(jnp.dtype(dtype) == jnp.bfloat16)), geo, buf, 256)
    name = buf.value.decode()
    if rc:
        raise OneDnnUnavailable(f"oneDNN has no kernel for this convolution: {name}")
    return name
