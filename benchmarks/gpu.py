"""The GPU check's measurements (benchmarks/gpu_check.sh runs them; docs/gpu.md).

``bench``: PGD on ResNet-50 (the STAND-IN weights: speed does not depend on weight values) in bf16
(BatchNorm folded, plain XLA) at each batch: compile time, FLOPs per iteration from XLA's cost
analysis of the compiled step, img·it/s, and the share of the device's dense bf16 peak; beside it,
in the same process and interleaved rounds, the same attack in torch on the same device
(channels-last, bf16 autocast, eager and ``torch.compile`` where it compiles in time), giving
``ratio_vs_torch_gpu``. ``summary``: merges that with the streaming pipeline's efficiency
(benchmarks.pipeline's JSON) into ``gpu_check.json`` and ``summary.md``.

    python -m benchmarks.gpu bench --json OUT/throughput.json [--batches 64,256] [--iters 20]
        [--rounds 5] [--torch-compile-batches 256] [--torch-compile-timeout 120]
    python -m benchmarks.gpu summary --out OUT
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import throughput

JUDGE = "resnet50_places365"
# dense bf16 tensor-core peaks, TFLOP/s, from the vendors' datasheets (SXM parts unless named),
# matched in order against the device kind JAX reports (e.g. "NVIDIA H100 80GB HBM3")
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)
TORCH_KINDS = ("torch eager channels-last bf16", "torch.compile channels-last bf16")
# issue 28's goals, read at the largest batch measured
GOALS = {"share_of_bf16_peak": 0.40, "ratio_vs_torch_gpu": 1.0, "pipeline_efficiency": 0.9}


def peak_bf16_tflops(device_kind: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s or None, where it came from) for a device kind."""
    if override:
        return float(override), "--peak-tflops"
    for key, peak in PEAK_BF16_TFLOPS:
        if key.lower() in device_kind.lower():
            return peak, f"datasheet ({key})"
    return None, f"unknown device kind {device_kind!r}"


def device_info(peak_override: float | None = None) -> dict:
    import jax
    import jaxlib

    d = jax.devices()[0]
    peak, source = peak_bf16_tflops(d.device_kind, peak_override)
    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend(), "device_kind": d.device_kind,
            "devices": len(jax.devices()), "peak_bf16_tflops": peak, "peak_source": source,
            "python": sys.version.split()[0],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def jax_engine(batch: int, weights_dir: str):
    """``(run, meta)``: ``run(iters)`` runs ``iters`` chained PGD iterations with one sync at
    the end (device throughput: the host dispatches ahead), ``meta`` the compile time and the
    FLOPs of one iteration."""
    from ppjax import compat

    compiled, (judge, x0, _, labels), compile_s = throughput.compile_jax_step(
        throughput.ACCEL_BF16, JUDGE, weights_dir, batch)
    flops = compat.compiled_flops(compiled)
    state = {"x": compiled(judge, x0.copy(), x0, labels)}  # the first call: load and warm up
    state["x"].block_until_ready()

    def run(iters: int):
        x = state["x"]
        for _ in range(iters):
            x = compiled(judge, x, x0, labels)
        x.block_until_ready()
        state["x"] = x

    return run, {"compile_s": compile_s, "flops_per_iter": flops}


