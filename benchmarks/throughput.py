"""PGD throughput: ppjax against PyTorch, interleaved in one process on one machine.

One iteration = the judge's forward pass + the gradient of the attack loss with respect to the
input + the L-inf PGD update (sign step, projection on the eps ball and [0, 1]); the same maths
in both engines. Engines run in interleaved rounds (ppjax, torch, ppjax, torch, ...) so that a
busy machine slows all of them alike; the figures are medians over rounds, as wall-clock
img·it/s and as img·it per CPU-second of the process (robust to other load on the machine).

    python -m benchmarks.throughput --json out.json [--judges resnet50_places365,nima_mobilenetv2]
        [--batch N] [--iters 4] [--rounds 3] [--levers] [--no-torch-compile] [--no-memory]

The default run measures ppjax naive (f32, XLA), ppjax's best XLA-only configuration and ppjax's
best configuration (``ppjax.accel.onednn``: BatchNorm folded, convolutions through oneDNN in bf16 on
AMX, the fast max-pool gradient), against torch eager f32 and channels-last bf16 (and
``torch.compile`` with ``--torch-compile``). ``--levers`` adds every ppjax configuration tried
(XLA CPU library paths, bf16, BatchNorm folding, oneDNN, batch size, donation) and writes them
to the ``throughput_levers`` section of ``benchmarks/RESULTS.md``; the default run writes the
``throughput`` section. Peak memory (max RSS) is measured per engine in a fresh
child process (``--no-memory`` skips it). Judges use random stand-in weights: speed does not
depend on weight values, and both engines get the same ones (random init of its own would let
torch run into denormals).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks import _results
from ppjax.bench import peak_rss_mib

EPS, STEP = 8 / 255, 2 / 255

# XLA CPU compiler options per library path (passed to ``Lowered.compile``, so several paths
# can be compared in one process). Defaults in jax 0.10: convolutions and dots go to YNNPACK
# ("__ynn_fusion"); an empty ynn fusion list sends them to XLA's own Eigen kernels.
XLA_PATHS: dict[str, dict[str, Any]] = {
    "ynn": {},
    "eigen": {"xla_cpu_experimental_ynn_fusion_type": ""},
    "onednn": {"xla_cpu_experimental_ynn_fusion_type": "", "xla_cpu_use_onednn": True,
               "xla_cpu_experimental_onednn_custom_call": True},
    "ynn_strict": {"xla_cpu_strict_dot_conv_math": True},
}


@dataclasses.dataclass(frozen=True)
class JaxVariant:
    """A ppjax configuration: compute dtype, BatchNorm folding, XLA CPU path, batch, donation."""

    name: str
    dtype: str = "float32"
    fold: bool = False
    path: str = "ynn"
    batch_mult: int = 1  # batch = --batch * batch_mult
    donate: bool = True
    onednn: bool = False  # convolutions through ppjax.accel.onednn (AMX for bf16)


# ppjax's candidates for its best on this CPU (what ``ppjax.attack(backend="auto")`` runs in
# f32 and in bf16; bf16 only where oneDNN has native kernels: AVX512_BF16 or AMX).
BEST = JaxVariant("ppjax onednn bf16 (BN folded)", dtype="bfloat16", fold=True, onednn=True)
ONEDNN_F32 = JaxVariant("ppjax onednn f32 (BN folded)", fold=True, onednn=True)
BEST_XLA = JaxVariant("ppjax XLA only (f32, BN folded, eigen)", fold=True, path="eigen")
NAIVE = JaxVariant("ppjax naive (f32)", fold=False, path="ynn", donate=False)
DEFAULT_VARIANTS = [NAIVE, BEST_XLA, ONEDNN_F32, BEST]
NO_BF16 = "n/a (no native bf16)"
# batch per judge when --batch is not given (KonCept512 at 512x384 is ~8x ResNet-50's work)
DEFAULT_BATCH = {"koncept512": 2}

LEVERS = [
    NAIVE,
    JaxVariant("f32 + donate", path="ynn"),
    JaxVariant("f32 eigen", path="eigen"),
    JaxVariant("f32 onednn", path="onednn"),
    JaxVariant("f32 fold", fold=True),
    JaxVariant("f32 fold eigen", fold=True, path="eigen"),
    JaxVariant("bf16", dtype="bfloat16"),
    JaxVariant("bf16 strict dot/conv math", dtype="bfloat16", path="ynn_strict"),
    JaxVariant("bf16 fold eigen", dtype="bfloat16", fold=True, path="eigen"),
    JaxVariant("f32 fold eigen, batch x2", fold=True, path="eigen", batch_mult=2),
    JaxVariant("f32 onednn conv", onednn=True),
    JaxVariant("f32 fold onednn conv", fold=True, onednn=True),
    JaxVariant("bf16 onednn conv", dtype="bfloat16", onednn=True),
    JaxVariant("bf16 fold onednn conv", dtype="bfloat16", fold=True, onednn=True),
    JaxVariant("bf16 fold onednn conv, batch x2", dtype="bfloat16", fold=True, onednn=True,
               batch_mult=2),
]

# accelerators (GPU/TPU): plain XLA (no CPU compiler options), BatchNorm folded; selected with
# --variants (benchmarks/gpu_check.sh)
ACCEL_BF16 = JaxVariant("ppjax bf16 (BN folded, XLA)", dtype="bfloat16", fold=True)
ACCEL_F32 = JaxVariant("ppjax f32 (BN folded, XLA)", fold=True)
VARIANTS = {"naive": NAIVE, "best_xla": BEST_XLA, "onednn_f32": ONEDNN_F32, "best": BEST,
            "accel_bf16": ACCEL_BF16, "accel_f32": ACCEL_F32}

TORCH_VARIANTS = ("torch eager f32", "torch eager channels-last bf16",
                  "torch.compile channels-last bf16")


# --------------------------------------------------------------------------- ppjax side

def _judge(name: str, weights_dir: str):
    from ppjax import load_judge

    return load_judge(name, weights_dir=weights_dir, standin=True)


def _loss_jax(judge, x, labels):
    import jax
    import jax.numpy as jnp

    out = judge(x).astype(jnp.float32)
    if judge.spec.output == "logits":  # untargeted: raise the CE of the true class
        ll = jax.nn.log_softmax(out)
        return -jnp.sum(jnp.take_along_axis(ll, labels[:, None], axis=1))
    if judge.spec.output == "distribution":  # lower the mean score
        k = out.shape[-1]
        return -jnp.sum(out * jnp.arange(1, k + 1, dtype=jnp.float32).reshape(1, k))
    return -jnp.sum(out)


def pgd_step(judge, x, x0, labels):
    """One PGD iteration: the input gradient of the attack loss, a sign step, the projection on
    the eps ball around ``x0`` and on [0, 1]."""
    import jax
    import jax.numpy as jnp

    g = jax.grad(lambda x: _loss_jax(judge, x, labels))(x)
    x = x + STEP * jnp.sign(g)
    return jnp.clip(jnp.clip(x, x0 - EPS, x0 + EPS), 0.0, 1.0)


def compile_jax_step(variant: JaxVariant, judge_name: str, weights_dir: str, batch: int, seed=0):
    """The jitted :func:`pgd_step` for ``variant``, compiled: ``(compiled, args, compile_s)``
    with ``args = (judge, x0, x0, labels)`` (``compiled.cost_analysis()`` gives its FLOPs)."""
    import jax
    import jax.numpy as jnp

    from ppjax.accel.fold import fold_bn

    judge = _judge(judge_name, weights_dir)
    if variant.onednn:  # as ppjax.attack runs it (kernels stored in the compute dtype)
        from ppjax.accel.onednn import accelerate

        judge = accelerate(judge, fold=variant.fold, check=False, dtype=jnp.dtype(variant.dtype))
    elif variant.fold:
        judge = fold_bn(judge, check=False).with_dtype(jnp.dtype(variant.dtype))
    else:
        judge = judge.with_dtype(jnp.dtype(variant.dtype))
    h, w = judge.spec.input_hw
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.random((batch, h, w, 3), np.float32))
    labels = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
    jitted = jax.jit(pgd_step, donate_argnums=(1,) if variant.donate else ())
    t0 = time.perf_counter()
    compiled = jitted.lower(judge, x0, x0, labels).compile(compiler_options=XLA_PATHS[variant.path])
    return compiled, (judge, x0, x0, labels), time.perf_counter() - t0


def make_jax_engine(variant: JaxVariant, judge_name: str, weights_dir: str, batch: int, seed=0):
    """Returns ``(run_once, compile_s, batch)``; ``run_once()`` does one PGD iteration."""
    import jax.numpy as jnp

    b = batch * variant.batch_mult
    compiled, (judge, x0, _, labels), compile_s = compile_jax_step(variant, judge_name,
                                                                   weights_dir, b, seed)
    state = {"x": jnp.array(x0)}

    def run_once():
        state["x"] = compiled(judge, state["x"], x0, labels)
        state["x"].block_until_ready()

    run_once()
    return run_once, compile_s, b


def hlo_library_calls(variant: JaxVariant, judge_name: str, weights_dir: str, batch: int) -> dict:
    """How the compiled step's convolutions are emitted: counts of ``__ynn_fusion`` / oneDNN /
    plain ``convolution`` and the element type the convolutions run in."""
    import re

    import jax
    import jax.numpy as jnp

    judge = _judge(judge_name, weights_dir).with_dtype(jnp.dtype(variant.dtype))
    h, w = judge.spec.input_hw
    x = jnp.zeros((batch, h, w, 3), jnp.float32)
    labels = jnp.zeros((batch,), jnp.int32)
    grad = jax.jit(jax.grad(lambda x, j: _loss_jax(j, x, labels)))
    text = grad.lower(x, judge).compile(compiler_options=XLA_PATHS[variant.path]).as_text()
    convs = re.findall(r"= (\w+)\[[^\]]*\]\{[^}]*\} convolution\(", text)
    return {
        "ynn_fusions": text.count('"__ynn_fusion"'),
        "onednn_calls": len(re.findall(r"__onednn\$\w+", text)),
        "convolutions": len(convs),
        "conv_dtypes": sorted(set(convs)),
    }


# --------------------------------------------------------------------------- torch side

def make_torch_engine(kind: str, judge_name: str, batch: int, weights_dir: str, seed=0,
                      device: str = "cpu"):
    """Returns ``(run_once, first_call_s, batch)``; ``device``: "cpu" or "cuda" (bf16 autocast
    on that device; ``run_once`` synchronises, so wall-clock timing holds)."""
    import torch

    from benchmarks import torch_models

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(seed)
    norm = {}
    if judge_name == "resnet50_places365":
        net, hw, output = torch_models.resnet50(365), (256, 256), "logits"
    elif judge_name == "nima_mobilenetv2":
        net, hw, output = torch_models.nima_mobilenet_v2(), (224, 224), "distribution"
    elif judge_name == "koncept512":
        net, hw, output = torch_models.koncept512(), (384, 512), "score"
        norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    else:
        raise KeyError(f"no torch reference for judge {judge_name!r}")
    # the judge's own (stand-in) weights: random torch init can differ in speed (denormals)
    torch_models.load_from_judge(net, _judge(judge_name, weights_dir))
    cl = "channels-last" in kind
    bf16 = "bf16" in kind
    model = torch_models.with_normalisation(net.eval(), channels_last=cl, **norm).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    rng = np.random.default_rng(seed)
    x0 = torch.from_numpy(rng.random((batch, *hw, 3), np.float32)).to(device)
    labels = torch.from_numpy(rng.integers(0, 10, batch)).to(device)
    bins = torch.arange(1, 11, dtype=torch.float32, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def loss_fn(x):
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        out = out.float()
        if output == "logits":
            return torch.nn.functional.cross_entropy(out, labels, reduction="sum")
        if output == "distribution":
            return -(out * bins).sum()
        return -out.sum()

    if kind.startswith("torch.compile"):
        loss_fn = torch.compile(loss_fn)
    state = {"x": x0.clone()}

    def run_once():
        x = state["x"].requires_grad_(True)
        (g,) = torch.autograd.grad(loss_fn(x), x)
        with torch.no_grad():
            x = x + STEP * g.sign()
            state["x"] = torch.clamp(torch.minimum(torch.maximum(x, x0 - EPS), x0 + EPS), 0, 1)
        sync()

    t0 = time.perf_counter()
    run_once()  # eager: first-call overhead; torch.compile: the compilation
    return run_once, time.perf_counter() - t0, batch


# --------------------------------------------------------------------------- measurement

def _time(run_once, iters: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per iteration over ``iters`` iterations."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        run_once()
    return (time.perf_counter() - w0) / iters, (time.process_time() - c0) / iters


def peak_rss_child(engine: str, judge: str, batch: int, weights_dir: str) -> float | None:
    """Max RSS (MiB) of a fresh process that builds ``engine`` and runs 2 iterations."""
    cmd = [sys.executable, "-m", "benchmarks.throughput", "--_child", engine, "--judges", judge,
           "--batch", str(batch), "--weights-dir", weights_dir]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        print(f"  peak RSS of {engine!r} not measured: {e}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def _child(engine: str, judge: str, batch: int, weights_dir: str) -> None:
    variants = {v.name: v for v in LEVERS + DEFAULT_VARIANTS + list(VARIANTS.values())}
    if engine in variants:
        run_once, _, _ = make_jax_engine(variants[engine], judge, weights_dir, batch)
    else:
        run_once, _, _ = make_torch_engine(engine, judge, batch, weights_dir)
    run_once()
    print(json.dumps({"peak_rss_mib": peak_rss_mib()}))




class TimeLimit(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise :class:`TimeLimit` in the main thread after ``seconds`` (0: no limit)."""
    if not seconds:
        yield
        return

    def expire(signum, frame):
        raise TimeLimit(f"over {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def runnable(variant: JaxVariant) -> str | None:
    """None when this CPU can run ``variant``, else why not (the row's "n/a" text)."""
    if not variant.onednn:
        return None
    from ppjax.accel import onednn

    caps = onednn.capabilities()
    if not caps.available:
        return f"n/a (oneDNN unavailable: {caps.reason.splitlines()[0]})"
    if not caps.native(variant.dtype):
        return NO_BF16
    return None


def bench_judge(judge: str, args, weights_dir: str) -> list[dict]:
    jax_variants = (LEVERS + [ONEDNN_F32, BEST]) if args.levers else DEFAULT_VARIANTS
    if args.variants:
        jax_variants = [VARIANTS[v] for v in args.variants.split(",") if v]
    torch_kinds = [k for k in TORCH_VARIANTS if args.torch_compile or "compile" not in k]
    if not args.torch:
        torch_kinds = []
    batch = args.batch or DEFAULT_BATCH.get(judge, 8)
    engines, skipped = {}, []
    for v in jax_variants:
        why = runnable(v)
        if why:
            print(f"[{judge}] {v.name}: {why}", flush=True)
            skipped.append({"judge": judge, "engine": "ppjax", "config": v.name, "batch": batch,
                            "na": why})
            continue
        print(f"[{judge}] compiling {v.name} ...", flush=True)
        engines[v.name] = ("ppjax", *make_jax_engine(v, judge, weights_dir, batch))
    for k in torch_kinds:
        print(f"[{judge}] preparing {k} ...", flush=True)
        limit = args.torch_compile_timeout if "compile" in k else 0
        try:
            with time_limit(limit):
                engines[k] = ("torch", *make_torch_engine(k, judge, batch, weights_dir))
        except Exception as e:  # torch.compile may not finish (no compiler, time limit, ...)
            print(f"  {k} unavailable: {type(e).__name__}: {e}", file=sys.stderr)
            why = (f"n/a (did not compile in {limit} s)" if isinstance(e, TimeLimit)
                   else f"n/a ({type(e).__name__})")
            skipped.append({"judge": judge, "engine": "torch", "config": k, "batch": batch,
                            "na": why})
    samples = {name: [] for name in engines}
    for r in range(args.rounds):
        for name, (_, run_once, _, b) in engines.items():
            wall, cpu = _time(run_once, args.iters)
            samples[name].append((b / wall, b / cpu))
            print(f"  round {r} {name:40s} {b / wall:7.2f} img·it/s  {b / cpu:7.2f} img·it/CPU-s",
                  flush=True)
    rows = []
    for name, (engine, _, compile_s, b) in engines.items():
        s = np.asarray(samples[name])
        rows.append({"judge": judge, "engine": engine, "config": name, "batch": b,
                     "img_it_per_s": float(np.median(s[:, 0])),
                     "img_it_per_cpu_s": float(np.median(s[:, 1])),
                     "compile_s": compile_s})
    torch_best = max((r for r in rows if r["engine"] == "torch"),
                     key=lambda r: r["img_it_per_s"], default=None)
    for r in rows:
        if torch_best:
            r["ratio_vs_torch_best"] = r["img_it_per_s"] / torch_best["img_it_per_s"]
            r["cpu_ratio_vs_torch_best"] = r["img_it_per_cpu_s"] / torch_best["img_it_per_cpu_s"]
            r["torch_best"] = torch_best["config"]
    if args.memory:
        for r in rows:
            r["peak_rss_mib"] = peak_rss_child(r["config"], judge, r["batch"], weights_dir)
    return rows + skipped


def judge_summary(rows: list[dict]) -> dict:
    """ppjax's best on this CPU / torch's best on this CPU, same run (wall-clock img·it/s; the
    CPU-time ratio alongside)."""
    ran = [r for r in rows if "img_it_per_s" in r]
    best = {e: max((r for r in ran if r["engine"] == e), key=lambda r: r["img_it_per_s"],
                   default=None) for e in ("ppjax", "torch")}
    out = {"ppjax_best": best["ppjax"] and best["ppjax"]["config"],
           "torch_best": best["torch"] and best["torch"]["config"],
           "batch": ran[0]["batch"] if ran else None,
           "not_run": {r["config"]: r["na"] for r in rows if "na" in r}}
    if best["ppjax"] and best["torch"]:
        out["ppjax_img_it_per_s"] = best["ppjax"]["img_it_per_s"]
        out["torch_img_it_per_s"] = best["torch"]["img_it_per_s"]
        out["ratio_vs_torch_best"] = best["ppjax"]["img_it_per_s"] / best["torch"]["img_it_per_s"]
        cpu = {e: max(r["img_it_per_cpu_s"] for r in ran if r["engine"] == e)
               for e in ("ppjax", "torch")}
        out["cpu_ratio_vs_torch_best"] = cpu["ppjax"] / cpu["torch"]
    return out


def _markdown(rows: list[dict], args, meta: dict, summary: dict) -> str:
    cpu = meta["cpu"]
    head = (f"Measured {meta['date']} on **{cpu['model']}** ({meta['cpus']} CPUs visible; ISA "
            f"flags {', '.join(cpu['flags']) or 'none reported'}; oneDNN ISA "
            f"{cpu.get('onednn_isa')}, native dtypes {', '.join(cpu.get('native_dtypes', ()))}"
            f"{'; capped by ONEDNN_MAX_CPU_ISA=' + cap if (cap := cpu.get('onednn_max_cpu_isa')) else ''}"
            f"), jax {meta['jax']}, {args.rounds} interleaved rounds of {args.iters} iterations; "
            "medians. One iteration = forward + input gradient + L-inf PGD update. Ratios are "
            "against the fastest torch configuration of the same run. img·it/CPU-s divides by "
            "the process's CPU time, which is robust to other load on a shared machine.\n\n")
    top = _results.markdown_table(
        ["judge", "batch", "ppjax's best", "img·it/s", "torch's best", "img·it/s",
         "**ratio_vs_torch_best**", "CPU-time ratio"],
        [[j, s["batch"], s["ppjax_best"], s.get("ppjax_img_it_per_s", "-"), s["torch_best"],
          s.get("torch_img_it_per_s", "-"), s.get("ratio_vs_torch_best", "-"),
          s.get("cpu_ratio_vs_torch_best", "-")] for j, s in summary.items()])
    table = _results.markdown_table(
        ["judge", "config", "batch", "img·it/s", "ratio", "img·it/CPU-s", "CPU ratio",
         "compile s", "peak RSS MiB"],
        [[r["judge"], r["config"], r["batch"], r["img_it_per_s"], r.get("ratio_vs_torch_best", "-"),
          r["img_it_per_cpu_s"], r.get("cpu_ratio_vs_torch_best", "-"), r["compile_s"],
          r.get("peak_rss_mib") or "-"] if "na" not in r else
         [r["judge"], r["config"], r["batch"], r["na"], "-", "-", "-", "-", "-"] for r in rows])
    return head + top + "\n\nAll configurations:\n\n" + table


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--judges", default="resnet50_places365,nima_mobilenetv2,koncept512")
    p.add_argument("--batch", type=int, default=None,
                   help="images per iteration (default 8; KonCept512 2)")
    p.add_argument("--iters", type=int, default=4, help="iterations per engine per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--levers", action="store_true", help="measure every ppjax lever")
    p.add_argument("--variants", default=None,
                   help=f"ppjax configurations to run instead of the default ones, comma-separated "
                        f"from {', '.join(VARIANTS)} (accel_*: for GPUs/TPUs)")
    p.add_argument("--no-torch", dest="torch", action="store_false",
                   help="skip the torch engines (e.g. on a GPU machine with CPU-only torch)")
    p.add_argument("--results-section", default=None,
                   help="RESULTS.md section to write (default: throughput[_levers])")
    p.add_argument("--no-torch-compile", dest="torch_compile", action="store_false",
                   help="skip torch.compile (minutes of compilation on a small CPU)")
    p.add_argument("--torch-compile-timeout", type=int, default=900,
                   help="seconds torch.compile may take per judge before its row is n/a "
                        "(default 900)")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the per-engine peak-RSS child processes")
    p.add_argument("--weights-dir", default=None, help="stand-in weights (default: a temp dir)")
    p.add_argument("--no-results-md", dest="results_md", action="store_false")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    _results.add_smoke(p)
    args = p.parse_args(argv)
    _results.apply_smoke(args, judges="nima_mobilenetv2", batch=1, iters=1, rounds=1,
                         torch_compile=False, memory=False, results_md=False)
    weights_dir = args.weights_dir or tempfile.mkdtemp(prefix="ppjax-bench-weights-")
    judges = [j for j in args.judges.split(",") if j]
    if args._child:
        _child(args._child, judges[0], args.batch or 8, weights_dir)
        return 0
    meta = _results.machine()
    rows, hlo, summary = [], {}, {}
    for judge in judges:
        judge_rows = bench_judge(judge, args, weights_dir)
        rows += judge_rows
        summary[judge] = judge_summary(judge_rows)
        if args.levers:
            hlo[judge] = {path: hlo_library_calls(JaxVariant(path, dtype=dt, path=path), judge,
                                                  weights_dir, 1)
                          for path in XLA_PATHS for dt in ("float32",)}
    # each judge is a top-level entry with its ratio_vs_torch_best (read by machine)
    payload = {"machine": meta, "cpu": meta["cpu"],
               "args": {k: v for k, v in vars(args).items() if k != "_child"},
               "rows": rows, "hlo": hlo, "judges": summary, **summary}
    _results.write_json(args.json, payload)
    md = _markdown(rows, args, meta, summary)
    if hlo:
        md += "\n\nHow the convolutions are emitted (compiled input-gradient HLO, f32):\n\n"
        md += _results.markdown_table(
            ["judge", "XLA path", "__ynn_fusion", "oneDNN calls", "convolution ops", "conv dtype"],
            [[j, path, h["ynn_fusions"], h["onednn_calls"], h["convolutions"],
              ",".join(h["conv_dtypes"])] for j, d in hlo.items() for path, h in d.items()])
    print(md)
    if args.results_md:
        section = "throughput_levers" if args.levers else "throughput"
        if meta["cpu"].get("onednn_max_cpu_isa"):  # an imitated smaller CPU: its own section
            section += "_" + meta["cpu"]["onednn_max_cpu_isa"].lower()
        section = args.results_section or section
        _results.update_section(section, md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
