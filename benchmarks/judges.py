"""Judges: speed and parity of every ppjax judge beside its PyTorch (or Keras) replica, one run.

For each judge of :data:`ppjax.judges.JUDGES` the replica that the parity tests use is built with
random weights and randomised BatchNorm statistics, saved in the original checkpoint layout and
converted by the real converter; ppjax then loads the converted judge. Both engines run on the
same batch of real photos (``tests.conftest.photos_at``), which gives:

* parity: max |output diff| (logits, score, or probabilities and their mean score) between ppjax
  and the replica, for ppjax float32 and bfloat16 (and torch's own bf16 autocast vs its f32);
* forward img/s, and attack img·it/s where one attack iteration = forward + the gradient of the
  loss w.r.t. the input image (cross-entropy on the labels for a classifier, the score for a
  score or distribution judge); also per CPU-second of the process, which is steadier than
  wall-clock on a shared machine;
* JAX compile time (``lower`` + ``compile``), apart from the steady state (warm-up call, then
  timed calls, each ended by ``block_until_ready``).

Engines: ppjax ``jax.jit`` f32 and bf16 (``judge.with_dtype(jnp.bfloat16)``), the same through
``ppjax.accel.onednn.accelerate`` (BatchNorm folded, convolutions on oneDNN); torch eager f32 and
torch eager channels-last bf16 autocast (``torch.set_num_threads(os.cpu_count())``). The organisers'
NIMA is a Keras model with no torch replica: its reference is Keras 3 on the JAX backend (the
model's ``stateless_call`` under ``jax.jit``), labelled as such. ``OMP_WAIT_POLICY`` defaults to
``PASSIVE`` here: torch's spin-waiting OpenMP threads collapse on a machine shared with other
work. Engines of a judge run in interleaved rounds so that other load on the machine slows them
alike; figures are medians over rounds. Weights are random replicas: the figures measure speed
and parity only, never accuracy.

    python -m benchmarks.judges --json out.json [--judges resnet50_places365,koncept512]
        [--batch N] [--iters 1] [--rounds 2] [--no-torch-bf16] [--no-results-md]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import _results

# Per-judge default batch: KonCept512 runs at 384x512 (about 2.5x the pixels of the others).
DEFAULT_BATCH = {"koncept512": 2}
FALLBACK_BATCH = 8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass
class Engine:
    """One way of running a judge on a fixed batch ``x01: [B, H, W, 3] float32 in [0, 1]``.

    ``forward()`` returns the output as numpy (``[B, C]`` logits or probabilities, ``[B]`` or
    ``[B, 1]`` score); ``attack()`` computes the input gradient ``[B, H, W, 3]``; both block until
    the result is ready. ``reference`` marks the engine that ratios are taken against.
    """

    name: str
    family: str  # "ppjax" | "torch" | "keras"
    forward: Callable[[], Any]
    attack: Callable[[], Any]
    to_numpy: Callable[[Any], np.ndarray]
    compile_forward_s: float | None = None  # jax lower + compile
    compile_attack_s: float | None = None
    first_call_s: float | None = None  # eager engines: first forward + attack (no compilation)
    reference: bool = False


@dataclasses.dataclass
class Replica:
    """The reference model of one judge and the directory its converted weights were saved in."""

    engines: list[Engine]
    weights_dir: Path
    description: str
    labels: np.ndarray | None  # [B] int, the classifier's labels for the CE attack loss


# --------------------------------------------------------------------------- timing helpers

def _timed(fn: Callable[[], Any], iters: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call, over ``iters`` calls."""
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - w0) / iters, (time.process_time() - c0) / iters


def _score_np(out: np.ndarray, output: str) -> np.ndarray | None:
    """Scalar score per image [B] from a judge output, or None for logits."""
    out = np.asarray(out, np.float64)
    if output == "score":
        return out.reshape(out.shape[0])
    if output == "distribution":
        return (out * np.arange(1, out.shape[-1] + 1)).sum(-1)
    return None


# --------------------------------------------------------------------------- ppjax engines

