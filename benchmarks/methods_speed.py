"""Every attack method against its PyTorch original at the task's real sizes (issue 26).

    python -m benchmarks.methods_speed --json PATH [--only pgd,ace] [--smoke] [--ttp-n 64]
        [--ttp-steps-cap N] [--batch 8] [--steps 10] [--rounds 3] [--no-ttp] [--no-peak]
        [--peak-only]
    python -m benchmarks.methods_speed --merge A.json B.json ... --json OUT

One row per method (STAND-IN judges: random weights, speed only):

* ResNet-50-Places365 at 256x256: FGSM, I-FGSM, PGD, PGD-L2, MI-FGSM, MI-FGSM+DI+TI+VMI,
  C&W-L2, ACE, PerC-AL, Square;
* KonCept512 at 512x384: camouflage, the organisers' I-FGSM baseline and ppjax's JPEG-EOT
  default (both against the organisers' I-FGSM);
* PGD with NIMA's appeal term (ResNet-50 + NIMA MobileNetV2).

The torch originals are in :mod:`benchmarks.torch_originals`; the measurement (engines,
interleaved rounds, peak FLOP/s, XLA cost analysis) is :mod:`ppjax.bench`'s, shared with
``ppjax bench``. Fields per row:

* ``ratio_vs_torch``: steady-state img·it/s, ppjax over torch (every image runs every
  iteration on both sides; medians of interleaved rounds);
* ``ratio_vs_torch_judged``: the same with the original's call followed by one forward
  pass on its result, the judgement every ppjax call makes to report success (for a one-step
  method a third of the passes); ``ratio_ttp_judged``: ``ratio_ttp`` with the original's
  success judgement (its rounding and forward passes, timed apart) added to its time;
* ``ratio_ttp_cached`` (``--ttp-cached``): ``ratio_ttp`` with ppjax's programs loaded from a
  JAX persistent compilation cache that an earlier run filled (``ppjax protect`` keeps one by
  default, so every run after the first on a machine compiles nothing);
* ``ratio_ttp``: wall time to protect ``--ttp-n`` (64) real photos in a fresh process each,
  compilation included, torch over ppjax; each side with its own stopping rule (ppjax through
  ``ppjax.stream`` with the preset's early stop, the original as written); ``--ttp-steps-cap``
  caps the step budget of both (PerC-AL's 1000 and Square's 5000 take hours at 256x256 on a
  small CPU); the row records the budget that ran;
* ``compile_s`` (ppjax's first call minus a warm one), ``peak_rss_mib`` (the TTP process's
  peak RSS; both sides).

The ``peak`` section: the attainable FLOP/s (bf16 and f32 GEMMs through torch = oneDNN/MKL and
through XLA), the FLOPs of one PGD iteration per image from XLA's cost analysis, and
``peak_fraction`` = achieved / attainable for ppjax's PGD on ResNet-50, NIMA MobileNetV2 and
KonCept512 (whole calls of ``--steps`` iterations), and ``peak_fraction_marginal`` (the
iterations alone: the time a call of twice the iterations adds; a call's clean and final
judgements are not iterations), and ``peak_fraction_onednn_bound`` (the same FLOPs over the
time of the iteration's oneDNN primitives alone, each timed on its shapes: the ceiling those
kernels put on the iteration, :func:`ppjax.bench.onednn_only`). ``--merge`` writes one result
from the rows of several runs (one row per method, the later file's winning; the peak section of
the last file that has one), each row keeping its run's date and CPU. Writes the RESULTS.md
section ``methods_speed`` (not with ``--smoke``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import _results
from ppjax import bench

RESNET, KONCEPT, NIMA = "resnet50_places365", "koncept512", "nima_mobilenetv2"


@dataclasses.dataclass(frozen=True)
class Method:
    """A row: ``attack`` (name or name/preset) on ``judge``; ``settings`` go to ppjax.attack
    in both measurements, ``ttp_settings`` to the time-to-protect run only (the original's
    stopping rule where ppjax's preset has another); ``appeal``: the appeal judge's name."""

    key: str
    attack: str
    judge: str = RESNET
    settings: tuple = ()
    ttp_settings: tuple = ()
    appeal: str | None = None
    original: str = ""
    #: also time the original followed by one forward pass on its result (what each ppjax
    #: call includes to report success): ``ratio_vs_torch_judged``
    judged: bool = True


METHODS = [
    Method("fgsm", "fgsm", original="torchattacks FGSM"),
    Method("ifgsm", "ifgsm", original="torchattacks BIM"),
    Method("pgd", "pgd", original="torchattacks PGD"),
    Method("pgd_l2", "pgd_l2", original="torchattacks PGDL2"),
    Method("mifgsm", "mifgsm", original="torchattacks MIFGSM"),
    # DI+TI+VMI without SGM (sgm_gamma 1 = off): what torchattacks can compose
    Method("mifgsm_di_ti_vmi", "mifgsm/all", settings=(("sgm_gamma", 1.0),),
           original="torchattacks TIFGSM + VMIFGSM's variance term"),
    # torchattacks' CW has no binary search over c: one round on both sides. It returns when
    # the batch's cost rose at a check (every steps // 10), as Carlini's abort_early does; the
    # time to protect runs ppjax's per-image form of that rule (plateau, off in the preset)
    Method("cw_l2", "cw_l2", settings=(("search_steps", 1),), ttp_settings=(("plateau", 10),),
           original="torchattacks CW (its abort off for throughput: CWEveryStep)"),
    Method("ace", "ace", original="tests/torch_attack_ref.py ace (BMVC)"),
    Method("perc_al", "perc_al", original="tests/torch_attack_ref.py perc_al"),
    Method("square", "square", original="torchattacks Square (Linf)"),
    Method("camouflage_pp2020", "camouflage/pp2020_baseline", judge=KONCEPT,
           original="organisers' I-FGSM (2020)"),
    Method("camouflage_jpeg_eot", "camouflage", judge=KONCEPT,
           original="organisers' I-FGSM (2020)"),
    Method("pgd_appeal", "pgd", appeal=NIMA, original="torch PGD on CE - 0.5 NIMA mean"),
]
# KonCept512 (InceptionResNetV2) needs an 8x8 final map: ~299 px at least
SMOKE_HW = {RESNET: (64, 64), KONCEPT: (320, 320), NIMA: (96, 96)}


def _judges(args, weights: str, judge: str, appeal: str | None):
    """``(judge, appeal judge or None)``, stand-ins, at the smoke size under ``--smoke``."""
    out = []
    for name in (judge, appeal):
        if name is None:
            out.append(None)
            continue
        s = bench.BenchSettings(judge=name, standin=True, weights_dir=weights,
                                size=SMOKE_HW[name] if args.smoke else None)
        out.append(bench.load_bench_judge(s))
    return out


def _budget(m: Method, cap: int | None) -> int:
    from ppjax.attacks import resolve_attack

    steps = resolve_attack(*bench.parse_attack(m.attack)).steps
    return min(steps, cap) if cap else steps


# ----------------------------------------------------------------------------- throughput


def throughput(m: Method, args, weights: str, dtype: str) -> dict:
    """Steady-state img·it/s of ppjax and the torch original, interleaved; compile seconds."""
    import jax.numpy as jnp

    from benchmarks import torch_originals

    judge, nima = _judges(args, weights, m.judge, m.appeal)
    batch = args.batch or (2 if m.judge == KONCEPT else 8)
    x, labels = bench.bench_inputs(judge, batch)
    kw = dict(m.settings)
    if nima is not None:
        kw["appeal_judge"] = nima
    print(f"[{m.key}] compiling ppjax ...", flush=True)
    _onednn_cache(reset=True)  # the previous rows' reordered weights go (as in a fresh process)
    ours = bench.ppjax_engine(m.attack, judge, x, labels, steps=args.steps,
                              dtype=jnp.dtype(dtype), **kw)
    print(f"[{m.key}] preparing torch ...", flush=True)
    theirs = torch_originals.engine(m.attack, m.judge, judge, x, labels, args.steps,
                                    appeal=(m.appeal, nima) if m.appeal else None)
    judged = [torch_originals.engine(m.attack, m.judge, judge, x, labels, args.steps,
                                     appeal=(m.appeal, nima) if m.appeal else None,
                                     judged=True)] if m.judged else []
    warm = _onednn_cache()
    times = bench.interleaved([ours, theirs, *judged], args.rounds)
    steady = _onednn_cache()
    a, b = bench.summarise(ours, times[ours.name]), bench.summarise(theirs, times[theirs.name])
    print(f"[{m.key}] ppjax {a['img_it_per_s']:.3g} img·it/s, torch {b['img_it_per_s']:.3g}",
          flush=True)
    extra = {}
    if judged:
        c = bench.summarise(judged[0], times[judged[0].name])
        extra = {"torch_judged_img_it_per_s": c["img_it_per_s"],
                 "ratio_vs_torch_judged": a["img_it_per_s"] / c["img_it_per_s"]}
    return {"batch": batch, "hw": list(judge.spec.input_hw), "ppjax_img_it_per_s":
            a["img_it_per_s"], "torch_img_it_per_s": b["img_it_per_s"], **extra,
            "ratio_vs_torch": a["img_it_per_s"] / b["img_it_per_s"], "compile_s": a["compile_s"],
            "torch_first_call_extra_s": b["compile_s"],
            # weight reorders during the timed rounds (0 unless the cache thrashes)
            "onednn_steady_reorders": steady["misses"] - warm["misses"] if steady else None}


def _onednn_cache(reset: bool = False) -> dict | None:
    """oneDNN's reordered-weight cache counters (None without oneDNN)."""
    from ppjax.accel import onednn

    return onednn.weight_cache_stats(reset) if onednn.available() else None


# ----------------------------------------------------------------------------- time to protect


def _ttp_ppjax(m: Method, judge, nima, photos, batch: int, steps: int, dtype: str):
    import jax.numpy as jnp

    import ppjax

    name, preset = bench.parse_attack(m.attack)
    kw = {**dict(m.settings), **dict(m.ttp_settings)}
    if nima is not None:
        kw["appeal_judge"] = nima
    items = [ppjax.StreamItem(key=i, image=im, seed=i) for i, im in enumerate(photos)]
    t = time.perf_counter()
    res = dict(ppjax.stream(name, judge, items, preset=preset, slots=batch, steps=steps,
                            dtype=jnp.dtype(dtype), **kw))
    sec = time.perf_counter() - t
    return sec, float(np.mean([bool(r.success) for r in res.values()])), 0.0  # judged inside


def _ttp_torch(m: Method, judge, nima, photos, batch: int, steps: int):
    import torch

    from benchmarks import torch_originals

    model = torch_originals.torch_judge(m.judge, judge)
    tn = torch_originals.torch_judge(m.appeal, nima) if nima is not None else None
    xt = torch.from_numpy(np.ascontiguousarray(photos.transpose(0, 3, 1, 2)))
    t = time.perf_counter()
    fn = torch_originals.attack_fn(m.attack, model, steps, early_stop=True, appeal=tn)
    with torch.no_grad():
        labels = torch.cat([model(xt[s:s + batch]).argmax(-1) for s in range(0, len(xt), batch)])
    advs = [fn(xt[s:s + batch], labels[s:s + batch]) for s in range(0, len(xt), batch)]
    sec = time.perf_counter() - t
    with torch.no_grad():  # the judgement ppjax's time includes (success), timed apart
        adv = torch.round(torch.cat(advs) * 255) / 255
        if m.judge == KONCEPT:
            ok = model(adv).reshape(-1) < 50.0
        else:
            ok = torch.cat([model(adv[s:s + batch]).argmax(-1) for s in range(0, len(adv),
                                                                             batch)]) != labels
    return sec, float(ok.float().mean()), time.perf_counter() - t - sec


def ttp_child(key: str, side: str, args) -> dict:
    """Run in a fresh process: protect ``--ttp-n`` photos with one side; time, success, peak RSS."""
    m = next(m for m in METHODS if m.key == key)
    weights = args.weights_dir
    judge, nima = _judges(args, weights, m.judge, m.appeal)
    photos = _results.shared_photos(args.ttp_n, tuple(judge.spec.input_hw))
    batch = args.batch or (2 if m.judge == KONCEPT else 8)
    steps = _budget(m, args.ttp_steps_cap)
    bench.reset_peak_rss()
    if side == "ppjax":
        sec, succ, judge_s = _ttp_ppjax(m, judge, nima, photos, batch, steps, args.dtype)
    else:
        sec, succ, judge_s = _ttp_torch(m, judge, nima, photos, batch, steps)
    return {"seconds": sec, "success": succ, "judge_seconds": judge_s, "steps_budget": steps,
            "peak_rss_mib": bench.peak_rss_mib()}


def _ttp_side(m: Method, args, weights: str, dtype: str, side: str, env=None) -> dict:
    """One side's time to protect, in a fresh process (``env``: its environment)."""
    cmd = [sys.executable, "-m", "benchmarks.methods_speed", "--_ttp", m.key, "--_side", side,
           "--weights-dir", weights, "--ttp-n", str(args.ttp_n), "--dtype", dtype]
    cmd += ["--batch", str(args.batch)] if args.batch else []
    cmd += ["--ttp-steps-cap", str(args.ttp_steps_cap)] if args.ttp_steps_cap else []
    cmd += ["--smoke"] if args.smoke else []
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.ttp_timeout, env=env)
    if p.returncode:
        raise RuntimeError(f"{side} TTP child failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def ttp(m: Method, args, weights: str, dtype: str) -> dict:
    out = {}
    for side in ("ppjax", "torch"):
        print(f"[{m.key}] time to protect {args.ttp_n} photos: {side} ...", flush=True)
        out[side] = _ttp_side(m, args, weights, dtype, side)
    cached = {}
    if args.ttp_cached:  # ppjax again, its programs from a persistent cache a first run filled
        with tempfile.TemporaryDirectory() as d:
            env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": d,
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
            print(f"[{m.key}] time to protect: ppjax, filling a compilation cache ...", flush=True)
            _ttp_side(m, args, weights, dtype, "ppjax", env)
            print(f"[{m.key}] time to protect: ppjax from the cache ...", flush=True)
            warm = _ttp_side(m, args, weights, dtype, "ppjax", env)
        cached = {"ttp_ppjax_cached_s": warm["seconds"],
                  "ratio_ttp_cached": out["torch"]["seconds"] / warm["seconds"]}
    return {"ttp_ppjax_s": out["ppjax"]["seconds"], "ttp_torch_s": out["torch"]["seconds"],
            **cached,
            "ratio_ttp": out["torch"]["seconds"] / out["ppjax"]["seconds"],
            # the torch side with its success judged too, as ppjax's time always is
            "ratio_ttp_judged": (out["torch"]["seconds"] + out["torch"].get("judge_seconds", 0))
            / out["ppjax"]["seconds"],
            "ttp_success_ppjax": out["ppjax"]["success"],
            "ttp_success_torch": out["torch"]["success"],
            "ttp_steps_budget": out["ppjax"]["steps_budget"],
            **({"ttp_settings": dict(m.ttp_settings)} if m.ttp_settings else {}),
            "peak_rss_mib": out["ppjax"]["peak_rss_mib"],
            "peak_rss_mib_torch": out["torch"]["peak_rss_mib"]}


# ----------------------------------------------------------------------------- distance to the limit


def peak(args, weights: str, dtype: str) -> dict:
    """Attainable FLOP/s (GEMMs) and ppjax PGD's share of it on the three judges. PGD on the
    score judges is the same L-inf sign step on the score (``ifgsm_score``, no random start)."""
    gemm = {dt: bench.gemm_peak(dt, args.gemm_n) for dt in ("bfloat16", "float32")}
    rows = []
    for name in (RESNET, NIMA, KONCEPT):
        try:
            rows += _peak_rows(args, weights, dtype, name, gemm)
        except Exception as e:  # reported in the section; the other judges run
            rows.append({"judge": name, "error": f"{type(e).__name__}: {str(e)[-300:]}"})
        _release()
    return {"gemm": gemm, "rows": rows}


def _peak_rows(args, weights: str, dtype: str, name: str, gemm: dict) -> list[dict]:
    """PGD's img·it/s and share of the GEMM peak on judge ``name``, in ``dtype`` and float32."""
    rows = []
    judge, _ = _judges(args, weights, name, None)
    batch = args.batch or (2 if name == KONCEPT else 8)
    flops = bench.iteration_flops(judge, min(batch, 2))
    x, labels = bench.bench_inputs(judge, batch)
    attack = "pgd" if judge.spec.output == "logits" else "ifgsm_score"
    for dt in dict.fromkeys((dtype, "float32")):
        print(f"[peak] {name} {attack} {dt} ...", flush=True)
        eng = bench.ppjax_engine(attack, judge, x, labels, steps=args.steps, dtype=dt)
        # the same call with twice the iterations: the difference is the cost of the
        # iterations alone, without the call's fixed judgements (clean and final)
        eng2 = bench.ppjax_engine(attack, judge, x, labels, steps=2 * args.steps, dtype=dt,
                                  label=f"ppjax {attack} x2")
        times = bench.interleaved([eng, eng2], args.rounds)
        r = bench.summarise(eng, times[eng.name])
        extra = float(np.median(times[eng2.name])) - r["seconds_per_call"]
        marginal = batch * args.steps / extra if extra > 0 else None
        achieved = r["img_it_per_s"] * flops
        peak_flops = gemm[dt]["flops_per_s"]
        try:  # the oneDNN kernels alone: the most this iteration could reach with them
            alone = bench.onednn_only(judge, batch, dt)
            bound = {"onednn_only_img_it_per_s": 1 / alone["seconds_per_img_it"],
                     "onednn_calls": alone["calls"],
                     "conv_gflop_per_img_it": alone["conv_gflop_per_img_it"],
                     "peak_fraction_onednn_bound": flops / alone["seconds_per_img_it"]
                     / peak_flops}
        except Exception as e:  # no extension here: the row stands without the bound
            bound = {"onednn_only_error": f"{type(e).__name__}: {str(e)[-200:]}"}
        rows.append({"judge": name, "hw": list(judge.spec.input_hw), "dtype": dt,
                     "batch": batch, "img_it_per_s": r["img_it_per_s"],
                     "gflop_per_img_it": flops / 1e9, "achieved_gflop_s": achieved / 1e9,
                     "peak_gflop_s": peak_flops / 1e9,
                     "peak_fraction": achieved / peak_flops,
                     "marginal_img_it_per_s": marginal,
                     "peak_fraction_marginal": marginal * flops / peak_flops if marginal
                     else None, **bound})
    return rows


# ----------------------------------------------------------------------------- report


def _f(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _markdown(payload: dict) -> str:
    meta, a = payload["machine"], payload["args"]
    head = (f"**STAND-IN judges (random weights): speed only.** Measured {meta['date']} on "
            f"**{meta['cpu'].get('model')}** ({meta['cpus']} CPUs), jax {meta['jax']}, ppjax in "
            f"{payload['dtype']}, torch {payload['torch_dtype']} channels-last; {a['steps']} "
            f"iterations per timed call, median of {a['rounds']} interleaved rounds; time to "
            f"protect {a['ttp_n']} real photos in a fresh process per side, compilation included"
            + (" (each row's step budget in the TTP budget column)" if payload.get("merged_from")
               else f", step budgets capped at {a['ttp_steps_cap']}" if a["ttp_steps_cap"]
               else "")
            + f".{' SMOKE RUN (tiny sizes).' if a['smoke'] else ''}\n\n")

    def when(r):
        m = r.get("measured") or {"throughput": r["machine"]}
        t, p = m["throughput"], m.get("ttp")
        out = f"{r['key']} {t['date']} {t['cpu'].get('model')}"
        if p and (p["date"], p["cpu"].get("model")) != (t["date"], t["cpu"].get("model")):
            out += f" (TTP {p['date']} {p['cpu'].get('model')})"
        return out

    if payload.get("merged_from"):
        head += ("Merged from " + ", ".join(f"`{f}`" for f in payload["merged_from"])
                 + " (`--merge`); each row's date and CPU: "
                 + "; ".join(when(r) for r in payload["rows"] if r.get("machine")) + ".\n\n")
    rows = [[r["key"], f"{r['judge']} {'x'.join(map(str, r.get('hw', [])))}", r.get("batch", "-"),
             r["original"], r.get("ppjax_img_it_per_s", "-"), r.get("torch_img_it_per_s", "-"),
             r.get("ratio_vs_torch", "-"), r.get("compile_s", "-"), r.get("ratio_ttp", "-"),
             r.get("ttp_steps_budget", "-"),
             f"{_f(r.get('ttp_success_ppjax'), '.2f')} / {_f(r.get('ttp_success_torch'), '.2f')}",
             f"{_f(r.get('peak_rss_mib'), '.0f')} / {_f(r.get('peak_rss_mib_torch'), '.0f')}",
             r.get("error", "")] for r in payload["rows"]]
    md = head + _results.markdown_table(
        ["method", "judge HxW", "batch", "torch original", "ppjax img·it/s", "torch img·it/s",
         "**ratio_vs_torch**", "compile_s", "**ratio_ttp**", "TTP budget",
         "TTP success ppjax / torch", "peak_rss_mib ppjax / torch", "error"], rows)
    judged = [f"{r['key']} {_f(r.get('ratio_vs_torch_judged'), '.2f')} / "
              f"{_f(r.get('ratio_ttp_judged'), '.2f')}" for r in payload["rows"]
              if r.get("ratio_vs_torch_judged") or r.get("ratio_ttp_judged")]
    if judged:
        md += ("\n\nWith the original's result judged too (one forward pass, as every ppjax call "
               "does to report success), `ratio_vs_torch_judged` / `ratio_ttp_judged`: "
               + "; ".join(judged) + ".")
    cached = [f"{r['key']} {r['ratio_ttp_cached']:.2f} ({r['ttp_ppjax_cached_s']:.1f} s against "
              f"{r['ttp_ppjax_s']:.1f} s cold)" for r in payload["rows"]
              if r.get("ratio_ttp_cached")]
    if cached:
        md += ("\n\nWith ppjax's compiled programs from a persistent cache an earlier run filled "
               "(`ppjax protect`'s default: every run after the first), `ratio_ttp_cached`: "
               + "; ".join(cached) + ".")
    pk = payload.get("peak")
    if pk:
        g = pk["gemm"]
        md += (f"\n\nAttainable peak: bf16 {g['bfloat16']['flops_per_s'] / 1e9:.0f} GFLOP/s "
               f"({g['bfloat16']['via']}), f32 {g['float32']['flops_per_s'] / 1e9:.0f} GFLOP/s "
               f"({g['float32']['via']}), {g['float32']['n']}^3 GEMMs. FLOPs per iteration from "
               "XLA's cost analysis of the compiled forward + input gradient.\n\n")
        md += _results.markdown_table(
            ["judge HxW", "dtype", "batch", "img·it/s", "GFLOP / img·it", "achieved GFLOP/s",
             "peak GFLOP/s", "**peak_fraction**", "marginal img·it/s",
             "peak_fraction_marginal", "oneDNN alone img·it/s", "peak_fraction_onednn_bound"],
            [[f"{r['judge']} {'x'.join(map(str, r['hw']))}", r["dtype"], r["batch"],
              r["img_it_per_s"], r["gflop_per_img_it"], r["achieved_gflop_s"], r["peak_gflop_s"],
              r["peak_fraction"], r.get("marginal_img_it_per_s", "-"),
              r.get("peak_fraction_marginal", "-"), r.get("onednn_only_img_it_per_s", "-"),
              r.get("peak_fraction_onednn_bound", "-")]
             if "error" not in r else [r["judge"], r["error"]] + ["-"] * 10
             for r in pk["rows"]])
        md += ("\n\n`peak_fraction`: img·it/s of whole calls of "
               f"{a['steps']} iterations (the clean judgement and the final one included). "
               "`peak_fraction_marginal`: the iterations alone, from the time a call of twice "
               "the iterations adds. `peak_fraction_onednn_bound`: the oneDNN primitives of one "
               "iteration (every convolution's forward and input gradient, the pooling), each "
               "timed alone on its shapes and summed: the share of the peak the iteration would "
               "reach if everything else took no time.")
    return md


TTP_FIELDS = ("ttp_ppjax_s", "ttp_torch_s", "ratio_ttp", "ratio_ttp_judged", "ttp_ppjax_cached_s",
              "ratio_ttp_cached", "ttp_success_ppjax",
              "ttp_success_torch", "ttp_steps_budget", "ttp_settings", "peak_rss_mib",
              "peak_rss_mib_torch")


def merge(payloads: list[dict]) -> dict:
    """One payload from several runs' (see the module doc); refuses runs of other settings
    (steps, rounds, batch, ttp_n, dtype) or a smoke run. A later run's row replaces an earlier
    one's fields; a row run without the time to protect (``--no-ttp``) keeps the earlier row's
    TTP fields, and ``measured`` says which run (date, CPU) gave the throughput and which the
    TTP. Runs may differ in ``--ttp-steps-cap``: each row records the budget it ran."""
    if not payloads:
        raise ValueError("merge: no results")
    same = ("steps", "rounds", "batch", "ttp_n", "smoke")
    keys = {tuple(p["args"].get(k) for k in same) + (p["dtype"],) for p in payloads}
    if len(keys) > 1:
        raise ValueError(f"merge: the runs differ in {same + ('dtype',)}: {sorted(keys, key=str)}")
    rows = {}
    for p in payloads:
        for r in p["rows"]:
            machine = r.get("machine", p["machine"])
            prev = rows.get(r["key"], {})
            kept = {k: v for k, v in prev.items() if k in TTP_FIELDS} \
                if "ratio_ttp" not in r and "error" not in r else {}
            measured = {"throughput": machine,
                        "ttp": machine if "ratio_ttp" in r else
                        prev.get("measured", {}).get("ttp") if kept else None}
            rows[r["key"]] = {**r, **kept, "machine": machine, "measured": measured}
    order = [m.key for m in METHODS]
    out = {**payloads[-1], "rows": sorted(rows.values(), key=lambda r: order.index(r["key"])),
           "merged_from": _results.merged_sources(payloads)}
    peaks = [p["peak"] for p in payloads if p.get("peak")]
    out.pop("peak", None)
    if peaks:
        out["peak"] = peaks[-1]
    return out


def _row(m: Method, args, weights: str, dtype: str) -> dict:
    row = {"key": m.key, "attack": m.attack, "judge": m.judge, "original": m.original,
           "appeal": m.appeal, "standin": True, "machine": _results.machine()}
    try:
        row.update(throughput(m, args, weights, dtype))
        if args.ttp:
            row.update(ttp(m, args, weights, dtype))
    except Exception as e:  # one method's failure is reported in its row; the others run
        row["error"] = f"{type(e).__name__}: {str(e)[-500:]}"
        print(f"[{m.key}] failed: {row['error']}", file=sys.stderr, flush=True)
    _release()
    return row


def _release() -> None:
    """Drop the finished row's compiled programs and arrays: one process runs every row, and
    a shared machine's memory is not the benchmark's to hold (peak RSS is measured per row in
    fresh processes anyway)."""
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--only", default=None, help=f"comma-separated keys of {[m.key for m in METHODS]}")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, 2 steps, 1 round, 2 photos: checks that every row runs")
    p.add_argument("--batch", type=int, default=None, help="images per call (default 8; KonCept 2)")
    p.add_argument("--steps", type=int, default=10, help="iterations per timed call")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--ttp-n", type=int, default=64, help="photos to protect for ratio_ttp")
    p.add_argument("--ttp-steps-cap", type=int, default=None,
                   help="cap on every method's step budget in the TTP runs (both sides)")
    p.add_argument("--ttp-timeout", type=int, default=6 * 3600, help="seconds per TTP process")
    p.add_argument("--no-ttp", dest="ttp", action="store_false", help="skip ratio_ttp")
    p.add_argument("--ttp-cached", action="store_true",
                   help="also ratio_ttp_cached: ppjax's time to protect with its compiled programs "
                        "in a persistent cache (as every `ppjax protect` after the first run)")
    p.add_argument("--no-peak", dest="peak", action="store_false", help="skip peak_fraction")
    p.add_argument("--peak-only", action="store_true", help="only the peak section, no row")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="no run: merge these results into one (--json, RESULTS.md)")
    p.add_argument("--gemm-n", type=int, default=4096, help="side of the peak GEMMs")
    p.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--weights-dir", default=None, help="stand-in weights (default: a temp dir)")
    p.add_argument("--no-results-md", dest="results_md", action="store_false")
    p.add_argument("--_ttp", default=None, help=argparse.SUPPRESS)
    p.add_argument("--_side", default=None, help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.smoke:
        args.steps, args.rounds = min(args.steps, 2), 1
        args.ttp_n, args.ttp_steps_cap, args.gemm_n = min(args.ttp_n, 2), 2, 1024
        args.batch = args.batch or 2
    if args.merge:
        try:
            payload = merge(_results.load_results(args.merge))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: --merge: {type(e).__name__}: {e}", file=sys.stderr)
            return 2
        _results.write_json(args.json, payload)
        md = _markdown(payload)
        print(md)
        if args.results_md and not payload["args"]["smoke"]:
            _results.update_section("methods_speed", md)
        return 0
    args.weights_dir = args.weights_dir or tempfile.mkdtemp(prefix="ppjax-methods-speed-")
    args.dtype = args.dtype or bench.best_dtype()
    if args._ttp:
        print(json.dumps(ttp_child(args._ttp, args._side, args)))
        return 0
    only = set(args.only.split(",")) if args.only else None
    if only and (bad := only - {m.key for m in METHODS}):
        print(f"error: --only: unknown methods {sorted(bad)}", file=sys.stderr)
        return 2
    payload = {"machine": _results.machine(), "args": vars(args), "dtype": args.dtype,
               "torch_dtype": "bf16 autocast" if args.dtype == "bfloat16" else "f32",
               "standin": True, "rows": []}
    for m in [] if args.peak_only else METHODS:
        if only is None or m.key in only:
            payload["rows"].append(_row(m, args, args.weights_dir, args.dtype))
            _results.write_json(args.json, payload)
    if args.peak:
        payload["peak"] = peak(args, args.weights_dir, args.dtype)
    _results.write_json(args.json, payload)
    md = _markdown(payload)
    print(md)
    if args.results_md and not args.smoke:
        _results.update_section("methods_speed", md)
    return 1 if any("error" in r for r in payload["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