def torch_device() -> str | None:
    """"cuda" when torch sees a GPU, "cpu" when torch is installed without one, None without."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_engines(batch: int, weights_dir: str, args, device: str) -> tuple[dict, dict]:
    """The torch engines at ``batch`` on ``device``: ``({kind: (run, first_call_s)},
    {kind: why not})``; ``torch.compile`` only at ``--torch-compile-batches``, under a limit."""
    import torch

    torch.backends.cudnn.benchmark = True  # XLA autotunes its convolutions too
    engines, skipped = {}, {}
    for kind in TORCH_KINDS:
        compiled = kind.startswith("torch.compile")
        if compiled and batch not in args.torch_compile_batches:
            skipped[kind] = f"n/a (torch.compile runs at batch {args.torch_compile_batches})"
            continue
        limit = args.torch_compile_timeout if compiled else 0
        try:
            with throughput.time_limit(limit):
                run_once, first_s, _ = throughput.make_torch_engine(kind, JUDGE, batch,
                                                                    weights_dir, device=device)
            engines[kind] = (run_once, first_s)
        except Exception as e:  # torch.compile may not finish in time, or fail on this machine
            skipped[kind] = (f"n/a (did not compile in {limit} s)"
                             if isinstance(e, throughput.TimeLimit)
                             else f"n/a ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
            print(f"  {kind}: {skipped[kind]}", file=sys.stderr, flush=True)
    return engines, skipped


def _rate(run, iters: int, batch: int) -> float:
    t0 = time.perf_counter()
    run(iters)
    return batch * iters / (time.perf_counter() - t0)


def bench_batch(batch: int, args, weights_dir: str, info: dict) -> dict:
    """One batch size: ppjax and the torch engines in interleaved rounds; medians."""
    print(f"[batch {batch}] compiling ppjax bf16 ...", flush=True)
    run_jax, meta = jax_engine(batch, weights_dir)
    runs = {"ppjax bf16 (BN folded, XLA)": run_jax}
    first = {}
    skipped = {}
    device = torch_device() if args.torch else None
    if device is None:
        skipped = {k: "n/a (torch not installed)" if args.torch else "n/a (--no-torch)"
                   for k in TORCH_KINDS}
    else:
        engines, skipped = torch_engines(batch, weights_dir, args, device)
        for kind, (run_once, first_s) in engines.items():
            runs[kind] = lambda n, f=run_once: [f() for _ in range(n)]
            first[kind] = first_s
    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):
        for name, run in runs.items():
            rates[name].append(_rate(run, args.iters, batch))
            print(f"  round {r} {name:36s} {rates[name][-1]:10.1f} img·it/s", flush=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    ppjax = med.pop("ppjax bf16 (BN folded, XLA)")
    flops = meta["flops_per_iter"]
    peak = info["peak_bf16_tflops"]
    row = {"batch": batch, "img_it_per_s": ppjax, "compile_s": meta["compile_s"],
           "flops_per_iter": flops,
           "gflop_per_img_it": flops / batch / 1e9 if flops else None,
           "tflop_per_s": ppjax * flops / batch / 1e12 if flops else None,
           "share_of_bf16_peak": (ppjax * flops / batch / (peak * 1e12)
                                  if flops and peak else None),
           "torch": {k: {"img_it_per_s": v, "first_call_s": first[k]} for k, v in med.items()},
           "torch_not_run": skipped, "torch_device": device,
           "rounds": args.rounds, "iters": args.iters}
    if med:
        best = max(med, key=med.get)
        row["torch_best"] = best
        row["ratio_vs_torch_gpu"] = ppjax / med[best]
    return row


def bench(args) -> dict:
    from ppjax import load_judge

    weights_dir = args.weights_dir
    info = device_info(args.peak_tflops)
    print(json.dumps(info), flush=True)
    t0 = time.perf_counter()
    judge = load_judge(JUDGE, weights_dir=weights_dir, standin=True)  # made here when absent
    res = {"device": info, "standin": judge.standin, "standin_s": time.perf_counter() - t0,
           "standin_format": os.environ.get("PPJAX_STANDIN_FORMAT", "auto"),
           "judge": f"{JUDGE} (STAND-IN)", "dtype": "bfloat16", "rows": []}
    del judge
    for b in args.batches:
        res["rows"].append(bench_batch(b, args, weights_dir, info))
        Path(args.json).write_text(json.dumps(res, indent=1))  # keep what is measured so far
    return res


# --------------------------------------------------------------------------- summary

def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def summarise(out: Path) -> dict:
    """``out/gpu_check.json`` (the fields of docs/gpu.md) and ``out/summary.md`` from the
    measurements under ``out``; a part that did not run is named, not invented."""
    tp_path, pipe_path = out / "throughput.json", out / "pipeline.json"
    tp = json.loads(tp_path.read_text()) if tp_path.exists() else {}
    pipe = json.loads(pipe_path.read_text()) if pipe_path.exists() else {}
    rows = tp.get("rows", [])
    eff = pipe.get("efficiency_cases", {}).get("resnet50", {})
    res = {"device": tp.get("device"), "judge": tp.get("judge"), "standin_s": tp.get("standin_s"),
           "pgd": {str(r["batch"]): {k: r.get(k) for k in (
               "img_it_per_s", "share_of_bf16_peak", "tflop_per_s", "gflop_per_img_it",
               "compile_s", "ratio_vs_torch_gpu", "torch_best", "torch", "torch_not_run")}
               for r in rows},
           "pipeline_efficiency": eff.get("efficiency"),
           "pipeline": {k: eff.get(k) for k in ("engine_img_s", "protect_img_s", "images",
                                                 "slots", "steps", "dtype")} if eff else None,
           "missing": [p.name for p in (tp_path, pipe_path) if not p.exists()]}
    res["goals"] = goals(res)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=1))
    (out / "summary.md").write_text(summary_markdown(res))
    return res


def goals(res: dict) -> dict:
    """Each goal: its target, the value measured (at the largest batch), met or not (None when
    not measured)."""
    top = max(res["pgd"], key=int, default=None)
    row = res["pgd"][top] if top else {}
    got = {"share_of_bf16_peak": row.get("share_of_bf16_peak"),
           "ratio_vs_torch_gpu": row.get("ratio_vs_torch_gpu"),
           "pipeline_efficiency": res.get("pipeline_efficiency")}
    return {k: {"target": t, "value": got[k], "batch": int(top) if top else None,
                "met": None if got[k] is None else got[k] >= t} for k, t in GOALS.items()}


def summary_markdown(res: dict) -> str:
    d = res.get("device") or {}
    lines = [f"# GPU check: {d.get('device_kind', '?')} ({d.get('backend', '?')}), jax "
             f"{d.get('jax', '?')}, {d.get('date', '?')}",
             "",
             f"ResNet-50 PGD (STAND-IN weights), bf16, BatchNorm folded, plain XLA. Share of peak "
             f"= achieved FLOP/s (XLA cost analysis of the compiled step) / "
             f"{_fmt(d.get('peak_bf16_tflops'), 'g')} TFLOP/s ({d.get('peak_source', '?')}). "
             f"Stand-in made (or loaded) in {_fmt(res.get('standin_s'))} s.",
             "",
             "| batch | img·it/s | TFLOP/s | share of bf16 peak | GFLOP/img·it | compile s "
             "| torch best | torch img·it/s | ratio_vs_torch_gpu |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b, r in res.get("pgd", {}).items():
        tb = r.get("torch_best")
        t = (r.get("torch") or {}).get(tb, {}).get("img_it_per_s") if tb else None
        share = r.get("share_of_bf16_peak")
        lines.append(f"| {b} | {_fmt(r['img_it_per_s'])} | {_fmt(r.get('tflop_per_s'))} | "
                     f"{'-' if share is None else f'{100 * share:.1f}%'} | "
                     f"{_fmt(r.get('gflop_per_img_it'))} | {_fmt(r.get('compile_s'))} | "
                     f"{tb or '-'} | {_fmt(t)} | {_fmt(r.get('ratio_vs_torch_gpu'), '.2f')} |")
        for k, why in (r.get("torch_not_run") or {}).items():
            lines.append(f"|  | {k}: {why} | | | | | | | |")
    p = res.get("pipeline")
    lines += ["", f"Streaming pipeline efficiency (protect img/s over engine-only img/s): "
              f"{_fmt(res.get('pipeline_efficiency'), '.3f')}"
              + (f" ({_fmt(p['protect_img_s'])} / {_fmt(p['engine_img_s'])} img/s, {p['images']} "
                 f"images, {p['slots']} slots, {p['steps']} steps, {p['dtype']})" if p else "")]
    lines += ["", "Goals: " + "; ".join(
        f"{k} {_fmt(g['value'], '.3f')} (target {g['target']}: "
        f"{'not measured' if g['met'] is None else 'met' if g['met'] else 'NOT met'})"
        for k, g in (res.get("goals") or {}).items())]
    if res.get("missing"):
        lines += ["", f"Not measured (the step failed or ran out of time): "
                  f"{', '.join(res['missing'])}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench")
    b.add_argument("--json", required=True)
    b.add_argument("--weights-dir", required=True)
    b.add_argument("--batches", default="64,256")
    b.add_argument("--iters", type=int, default=20, help="iterations per engine per round")
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument("--no-torch", dest="torch", action="store_false")
    b.add_argument("--torch-compile-batches", default="256",
                   help="batches at which torch.compile runs (each compiles anew)")
    b.add_argument("--torch-compile-timeout", type=int, default=120)
    b.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 peak of the device (default: the datasheet table)")
    s = sub.add_parser("summary")
    s.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.cmd == "summary":
        print(summary_markdown(summarise(args.out)))
        return 0
    args.batches = [int(x) for x in args.batches.split(",") if x]
    args.torch_compile_batches = [int(x) for x in args.torch_compile_batches.split(",") if x]
    bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