def jax_engines(judge, x01: np.ndarray, labels: np.ndarray | None
                ) -> tuple[list[Engine], list[tuple[str, str]]]:
    """ppjax f32 and bf16, on XLA and through ``ppjax.accel.onednn``: jitted forward and jitted input
    gradient of the attack loss. Also returns ``(engine, why)`` for the engines this CPU cannot
    run (rows marked n/a)."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x01)
    y = jnp.asarray(labels if labels is not None else np.zeros(len(x01)), jnp.int32)

    def loss(j, x, y):
        if j.spec.output == "logits":
            logp = jax.nn.log_softmax(j(x).astype(jnp.float32), axis=-1)
            return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1))
        return jnp.sum(j.score(x))

    from ppjax.accel import onednn

    forward = jax.jit(lambda j, x: j(x))
    grad = jax.jit(jax.grad(loss, argnums=1))
    variants = [("jit f32", judge.with_dtype(jnp.float32)),
                ("jit bf16", judge.with_dtype(jnp.bfloat16))]
    caps, not_run = onednn.capabilities(), []
    if caps.available:  # BatchNorm folded, convolutions through oneDNN (AMX in bf16)
        variants.append(("oneDNN f32", onednn.accelerate(judge, dtype=jnp.float32)))
        if caps.native(jnp.bfloat16):
            variants.append(("oneDNN bf16", onednn.accelerate(judge, dtype=jnp.bfloat16)))
        else:
            not_run.append(("ppjax oneDNN bf16", "n/a (no native bf16)"))
    else:
        print(f"  oneDNN engines skipped: {caps.reason}", file=sys.stderr)
        not_run += [(f"ppjax oneDNN {d}", "n/a (oneDNN unavailable)") for d in ("f32", "bf16")]
    engines = []
    for label, j in variants:
        t0 = time.perf_counter()
        fwd = forward.lower(j, x).compile()
        t1 = time.perf_counter()
        att = grad.lower(j, x, y).compile()
        t2 = time.perf_counter()
        engines.append(Engine(
            name=f"ppjax {label}", family="ppjax",
            forward=lambda fwd=fwd, j=j: fwd(j, x).block_until_ready(),
            attack=lambda att=att, j=j: att(j, x, y).block_until_ready(),
            to_numpy=np.asarray, compile_forward_s=t1 - t0, compile_attack_s=t2 - t1))
    return engines, not_run


# --------------------------------------------------------------------------- torch engines

def _torch_x01_wrapper(net, mean, std, channels_last: bool):
    """``x01: [B, H, W, 3]`` in [0, 1] -> the replica's output; normalisation inside, like a
    ppjax judge, so the input gradient is w.r.t. the same pixels."""
    import torch

    class X01(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x):
            x = x.permute(0, 3, 1, 2)  # NHWC storage viewed as NCHW is already channels-last
            if not channels_last:
                x = x.contiguous()
            return self.net((x - self.mean) / self.std)

    return X01().eval()


def torch_engines(net, mean, std, x01: np.ndarray, labels: np.ndarray | None, output: str,
                  bf16: bool) -> list[Engine]:
    """torch eager f32 (the reference) and, if ``bf16``, channels-last bf16 autocast."""
    import copy

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.from_numpy(np.ascontiguousarray(x01))
    y = torch.from_numpy(labels if labels is not None else np.zeros(len(x01), np.int64)).long()
    bins = torch.arange(1, 11, dtype=torch.float32)
    engines = []
    for name, cl in (("torch eager f32", False), ("torch eager channels-last bf16", True)):
        if cl and not bf16:
            continue
        model = _torch_x01_wrapper(copy.deepcopy(net) if cl else net, mean, std, cl)
        if cl:
            model = model.to(memory_format=torch.channels_last)
        for p in model.parameters():
            p.requires_grad_(False)

        def run(x, model=model, cl=cl):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cl):
                return model(x).float()

        def forward(run=run):
            with torch.inference_mode():
                return run(x)

        def attack(run=run):
            xg = x.detach().requires_grad_(True)
            out = run(xg)
            if output == "logits":
                loss = torch.nn.functional.cross_entropy(out, y, reduction="sum")
            elif output == "distribution":
                loss = (out * bins).sum()
            else:
                loss = out.sum()
            return torch.autograd.grad(loss, xg)[0]

        t0 = time.perf_counter()
        forward()
        attack()
        engines.append(Engine(name=name, family="torch", forward=forward, attack=attack,
                              to_numpy=lambda t: t.detach().numpy(),
                              first_call_s=time.perf_counter() - t0, reference=not cl))
    return engines


# --------------------------------------------------------------------------- replicas

def _convert(converter, src: Path, wd: Path) -> None:
    converter.convert(src, weights_dir=wd)


def replica_resnet50_places365(x01, wd: Path, args) -> Replica:
    import torch

    from benchmarks.torch_ref.resnet import randomize, resnet50
    from ppjax.convert import resnet50_places365

    torch.manual_seed(0)
    net = randomize(resnet50(365), seed=1).eval()
    src = wd / "resnet50_places365.pth.tar"
    torch.save(resnet50_places365.csail_layout(net.state_dict()), src)
    _convert(resnet50_places365, src, wd)
    with torch.no_grad():
        xt = torch.from_numpy(((x01 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD))
                              .transpose(0, 3, 1, 2).copy())
        labels = net(xt).argmax(-1).numpy()  # attack the replica's own top-1, as on real data
    return Replica(torch_engines(net, IMAGENET_MEAN, IMAGENET_STD, x01, labels, "logits",
                                 args.torch_bf16), wd,
                   "tests/torch_ref/resnet.py resnet50(365) + randomize(seed=1), CSAIL layout",
                   labels)


def replica_koncept512(x01, wd: Path, args) -> Replica:
    import torch

    from benchmarks.torch_ref.inception_resnet_v2 import KonCept512, randomize, spread_scores
    from ppjax.convert import koncept512
    from tests.conftest import photos_at

    torch.manual_seed(0)
    net = randomize(KonCept512(), seed=1).eval()
    # As in tests/test_koncept.py: rescale the last Linear so real photos score ~50 +- 10 (MOS
    # scale), or score differences would have no meaningful unit. Calibrated on the benchmark's
    # photos (at least 2, since a spread needs two scores).
    calib = x01 if len(x01) >= 2 else photos_at(_results.shared_photo_paths(), (384, 512), 2)
    with torch.no_grad():
        _, feats = net(torch.from_numpy(((calib - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()),
                       capture=True)
        spread_scores(net, feats["head_in"])
    src = wd / "KonCept512.pth"
    torch.save(koncept512.plain_layout(net.state_dict()), src)
    _convert(koncept512, src, wd)
    return Replica(torch_engines(net, (0.5,) * 3, (0.5,) * 3, x01, None, "score",
                                 args.torch_bf16), wd,
                   "tests/torch_ref/inception_resnet_v2.py KonCept512 + randomize(seed=1) + "
                   "spread_scores (MOS 50 +- 10), KonCept512.pth layout", None)


def replica_nima_mobilenetv2(x01, wd: Path, args) -> Replica:
    import torch

    from benchmarks.torch_ref.mobilenet_v2 import NIMA
    from ppjax.convert import nima_mobilenetv2
    from tests.test_nima import _replica_state_dict

    sd = _replica_state_dict(seed=3)
    net = NIMA()
    net.load_state_dict(sd, strict=True)
    net.eval()
    src = wd / "nima224.pth"
    torch.save(sd, src)
    _convert(nima_mobilenetv2, src, wd)
    return Replica(torch_engines(net, IMAGENET_MEAN, IMAGENET_STD, x01, None, "distribution",
                                 args.torch_bf16), wd,
                   "tests/torch_ref/mobilenet_v2.py NIMA + tests.test_nima._replica_state_dict"
                   "(seed=3), nima224.pth layout", None)


def replica_nima_mobilenet(x01, wd: Path, args) -> Replica:
    """Keras 3 replica (JAX backend): its timing is Keras-on-JAX under ``jax.jit``, not torch."""
    import jax
    import jax.numpy as jnp

    from ppjax.convert import nima_keras
    from tests import keras_ref

    model = keras_ref.build_nima_keras()
    keras_ref.randomize(model, seed=1)
    src = wd / "nima_full.h5"
    model.save(src)
    _convert(nima_keras, src, wd)
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]

    def probs(tv, ntv, x01):
        out, _ = model.stateless_call(tv, ntv, (x01 * 255.0) / 127.5 - 1.0, training=False)
        return out

    def loss(tv, ntv, x01):
        return jnp.sum(probs(tv, ntv, x01) * jnp.arange(1, 11, dtype=jnp.float32))

    x = jnp.asarray(x01)
    # Keras' own ops broadcast implicitly; ppjax's strict rank promotion is not for them.
    with jax.numpy_rank_promotion("allow"):
        t0 = time.perf_counter()
        fwd = jax.jit(probs).lower(tv, ntv, x).compile()
        t1 = time.perf_counter()
        att = jax.jit(jax.grad(loss, argnums=2)).lower(tv, ntv, x).compile()
        t2 = time.perf_counter()
    engine = Engine(name="keras 3 on jax, jit f32 (no torch replica)", family="keras",
                    forward=lambda: fwd(tv, ntv, x).block_until_ready(),
                    attack=lambda: att(tv, ntv, x).block_until_ready(), to_numpy=np.asarray,
                    compile_forward_s=t1 - t0, compile_attack_s=t2 - t1, reference=True)
    return Replica([engine], wd, "tests/keras_ref.py build_nima_keras + randomize(seed=1), "
                   "Keras full-model h5", None)


REPLICAS = {
    "resnet50_places365": replica_resnet50_places365,
    "koncept512": replica_koncept512,
    "nima_mobilenet": replica_nima_mobilenet,
    "nima_mobilenetv2": replica_nima_mobilenetv2,
}


# --------------------------------------------------------------------------- one judge

def bench_judge(name: str, batch: int, args) -> list[dict]:
    """All engines of judge ``name`` on ``batch`` real photos: parity, compile, steady state."""
    from ppjax import load_judge
    from ppjax.judges import get_spec
    from tests.conftest import photos_at

    spec = get_spec(name)
    x01 = photos_at(_results.shared_photo_paths(), spec.input_hw, batch)  # [B, H, W, 3] float32 in [0, 1]
    with tempfile.TemporaryDirectory(prefix=f"ppjax-bench-{name}-") as tmp:
        t0 = time.perf_counter()
        print(f"[{name}] building the replica and converting it ...", flush=True)
        replica = REPLICAS[name](x01, Path(tmp), args)
        judge = load_judge(name, weights_dir=replica.weights_dir)
        assert not judge.standin
        print(f"[{name}] replica ready in {time.perf_counter() - t0:.1f} s; compiling ppjax ...",
              flush=True)
        ours, not_run = jax_engines(judge, x01, replica.labels)
        engines = replica.engines + ours
    for e in engines:
        if e.compile_forward_s is not None:
            print(f"  {e.name}: compile forward {e.compile_forward_s:.1f} s, attack "
                  f"{e.compile_attack_s:.1f} s", flush=True)

    # Warm-up (eager engines were warmed when built), and the outputs for parity: the timed
    # input is the photo batch itself.
    outputs = {}
    for e in engines:
        if e.first_call_s is None:
            e.attack()
        outputs[e.name] = e.to_numpy(e.forward())
    ref = next(e for e in engines if e.reference)
    ref_out = outputs[ref.name]
    ref_score = _score_np(ref_out, spec.output)

    samples = {e.name: [] for e in engines}
    for r in range(args.rounds):
        for e in engines:
            fw, fc = _timed(e.forward, args.iters)
            aw, ac = _timed(e.attack, args.iters)
            samples[e.name].append((batch / fw, batch / fc, batch / aw, batch / ac))
            print(f"  [{name}] round {r} {e.name:44s} fwd {batch / fw:7.2f} img/s   attack "
                  f"{batch / aw:7.2f} img·it/s ({batch / ac:6.2f} per CPU-s)", flush=True)

    rows = []
    for e in engines:
        s = np.median(np.asarray(samples[e.name]), axis=0)
        out = outputs[e.name]
        row = {
            "judge": name, "engine": e.name, "family": e.family, "batch": batch,
            "input_hw": list(spec.input_hw), "output": spec.output,
            "forward_img_per_s": float(s[0]), "forward_img_per_cpu_s": float(s[1]),
            "attack_img_it_per_s": float(s[2]), "attack_img_it_per_cpu_s": float(s[3]),
            "compile_forward_s": e.compile_forward_s, "compile_attack_s": e.compile_attack_s,
            "first_call_s": e.first_call_s, "reference_engine": ref.name,
            "replica": replica.description,
        }
        if e is not ref:
            row["max_abs_output_diff"] = float(np.abs(np.asarray(out, np.float64)
                                                      - np.asarray(ref_out, np.float64)).max())
            if ref_score is not None:
                row["max_abs_score_diff"] = float(
                    np.abs(_score_np(out, spec.output) - ref_score).max())
        else:
            row["reference_output_std"] = float(np.asarray(ref_out, np.float64).std())
            if ref_score is not None:
                row["reference_scores"] = [float(v) for v in ref_score]
        rows.append(row)
    ref_row = next(r for r in rows if r["engine"] == ref.name)
    for row in rows:
        for k in ("forward_img_per_s", "attack_img_it_per_s", "attack_img_it_per_cpu_s"):
            row[f"{k}_ratio_vs_reference"] = row[k] / ref_row[k]
    return rows + [{"judge": name, "engine": e, "family": "ppjax", "batch": batch, "na": why}
                   for e, why in not_run]


# --------------------------------------------------------------------------- report

def markdown(rows: list[dict], meta: dict, args, wall_s: float) -> str:
    cpu = meta["cpu"]
    head = (
        f"Measured {meta['date']} on **{cpu['model']}** (ISA flags "
        f"{', '.join(cpu['flags']) or 'none reported'}; oneDNN ISA {cpu.get('onednn_isa')}, "
        f"native dtypes {', '.join(cpu.get('native_dtypes', ()))}) ({meta['cpus']} CPUs visible, "
        f"{meta['backend']}), jax {meta['jax']}, torch {meta.get('torch', '?')} "
        f"({meta.get('torch_threads', '?')} threads, OMP_WAIT_POLICY="
        f"{meta.get('OMP_WAIT_POLICY', '?')}); "
        f"{args.rounds} interleaved rounds of {args.iters} timed calls per engine after a warm-up, "
        f"medians; whole run {wall_s / 60:.1f} min.\n\n"
        "**Weights are random replicas** (the test suite's torch / Keras replicas with random "
        "weights and randomised BatchNorm statistics, converted by the real converters): these "
        "figures measure speed and parity only, never accuracy. Parity is max |diff| on the "
        "same batch of real photos against the reference engine (torch eager f32; Keras 3 on "
        "JAX for the organisers' Keras NIMA, which has no torch replica). One attack iteration = "
        "forward + gradient of the loss w.r.t. the input image (CE on the labels for "
        "ResNet-50, the score for KonCept512 and NIMA). Ratios: this engine / the reference "
        "(>1 = faster). Compile = jax lower + compile (forward / attack); for eager torch, the "
        "first forward + attack call. img·it/CPU-s divides by the process's CPU time, steadier "
        "than wall-clock on a shared machine.\n\n")

    def opt(v, fmt="{:.3g}"):
        return "-" if v is None else fmt.format(v)

    table = _results.markdown_table(
        ["judge", "engine", "batch", "compile s (fwd / attack)", "fwd img/s", "fwd ×ref",
         "attack img·it/s", "attack ×ref", "attack img·it/CPU-s", "CPU ×ref",
         "max |out diff|", "max |score diff|"],
        [[r["judge"], r["engine"], r["batch"],
          (f"{r['compile_forward_s']:.1f} / {r['compile_attack_s']:.1f}"
           if r["compile_forward_s"] is not None else f"first call {opt(r['first_call_s'], '{:.1f}')}"),
          r["forward_img_per_s"], opt(r["forward_img_per_s_ratio_vs_reference"], "{:.2f}"),
          r["attack_img_it_per_s"], opt(r["attack_img_it_per_s_ratio_vs_reference"], "{:.2f}"),
          r["attack_img_it_per_cpu_s"],
          opt(r["attack_img_it_per_cpu_s_ratio_vs_reference"], "{:.2f}"),
          opt(r.get("max_abs_output_diff"), "{:.2e}") if "reference_output_std" not in r
          else "reference",
          opt(r.get("max_abs_score_diff"), "{:.2e}")] if "na" not in r else
         [r["judge"], r["engine"], r["batch"], r["na"]] + ["-"] * 8
         for r in rows])
    scales = []
    for r in rows:
        if "na" in r:
            continue
        if "reference_output_std" in r:
            s = f"{r['judge']}: reference output std {r['reference_output_std']:.3g}"
            if "reference_scores" in r:
                s += f", scores {', '.join(f'{v:.3f}' for v in r['reference_scores'])}"
            scales.append(s)
    return head + table + "\n\nOutput scales (what the diffs compare to): " + "; ".join(scales) \
        + ".\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--judges", default=None,
                   help="comma-separated judge names (default: every judge with a replica here; "
                        "the Places365 zoo is in benchmarks.transfer)")
    p.add_argument("--batch", type=int, default=None,
                   help=f"batch for every judge (default: {DEFAULT_BATCH}, else {FALLBACK_BATCH})")
    p.add_argument("--iters", type=int, default=1, help="timed calls per engine per round")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds")
    p.add_argument("--no-torch-bf16", dest="torch_bf16", action="store_false",
                   help="skip torch's channels-last bf16 autocast engine")
    p.add_argument("--no-results-md", dest="results_md", action="store_false",
                   help="do not write the 'judges' section of benchmarks/RESULTS.md")
    _results.add_smoke(p)
    args = p.parse_args(argv)
    _results.apply_smoke(args, judges="nima_mobilenetv2", batch=1, iters=1, rounds=1,
                         torch_bf16=False, results_md=False)
    if args.iters < 1 or args.rounds < 1 or (args.batch is not None and args.batch < 1):
        p.error("--iters, --rounds and --batch must be >= 1")

    os.environ.setdefault("KERAS_BACKEND", "jax")  # the Keras NIMA replica runs on JAX
    # Before torch loads its OpenMP runtime: with the default spin-waiting, torch's threads on a
    # loaded machine wait out whole time slices at every barrier (measured here: MobileNetV2
    # forward 40x slower with 2 threads than with 1). Passive waiting costs little when idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    # default: every judge with a replica here (the Places365 zoo's parity is benchmarks.transfer)
    names = [j for j in (args.judges or ",".join(REPLICAS)).split(",") if j]
    unknown = [j for j in names if j not in REPLICAS]
    if unknown:
        p.error(f"unknown judge(s) {', '.join(unknown)}; known: {', '.join(REPLICAS)}")
    t0 = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    meta = {**_results.machine(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "OMP_WAIT_POLICY": os.environ["OMP_WAIT_POLICY"]}
    rows = []
    for name in names:
        batch = args.batch or DEFAULT_BATCH.get(name, FALLBACK_BATCH)
        rows += bench_judge(name, batch, args)
    wall_s = time.perf_counter() - t0
    payload = {"machine": meta, "args": vars(args), "wall_s": wall_s, "rows": rows,
               "note": "random-weight replicas: speed and parity only"}
    _results.write_json(args.json, payload)
    md = markdown(rows, meta, args, wall_s)
    print(md)
    if args.results_md:
        _results.update_section("judges", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
