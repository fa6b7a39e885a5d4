"""Throughput of attack methods on the device JAX sees (``ppjax bench``), and the measurement
helpers that ``benchmarks.methods_speed`` shares (one owner: this module).

What is measured, per attack:

* ``img_it_per_s``: steady-state images x iterations per second: a compiled, warm call of
  ``ppjax.attack`` with ``steps`` iterations and early stop off, timed in interleaved rounds
  with the other engines (``ppjax, torch, ppjax, torch, ...``: a busy machine slows all alike);
  the median over rounds.
* ``compile_s``: the first call's wall time minus a warm call's (tracing + XLA compilation).
* ``peak_mem_mib``: on CPU the process's peak RSS over the attack's calls (``VmHWM`` after
  resetting it, so it includes whatever else the process holds); on accelerators the device's
  ``peak_bytes_in_use``.
* ``flops_per_img_it`` / ``peak_fraction``: the FLOPs of one PGD iteration (the judge's forward
  pass and input gradient) from XLA's cost analysis of the compiled program, over the batch;
  achieved FLOP/s over the device's peak. On CPU the peak is measured with a large GEMM
  (:func:`gemm_peak`: torch's matmul, which calls oneDNN/MKL, and XLA's dot; the faster);
  on accelerators it comes from :data:`KNOWN_PEAKS`.

Everything goes through public APIs (``ppjax.attack``, ``ppjax.load_judge``), so it measures
what a user's call costs. The torch side is optional (see :func:`torch_originals`).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import resource
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

#: Dense peak FLOP/s of accelerators by ``device_kind`` substring (vendor data sheets, dense, no
#: sparsity); float32 is the plain (non-tensor-core) rate.
KNOWN_PEAKS: dict[str, dict[str, float]] = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},  # SXM; the PCIe card is ~25% lower
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30.3e12},
    "A10": {"bfloat16": 125e12, "float32": 31.2e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12 / 4},
}

#: The attacks ``ppjax bench`` runs by default.
DEFAULT_ATTACKS = ("pgd", "cw_l2", "ace")


class Engine(NamedTuple):
    """One timed configuration: ``run()`` does one call of ``items`` image-iterations (blocking);
    ``first_s`` is the wall time of its first call (with compilation)."""

    name: str
    side: str  # "ppjax" or "torch"
    run: Callable[[], object]
    items: int
    first_s: float
    peak_mem_mib: float | None = None


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (``VmHWM``; Linux >= 4.0). False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` (the current address space's; ``ru_maxrss``
    carries a parent's peak across fork + exec)."""
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def reset_peak_memory() -> None:
    """Start a new peak-memory window (CPU: RSS high-water mark; accelerators: nothing to reset,
    ``peak_bytes_in_use`` is the process's)."""
    reset_peak_rss()


def peak_memory_mib() -> float | None:
    """Peak memory of the window: the device's ``peak_bytes_in_use`` on an accelerator, else the
    process's peak RSS."""
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        stats = dev.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        return None if peak is None else peak / 2**20
    return peak_rss_mib()


# ----------------------------------------------------------------------------- peak FLOP/s


def _jax_gemm(dtype: str, n: int, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(k2, (n, n), jnp.float32).astype(dtype)
    dot = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    return 2 * n**3 / best_of(lambda: dot(a, b), repeats)


def _torch_gemm(dtype: str, n: int, repeats: int) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    dt = {"bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    return 2 * n**3 / best_of(lambda: torch.matmul(a, b), repeats)


def gemm_peak(dtype: str = "bfloat16", n: int = 4096, repeats: int = 3) -> dict:
    """The attainable FLOP/s of this CPU: the best of ``repeats`` n x n x n GEMMs through torch's
    matmul (oneDNN / MKL on CPU) and XLA's dot. Returns ``{"flops_per_s", "via", "n",
    "torch", "xla"}`` (per-library FLOP/s; torch None when it is not installed)."""
    via = {"torch": _torch_gemm(dtype, n, repeats), "xla": _jax_gemm(dtype, n, repeats)}
    best = max((k for k in via if via[k]), key=lambda k: via[k])
    return {"flops_per_s": via[best], "via": best, "n": n, "dtype": dtype, **via}


def device_peak(dtype: str = "bfloat16", n: int = 4096) -> dict:
    """The device's peak FLOP/s in ``dtype``: measured (:func:`gemm_peak`) on CPU, from
    :data:`KNOWN_PEAKS` on an accelerator (``flops_per_s`` None for an unknown one)."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return {**gemm_peak(dtype, n), "source": f"measured {n}^3 GEMM"}
    kind = getattr(dev, "device_kind", str(dev))
    for key, peaks in KNOWN_PEAKS.items():
        if key.lower() in kind.lower():
            return {"flops_per_s": peaks.get(dtype), "via": "table", "dtype": dtype,
                    "source": f"data sheet ({key})"}
    return {"flops_per_s": None, "via": "table", "dtype": dtype,
            "source": f"unknown device {kind!r}: add it to ppjax.bench.KNOWN_PEAKS"}


def _iteration_loss(x, judge):
    """A PGD iteration's loss: cross-entropy on class 0 for classifiers, the score otherwise."""
    import jax
    import jax.numpy as jnp

    out = judge(x).astype(jnp.float32)
    if out.ndim == 2 and out.shape[-1] > 1:
        return -jnp.sum(jax.nn.log_softmax(out)[:, 0])
    return jnp.sum(out)


def iteration_flops(judge, batch: int) -> float:
    """FLOPs of one PGD iteration per image: XLA's cost analysis of the compiled forward pass
    and input gradient of the judge (float32, XLA path: custom calls such as oneDNN's have no
    cost model) on a batch of ``batch``, divided by ``batch``."""
    import jax
    import jax.numpy as jnp

    h, w = judge.spec.input_hw
    x = jnp.zeros((batch, h, w, 3), jnp.float32)
    # the judge is an argument (a pytree), not a closure: its weights stay program inputs
    # instead of being embedded as constants (slow to compile, held in memory)
    cost = jax.jit(jax.grad(_iteration_loss)).lower(x, judge).compile().cost_analysis()
    if isinstance(cost, list | tuple):  # older jax: one dict per program
        cost = cost[0]
    return float(cost["flops"]) / batch


# ----------------------------------------------------------------------------- timing


def _ffi_calls(jaxpr) -> list:
    """Every ``ffi_call`` equation of ``jaxpr``, inner jaxprs (jit, custom_vjp, scan) included."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "ffi_call":
            out.append(eqn)
        for v in eqn.params.values():
            for sub in v if isinstance(v, list | tuple) else (v,):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    out += _ffi_calls(inner if hasattr(inner, "eqns") else inner.jaxpr)
    return out


def onednn_only(judge, batch: int, dtype: str, repeats: int = 5) -> dict:
    """The oneDNN primitives of one PGD iteration (the forward and input gradient of
    :func:`iteration_flops`, through :func:`ppjax.accel.onednn.judge.accelerate` in ``dtype``),
    each timed alone on random inputs of its shapes: the best of ``repeats`` warm calls, summed
    over the iteration's calls. Returns ``{"calls", "distinct", "seconds_per_img_it",
    "conv_gflop_per_img_it"}`` (convolution FLOPs from the shapes, padding taps included).
    Everything else an iteration does (elementwise work, the loss, the step, host work) is
    left out, so ``flops / seconds_per_img_it`` is the most FLOP/s the iteration could reach
    with these kernels (raises ``OneDnnUnavailable`` where the extension cannot run)."""
    import jax
    import jax.numpy as jnp

    from ppjax.accel.onednn.judge import accelerate

    fast = accelerate(judge, dtype=jnp.dtype(dtype), check=False)
    h, w = judge.spec.input_hw
    x = jnp.zeros((batch, h, w, 3), jnp.float32)
    calls = _ffi_calls(jax.make_jaxpr(jax.grad(_iteration_loss))(x, fast).jaxpr)
    groups: dict[tuple, list] = {}
    for eqn in calls:  # the same primitive on the same shapes: timed once
        key = (eqn.params["target_name"],
               tuple((tuple(v.aval.shape), str(v.aval.dtype)) for v in eqn.invars),
               tuple(tuple(v.aval.shape) for v in eqn.outvars), repr(eqn.params["attributes"]))
        groups.setdefault(key, []).append(eqn)
    rng = np.random.default_rng(0)
    seconds = conv_flops = 0.0
    for eqns in groups.values():
        eqn = eqns[0]
        # random floats; zeros for integer inputs (max pooling's workspace: each output's
        # offset in its window, 0 is always a valid one)
        args = [jnp.asarray(rng.standard_normal(v.aval.shape), v.aval.dtype)
                if jnp.issubdtype(v.aval.dtype, jnp.floating) else jnp.zeros(v.aval.shape,
                                                                             v.aval.dtype)
                for v in eqn.invars]
        f = jax.jit(lambda *a, eqn=eqn: eqn.primitive.bind(*a, **eqn.params))
        seconds += best_of(lambda f=f, args=args: f(*args), repeats) * len(eqns)
        if eqn.params["target_name"].endswith("_conv"):
            # forward: (x, kernel HWIO) -> y; input gradient (mode 1): (dy, kernel) -> dx
            attrs = dict(eqn.params["attributes"])
            y = eqn.outvars[0].aval.shape if attrs["mode"] == 0 else eqn.invars[0].aval.shape
            kh, kw, cg, o = eqn.invars[1].aval.shape
            conv_flops += 2.0 * y[0] * y[1] * y[2] * o * kh * kw * cg * len(eqns)
    return {"calls": len(calls), "distinct": len(groups), "seconds_per_img_it": seconds / batch,
            "conv_gflop_per_img_it": conv_flops / batch / 1e9}


def timed_first(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of ``fn`` (its result blocked on)."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn`` (:func:`timed_first`), after one warm
    call (compilation, caches)."""
    timed_first(fn)
    return min(timed_first(fn) for _ in range(repeats))


def interleaved(engines: list[Engine], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each engine, ``rounds`` times, in interleaved order."""
    out: dict[str, list[float]] = {e.name: [] for e in engines}
    for _ in range(rounds):
        for e in engines:
            out[e.name].append(timed_first(e.run))
    return out


def summarise(engine: Engine, seconds: list[float]) -> dict:
    """A result row: median img·it/s, first-call and compile seconds, peak memory."""
    med = float(np.median(seconds))
    return {"engine": engine.name, "side": engine.side, "img_it_per_s": engine.items / med,
            "seconds_per_call": med, "first_call_s": engine.first_s,
            "compile_s": max(engine.first_s - med, 0.0), "peak_mem_mib": engine.peak_mem_mib,
            "rounds": len(seconds)}


def parse_attack(spec: str) -> tuple[str, str | None]:
    """``"mifgsm/all"`` -> ``("mifgsm", "all")``; ``"pgd"`` -> ``("pgd", None)``."""
    name, _, preset = spec.partition("/")
    return name, preset or None


def throughput_settings(name: str, steps: int) -> dict:
    """The settings under which attack ``name`` runs ``steps`` iterations on every image (no
    early stop, no plateau stop, one C&W search round), so that img·it is well defined."""
    from ppjax.attacks import resolve_attack

    cfg = resolve_attack(*parse_attack(name))
    out = {"steps": steps}
    if cfg.steps == 1:  # FGSM: a single step by definition
        out["steps"] = 1
    if cfg.early_stop:  # every step taken, the final iterate kept (as torchattacks does)
        out.update(early_stop=False, best="final")
    if getattr(cfg, "plateau", 0):
        out["plateau"] = 0
    if getattr(cfg, "search_steps", 1) != 1:
        out["search_steps"] = 1
    return out


def ppjax_engine(attack: str, judge, x, labels=None, *, steps: int = 10, dtype=None,
                 label: str | None = None, **kwargs) -> Engine:
    """An :class:`Engine` for ``ppjax.attack(attack, judge, x, labels, ...)`` run for ``steps``
    iterations on every image (:func:`throughput_settings`); ``kwargs`` go to ``ppjax.attack``
    (``appeal_judge``, ``backend``, settings). The first call is timed (compilation) and its
    peak memory taken."""
    import ppjax

    name, preset = parse_attack(attack)
    settings = {**throughput_settings(attack, steps), **kwargs}

    def run():
        return ppjax.attack(name, judge, x, labels, preset=preset, dtype=dtype, **settings).images

    reset_peak_memory()
    first = timed_first(run)
    timed_first(run)  # a warm call inside the memory window (donated buffers, caches)
    return Engine(label or f"ppjax {attack}", "ppjax", run, len(x) * settings["steps"], first,
                  peak_memory_mib())


# ----------------------------------------------------------------------------- the command


def best_dtype() -> str:
    """bfloat16 where it runs natively (accelerators; CPUs with AVX512_BF16 or AMX through
    oneDNN), else float32."""
    import jax

    if jax.default_backend() != "cpu":
        return "bfloat16"
    try:
        from ppjax.accel.onednn.cpu import capabilities

        return "bfloat16" if capabilities().native("bfloat16") else "float32"
    except Exception:  # no oneDNN here: XLA's bf16 on CPU is emulated, slower than f32
        return "float32"


def torch_originals():
    """The module that builds the torch originals (``benchmarks.torch_originals`` of a ppjax
    checkout: torchattacks, the authors' algorithms, the judges' torch replicas), or None when
    torch or the checkout is not importable. Its ``engine(attack, judge_name, judge, x, labels,
    steps)`` returns an :class:`Engine` or raises ``KeyError`` for an attack without one."""
    try:
        importlib.import_module("torch")
        return importlib.import_module("benchmarks.torch_originals")
    except ImportError:
        return None


@dataclasses.dataclass
class BenchSettings:
    """What ``ppjax bench`` measures (see its ``--help``)."""

    judge: str
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    batch: int = 64
    steps: int = 10
    rounds: int = 3
    dtype: str | None = None  # None: best_dtype()
    standin: bool = False
    weights_dir: str | None = None
    size: tuple[int, int] | None = None  # override the judge's input size (ResNets take any)
    torch: bool = True
    gemm_n: int = 4096


def load_bench_judge(s: BenchSettings):
    """The judge ``s`` names (stand-in if asked), at ``s.size`` when given."""
    import ppjax

    judge = ppjax.load_judge(s.judge, weights_dir=s.weights_dir, standin=s.standin)
    if s.size:
        judge = judge.replace(spec=dataclasses.replace(judge.spec, input_hw=tuple(s.size)))
    return judge


def bench_inputs(judge, batch: int, seed: int = 0):
    """``(x, labels)``: ``batch`` random images on the 8-bit grid at the judge's size, and the
    judge's clean top-1 labels (None for a score judge)."""
    import jax.numpy as jnp

    h, w = judge.spec.input_hw
    x = np.round(np.random.default_rng(seed).random((batch, h, w, 3), np.float32) * 255) / 255
    labels = None
    if judge.spec.output == "logits":
        labels = np.asarray(jnp.argmax(judge(jnp.asarray(x[:min(batch, 8)])), -1))
        labels = np.resize(labels, batch).astype(np.int32)
    return x.astype(np.float32), labels


def _engines(s: BenchSettings, judge, x, labels, dtype: str, log) -> tuple[list, dict]:
    import jax.numpy as jnp

    engines, skipped = [], {}
    originals = torch_originals() if s.torch else None
    for attack in s.attacks:
        log(f"[{s.judge}] compiling ppjax {attack} ({dtype}) ...")
        engines.append(ppjax_engine(attack, judge, x, labels, steps=s.steps,
                                    dtype=jnp.dtype(dtype)))
        if originals is None:
            skipped[f"torch {attack}"] = ("n/a (needs torch and a ppjax checkout's benchmarks/ "
                                          "on the path)" if s.torch else "n/a (--no-torch)")
            continue
        try:
            log(f"[{s.judge}] preparing torch {attack} ...")
            engines.append(originals.engine(attack, s.judge, judge, x, labels, s.steps))
        except KeyError as e:
            skipped[f"torch {attack}"] = f"n/a ({e.args[0] if e.args else e})"
    return engines, skipped


def bench(s: BenchSettings, log: Callable[[str], None] = print) -> dict:
    """Measure ``s.attacks`` on ``s.judge``; returns the JSON payload (rows, peak, device)."""
    import jax

    dtype = s.dtype or best_dtype()
    judge = load_bench_judge(s)
    x, labels = bench_inputs(judge, s.batch)
    engines, skipped = _engines(s, judge, x, labels, dtype, log)
    times = interleaved(engines, s.rounds)
    rows = [summarise(e, times[e.name]) for e in engines]
    log(f"[{s.judge}] measuring the peak and the FLOPs per iteration ...")
    peak = device_peak(dtype, s.gemm_n)
    flops = iteration_flops(judge, min(s.batch, 2))
    for r in rows:
        r["attack"] = r["engine"].split(" ", 1)[1]
        torch_row = next((t for t in rows if t["side"] == "torch"
                          and t["engine"] == f"torch {r['attack']}"), None)
        if r["side"] == "ppjax" and torch_row:
            r["ratio_vs_torch"] = r["img_it_per_s"] / torch_row["img_it_per_s"]
        if r["attack"] in ("pgd", "ifgsm", "fgsm") and peak["flops_per_s"]:
            r["flops_per_s"] = r["img_it_per_s"] * flops
            r["peak_fraction"] = r["flops_per_s"] / peak["flops_per_s"]
    dev = jax.devices()[0]
    return {"judge": s.judge, "standin": judge.standin, "dtype": dtype, "batch": s.batch,
            "input_hw": list(judge.spec.input_hw), "steps": s.steps, "rounds": s.rounds,
            "device": getattr(dev, "device_kind", dev.platform), "platform": dev.platform,
            "cpu": _cpu_model(), "cpus": os.cpu_count(), "jax": jax.__version__,
            "flops_per_img_it": flops, "peak": peak, "rows": rows, "not_run": skipped}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def table(payload: dict) -> str:
    """The rows as a fixed-width text table (STAND-IN in the title when the judge is one)."""
    head = (f"{payload['judge']}{' (STAND-IN weights: speed only)' if payload['standin'] else ''}"
            f", {payload['device']} ({payload['cpu']}), {payload['dtype']}, batch "
            f"{payload['batch']}, {payload['steps']} iterations per call, median of "
            f"{payload['rounds']} interleaved rounds")
    lines = [head, f"{'engine':32s} {'img·it/s':>10s} {'vs torch':>9s} {'compile s':>10s} "
                   f"{'peak MiB':>9s} {'of peak':>8s}"]
    for r in payload["rows"]:
        def f(k, fmt, r=r):
            return format(r[k], fmt) if r.get(k) is not None else "-"

        lines.append(f"{r['engine']:32s} {f('img_it_per_s', '10.2f')} {f('ratio_vs_torch', '9.2f')}"
                     f" {f('compile_s', '10.1f')} {f('peak_mem_mib', '9.0f')} "
                     f"{f('peak_fraction', '8.1%')}")
    lines += [f"{k:32s} {v}" for k, v in payload["not_run"].items()]
    pk = payload["peak"]
    if pk.get("flops_per_s"):
        lines.append(f"peak {pk['flops_per_s'] / 1e9:.0f} GFLOP/s ({pk['source']}, {pk['via']}); "
                     f"{payload['flops_per_img_it'] / 1e9:.2f} GFLOP per image-iteration (XLA)")
    return "\n".join(lines)


def plot(payload: dict, path) -> None:
    """A bar chart of img·it/s per attack, ppjax beside torch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(r["attack"] for r in payload["rows"]))
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(attacks), 3.6))
    for i, side in enumerate(("ppjax", "torch")):
        vals = [next((r["img_it_per_s"] for r in payload["rows"]
                      if r["side"] == side and r["attack"] == a), 0.0) for a in attacks]
        ax.bar(np.arange(len(attacks)) + (i - 0.5) * 0.4, vals, 0.4, label=side)
    ax.set_xticks(np.arange(len(attacks)), attacks)
    ax.set_ylabel("img·it/s (higher is better)")
    title = f"{payload['judge']} on {payload['device']}, {payload['dtype']}"
    ax.set_title(title + (" (STAND-IN)" if payload["standin"] else ""), fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
