"""The streaming pipeline, measured (issue 12, "Measure"): host ceiling, scale, efficiency, time
to protect a set of varied difficulty. Every judge here is a STAND-IN (random or calibrated
random weights, or the simulated accelerator): the figures measure speed, never protection.

    python -m benchmarks.pipeline --json PATH [--parts host,scale,efficiency,ttp]
        [--host-n 160] [--scale 300,3000] [--eff-n 48] [--ttp-n 64] [--judge resnet50_places365]
        [--dtype float32|bfloat16] [--slots 8] [--eff-repeats 2] [--no-results-md]

Parts:

* ``host``: the host pipeline alone (:mod:`ppjax.runs.pipeline`) on a varied set of JPEGs: decode +
  resize img/s and encode + hash + write img/s, serially, with threads, with processes and with
  grain (when installed).
* ``scale``: ``run_protect`` over 300 and 3000 generated images with a cheap judge (the
  simulated accelerator's tiny network, no emulated device time) and 2 steps, each in a fresh
  child process whose peak RSS is reported (``rss_mib_300``, ``rss_mib_3000``).
* ``efficiency``: end-to-end ``run_protect`` img/s (decode to zip) over engine-only img/s
  (:func:`ppjax.attacks.stream` on images already decoded in memory, same attack and slots),
  for (a) ResNet-50 on the CPU and (b) the simulated accelerator (:class:`SimDevice`).
* ``ttp``: time to protect 64 varied images (targeted PGD, target at a random rank 20-60 of the
  clean logits, eps 4/255, step 1/255, budget 50, early stop) on the calibrated ResNet-50
  stand-in: streaming vs the masked batch (``ppjax.attack``, driver python) vs torch
  fixed-step PGD (``benchmarks.torch_ref``).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import _results, simdevice

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "cat")


# --------------------------------------------------------------------------- the varied set

def source_photos() -> list[np.ndarray]:
    """The shared photos (when present) and scikit-image's public-domain sample photos,
    [H, W, 3] uint8 each."""
    import skimage.data
    from PIL import Image

    out = []
    try:
        for p in _results.shared_photo_paths():
            out.append(np.asarray(Image.open(p).convert("RGB"), np.uint8))
    except FileNotFoundError:
        pass
    for name in SKIMAGE_PHOTOS:
        out.append(np.ascontiguousarray(getattr(skimage.data, name)()[..., :3]))
    return out


def varied_image(src: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop (30-100% of each side, any aspect), maybe mirrored, with colour jitter
    (brightness, contrast, saturation x0.7-1.3) of ``src`` [H, W, 3] uint8."""
    h, w = src.shape[:2]
    ch, cw = (max(64, int(s * rng.uniform(0.3, 1.0))) for s in (h, w))
    top, left = rng.integers(0, h - min(ch, h) + 1), rng.integers(0, w - min(cw, w) + 1)
    x = src[top:top + ch, left:left + cw].astype(np.float32)
    if rng.random() < 0.5:
        x = x[:, ::-1]
    x = x * rng.uniform(0.7, 1.3)  # brightness
    x = (x - x.mean()) * rng.uniform(0.7, 1.3) + x.mean()  # contrast
    grey = x.mean(axis=-1, keepdims=True)
    x = grey + (x - grey) * rng.uniform(0.7, 1.3)  # saturation
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def make_varied_set(folder: str | os.PathLike, n: int, seed: int = 0) -> list[Path]:
    """Write ``n`` JPEGs (quality 85-95, sizes as cropped, ~200-1400 px a side) made from the
    source photos by random crops, flips and colour jitter into ``folder``; returns their paths
    (``varied_00000.jpg``, ...). Deterministic for a seed; nothing is committed."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    srcs = source_photos()
    paths = []
    for i in range(n):
        img = varied_image(srcs[int(rng.integers(len(srcs)))], rng)
        p = folder / f"varied_{i:05d}.jpg"
        Image.fromarray(img).save(p, "JPEG", quality=int(rng.integers(85, 96)))
        paths.append(p)
    return paths


# --------------------------------------------------------------------------- host ceiling

def _grain_decode(items, task, workers):
    """Decode ``items`` through grain (MapDataset -> IterDataset with mp_prefetch)."""
    import functools

    import grain
    from absl import flags

    from ppjax.runs import data

    if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller has parsed none
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.source(items).map(functools.partial(data.load_item, task=task))
    it = ds.to_iter_dataset().mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return list(it)


def _spin(seconds: float) -> None:
    """Hold the GIL for ``seconds`` (a Python-heavy consumer: the device loop, bookkeeping)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def host_ceiling(paths: list[Path], task: int = 2019, workers: int | None = None,
                 tmp: Path | None = None, repeats: int = 3, busy_ms: float = 5.0) -> list[dict]:
    """img/s of decode+resize and of encode+hash+write, serially and per pool kind (best of
    ``repeats``: the machine is shared), and of decode+resize feeding a consumer that holds the
    GIL ``busy_ms`` per image (how much decoding the pool hides behind a busy main thread)."""
    from ppjax.runs import data, pipeline

    workers = workers or pipeline.default_workers()
    items = [data.Item(p.name, str(p)) for p in paths]
    rows = []

    def best(fn):
        out, times = None, []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return out, min(times)

    ref, dt = best(lambda: [data.load_item(it, task) for it in items])
    rows.append({"job": "decode+resize", "mechanism": "serial (main thread)", "workers": 1,
                 "img_s": len(items) / dt})
    busy = busy_ms / 1e3

    def serial_busy():
        for it in items:
            data.load_item(it, task)
            _spin(busy)

    _, dt = best(serial_busy)
    rows.append({"job": f"decode+resize, consumer busy {busy_ms:g} ms/img",
                 "mechanism": "serial (main thread)", "workers": 1, "img_s": len(items) / dt})
    for pool in ("thread", "process"):
        name = f"ppjax.runs.pipeline.prefetch ({pool}{'es' if pool == 'process' else 's'})"
        got, dt = best(lambda pool=pool: list(pipeline.prefetch(items, task, workers=workers,
                                                                pool=pool)))
        assert all(np.array_equal(a.image, b.image) for a, b in zip(ref, got, strict=True))
        rows.append({"job": "decode+resize", "mechanism": name, "workers": workers,
                     "img_s": len(items) / dt})

        def fed(pool=pool):
            for _ in pipeline.prefetch(items, task, workers=workers, pool=pool):
                _spin(busy)

        _, dt = best(fed)
        rows.append({"job": f"decode+resize, consumer busy {busy_ms:g} ms/img", "mechanism": name,
                     "workers": workers, "img_s": len(items) / dt})
    try:
        import grain  # noqa: F401

        got, dt = best(lambda: _grain_decode(items, task, workers))
        assert all(np.array_equal(a.image, b.image) for a, b in zip(ref, got, strict=True))
        rows.append({"job": "decode+resize", "mechanism": "grain mp_prefetch (processes, "
                     "started per iterator)", "workers": workers, "img_s": len(items) / dt})
    except ImportError:
        rows.append({"job": "decode+resize", "mechanism": "grain (not installed)",
                     "workers": workers, "img_s": None})

    tmp = Path(tmp or tempfile.mkdtemp(prefix="ppjax-host-"))
    rows += _write_ceiling([r.image for r in ref], workers, tmp, best)
    shutil.rmtree(tmp, ignore_errors=True)
    return rows


def _write_ceiling(imgs, workers: int, tmp: Path, best) -> list[dict]:
    """img/s of encode+hash+write: serially at PNG levels 1 and 6, and through the writer pools
    (threads, processes) at ppjax's default level, processes also at 6."""
    from ppjax.image import io as imageio
    from ppjax.runs import pipeline

    text = {"ppjax-standin": "STAND-IN benchmark output"}
    rows, ref = [], {}
    levels = sorted({imageio.PNG_LEVEL, 6})
    for level in levels:
        out = tmp / f"serial{level}"
        out.mkdir(parents=True, exist_ok=True)
        _, dt = best(lambda out=out, level=level: [
            pipeline.encode_write(out / f"{i}.png", x, text, level) for i, x in enumerate(imgs)])
        ref[level] = [hashlib.sha256((out / f"{i}.png").read_bytes()).hexdigest()
                      for i in range(len(imgs))]
        size = sum((out / f"{i}.png").stat().st_size for i in range(len(imgs))) / len(imgs)
        rows.append({"job": f"encode+hash+write, PNG level {level} ({size / 1024:.0f} KiB/img)",
                     "mechanism": "serial (main thread)", "workers": 1,
                     "img_s": len(imgs) / dt})
    runs = [("thread", imageio.PNG_LEVEL), ("process", imageio.PNG_LEVEL)]
    runs += [("process", lv) for lv in levels if lv != imageio.PNG_LEVEL]
    for pool, level in runs:
        out = tmp / f"{pool}{level}"
        out.mkdir(exist_ok=True)

        def write_all(pool=pool, out=out, level=level):
            with pipeline.Writer(workers=workers, pool=pool) as w:
                futs = [w.submit(out / f"{i}.png", x, text, level) for i, x in enumerate(imgs)]
            return [f.result() for f in futs]

        got, dt = best(write_all)
        assert got == ref[level]
        rows.append({"job": f"encode+hash+write, PNG level {level}",
                     "mechanism": f"ppjax.runs.pipeline.Writer ({pool}"
                     f"{'es' if pool == 'process' else 's'})", "workers": workers,
                     "img_s": len(imgs) / dt})
    return rows


# --------------------------------------------------------------------------- simulated device

SIM_NAME = "sim_accelerator"


@functools.cache
def sim_device_module():
    """The simulated accelerator's network (built lazily: flax is imported on first use; one
    class per process, so two loads of the judge are equal pytrees and share compilations)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from benchmarks import simdevice

    class SimDevice(nn.Module):
        """A tiny classifier (16x16 average pooling, 768-64-365 MLP: input-dependent, ~0.1
        MFLOP an image); with ``emulate``, its forward pass holds an XLA worker thread for
        ``seconds_per_image`` x batch (:mod:`benchmarks.simdevice`, an FFI custom call inside
        the compiled program): the emulated device time, during which the host thread is free,
        as with a real accelerator. The hold does not enter the gradient (stop_gradient)."""

        num_classes: int = 365
        emulate: bool = False
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x01):
            b, h, w, _ = x01.shape
            x = (x01 * 2.0 - 1.0).reshape(b, 16, h // 16, 16, w // 16, 3).mean(axis=(2, 4))
            x = nn.relu(nn.Dense(64, dtype=self.dtype)(x.reshape(b, -1)))
            out = nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
            if self.emulate:
                held = simdevice.hold(jax.lax.stop_gradient(x01[:, 0, 0, 0]))
                out = out + held[:, None]
            return out

    return SimDevice


def SimDevice(**kw):  # noqa: N802 (a module factory, as JudgeSpec.model expects)
    return sim_device_module()(**kw)


def register_sim_judge(emulate: bool, name: str = SIM_NAME, weights_dir=None):
    """Register (in this process only) the simulated accelerator as judge ``name``: 256x256
    input, 365 logits, with ``emulate`` an emulated device time of ``seconds_per_image``
    per image and judge call; its stand-in weights are written to ``weights_dir``
    (:func:`make_standin`) when absent."""
    from ppjax.judges import JudgeSpec, judge_dir, register

    spec = register(JudgeSpec(
        name=name, model="benchmarks.pipeline:SimDevice",
        model_kwargs=(("num_classes", 365), ("emulate", bool(emulate))),
        input_hw=(256, 256), output="logits", filename="(none: STAND-IN only)", url="",
        converter="benchmarks.pipeline",
        architecture="simulated accelerator: tiny MLP" + (" + emulated device time per image "
                                                          "and judge call" if emulate else "")
                     + " (STAND-IN)",
        preprocessing="RGB [0,1] -> [-1,1], 256x256", year=2019))
    if not (judge_dir(name, weights_dir, standin=True) / "metadata.json").exists():
        make_standin(weights_dir, name=name)
    return spec


def make_standin(weights_dir=None, seed: int = 0, name: str = SIM_NAME):
    """Random weights for the simulated judge ``name``, flagged as stand-in."""
    import jax

    from ppjax.judges import get_spec, judge_dir
    from ppjax.judges.checkpoint import save_converted

    spec = get_spec(name)
    mod = spec.make_module()
    h, w = spec.input_hw
    variables = mod.init(jax.random.key(seed), np.zeros((1, h, w, 3), np.float32))
    return save_converted(judge_dir(name, weights_dir, standin=True), variables, {
        "name": name, "standin": True, "architecture": spec.architecture,
        "preprocessing": spec.preprocessing, "sha256": None, "seed": seed})


# --------------------------------------------------------------------------- protect + engine

def _decoded(paths, task=2019):
    from ppjax.runs import data

    return [data.load_item(data.Item(p.name, str(p)), task) for p in paths]


def engine_only(judge, loaded, attack: str, slots: int, dtype=None, **overrides) -> dict:
    """``ppjax.attacks.stream`` over images already decoded in memory, the seeds and labels
    ``ppjax protect`` would use; returns img/s and per-image results."""
    from ppjax.attacks import StreamItem, stream
    from ppjax.runs.protect import image_seed

    items = (StreamItem(ld.item.name, ld.image, image_seed(ld.item.name, 0))
             for ld in loaded if ld.image is not None)
    t0 = time.perf_counter()
    res = {k: r for k, r in stream(attack, judge, items, slots=slots, dtype=dtype, **overrides)}
    dt = time.perf_counter() - t0
    return {"seconds": dt, "img_s": len(res) / dt,
            "success": float(np.mean([bool(r.success) for r in res.values()]))}


def protect_run(folder: Path, out: Path, judge_name: str, attack: str, slots: int, weights_dir,
                dtype: str = "float32", **overrides) -> dict:
    """``run_protect`` of the whole folder (decode to zip) on the judge's stand-in."""
    from ppjax.runs.layout import ProtectConfig
    from ppjax.runs.protect import run_protect

    cfg = ProtectConfig(task=2019, attack=attack, run_code="bench", images=str(folder),
                        judge=judge_name, overrides=tuple(sorted(overrides.items())),
                        standin=True, dtype=dtype)
    t0 = time.perf_counter()
    summary = run_protect(cfg, out, weights_dir, batch_size=slots, progress=False)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "img_s": summary["protected"] / dt, "protected": summary["protected"],
            "failed": summary["failed"], "success": summary["attack_success_rate"]}


def efficiency_case(case: str, folder: Path, paths, args, weights_dir) -> dict:
    """End-to-end protect img/s over engine-only img/s for one judge, warm (each measured
    after one untimed run, so neither side pays the compilation)."""
    import jax.numpy as jnp

    from ppjax import load_judge

    if case == "sim":
        register_sim_judge(True, SIM_NAME, weights_dir)
        name, dtype = SIM_NAME, "float32"
    else:
        name, dtype = args.judge, args.dtype
    overrides = {"steps": args.eff_steps, "early_stop": False, "best": "final"}
    judge = load_judge(name, weights_dir=weights_dir, standin=True)
    jdt = jnp.bfloat16 if dtype == "bfloat16" else None
    loaded = _decoded(paths)
    if case == "sim":
        simdevice.set_seconds_per_image(0.0)
        simdevice.reset_images()
    engine_only(judge, loaded[: args.slots], "pgd", args.slots, jdt, **overrides)  # compile
    if case == "sim":  # judge calls per image, counted: the device then runs at --sim-rate
        per_image = simdevice.images() / args.slots
        simdevice.set_seconds_per_image(1.0 / (args.sim_rate * per_image))
    # best of --eff-repeats runs on each side, alternating: on a shared 2-core machine one run
    # of either side varies by up to ~10%
    engines, e2es = [], []
    tmp = Path(tempfile.mkdtemp(prefix="ppjax-eff-", dir=folder.parent))
    try:
        protect_run(folder, tmp / "warm", name, "pgd", args.slots, weights_dir, dtype, **overrides)
        for i in range(args.eff_repeats):
            engines.append(engine_only(judge, loaded, "pgd", args.slots, jdt, **overrides))
            e2es.append(protect_run(folder, tmp / f"run{i}", name, "pgd", args.slots,
                                    weights_dir, dtype, **overrides))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    eng = max(engines, key=lambda r: r["img_s"])
    e2e = max(e2es, key=lambda r: r["img_s"])
    if case == "sim":
        simdevice.set_seconds_per_image(0.0)
    extra = ({"sim_device_img_s": args.sim_rate, "sim_judge_calls_per_image": per_image,
              "sim_hold": "XLA FFI custom call (async: host free during the hold)"}
             if case == "sim" else {})
    return {**extra, "judge": f"{name} (STAND-IN)", "dtype": dtype, "images": len(paths),
            "slots": args.slots, "steps": args.eff_steps, "engine_img_s": eng["img_s"],
            "protect_img_s": e2e["img_s"], "efficiency": e2e["img_s"] / eng["img_s"],
            "repeats": args.eff_repeats, "engine_img_s_runs": [r["img_s"] for r in engines],
            "protect_img_s_runs": [r["img_s"] for r in e2es],
            "engine_success": eng["success"], "protect_success": e2e["success"]}


# --------------------------------------------------------------------------- scale (RSS)

def _scale_child(folder: str, weights_dir: str, slots: int, steps: int) -> None:
    """Protect ``folder`` with the cheap judge; print peak RSS (MiB) of this process (VmHWM)
    and of its whole process tree (sampled every 0.2 s: the pool workers included)."""
    import threading

    import psutil

    register_sim_judge(False, "sim_cheap", weights_dir)
    me = psutil.Process()
    peak = [0.0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                tree = [me, *me.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree
                                           if p.is_running()) / 2**20)
            except psutil.Error:
                pass
            stop.wait(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    with tempfile.TemporaryDirectory(prefix="ppjax-scale-out-") as out:
        r = protect_run(Path(folder), Path(out) / "run", "sim_cheap", "pgd", slots, weights_dir,
                        steps=steps, early_stop=False, best="final")
    stop.set()
    t.join()
    from ppjax.bench import peak_rss_mib

    print(json.dumps({**r, "rss_mib": peak_rss_mib(), "rss_tree_mib": peak[0]}))


def scale(n: int, root: Path, weights_dir: str, slots: int, steps: int) -> dict:
    folder = root / f"scale_{n}"
    make_varied_set(folder, n, seed=n)
    cmd = [sys.executable, "-m", "benchmarks.pipeline", "--_scale_child", str(folder),
           "--weights-dir", weights_dir, "--slots", str(slots), "--scale-steps", str(steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    shutil.rmtree(folder, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"scale child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return {"images": n, **json.loads(out.stdout.strip().splitlines()[-1])}


# --------------------------------------------------------------------------- time to protect

TTP = {"objective": "targeted", "eps": 4 / 255, "step_size": 1 / 255, "steps": 50,
       "early_stop": True, "random_start": False}


def targets_at_rank(logits: np.ndarray, seed: int = 0, lo: int = 20, hi: int = 60) -> np.ndarray:
    """Per image, the class at a random rank in [lo, hi] of its clean logits (rank 0 = top-1)."""
    rng = np.random.default_rng(seed)
    ranks = rng.integers(lo, hi + 1, len(logits))
    order = np.argsort(-logits, axis=1, kind="stable")
    return order[np.arange(len(logits)), ranks].astype(np.int32)


def _torch_targeted(model, x0, target, eps, alpha, steps, bf16):
    import torch

    x = x0.clone()
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), target, reduction="sum")
        (g,) = torch.autograd.grad(loss, x)
        x = torch.minimum(torch.maximum(x.detach() - alpha * g.sign(), x0 - eps), x0 + eps)
        x = x.clamp(0, 1)
    with torch.no_grad():
        adv = torch.round(x * 255) / 255
        return (model(adv).argmax(-1) == target).numpy()


def time_to_protect(paths, args, weights_dir) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from benchmarks import torch_models
    from ppjax import load_judge
    from ppjax.attacks import StreamItem, attack, stream

    n, s = args.ttp_n, args.slots
    judge = load_judge(args.judge, weights_dir=weights_dir, standin=True)
    x = np.stack([ld.image for ld in _decoded(paths[:n])])
    x01 = x.astype(np.float32) / 255.0
    logits = np.concatenate([np.asarray(jax.jit(lambda j, v: j(v))(judge, x01[i:i + s]))
                             for i in range(0, n, s)])
    targets = targets_at_rank(logits, seed=args.seed)
    jdt = jnp.bfloat16 if args.dtype == "bfloat16" else None

    def streaming(k):
        items = (StreamItem(i, x[i], i, target=int(targets[i])) for i in range(k))
        return dict(stream("pgd", judge, items, slots=s, dtype=jdt, **TTP))

    def masked(k):
        out = []
        for i in range(0, k, s):
            r = attack("pgd", judge, x01[i:i + s], targets=targets[i:i + s], driver="python",
                       seeds=np.arange(i, min(i + s, k), dtype=np.uint32), dtype=jdt, **TTP)
            out.append((np.asarray(r.success), np.asarray(r.steps)))
        return out

    streaming(s)  # compile
    t0 = time.perf_counter()
    res = streaming(n)
    t_stream = time.perf_counter() - t0
    masked(s)  # compile
    t0 = time.perf_counter()
    mres = masked(n)
    t_masked = time.perf_counter() - t0

    steps = np.array([int(res[i].steps) for i in range(n)])
    succ = np.array([bool(res[i].success) for i in range(n)])
    m_succ = np.concatenate([a for a, _ in mres])
    m_steps = np.concatenate([b for _, b in mres])
    masked_iters = sum(int(b.max()) for _, b in mres)
    ideal_iters = float(steps.sum()) / s

    # torch: fixed 50 steps in the dtype ppjax ran (the same arithmetic, so the same success
    # can be checked); a 2-step probe of both dtypes says which one torch would prefer here.
    # Fixed-step time is linear in the images, so --torch-batches of the set run, scaled to all.
    net = torch_models.resnet50(365).eval()
    torch_models.load_from_judge(net, judge)
    torch.set_num_threads(os.cpu_count() or 1)
    model = torch_models.with_normalisation(net, channels_last=True).to(
        memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    xt, tt = torch.from_numpy(x01), torch.from_numpy(targets.astype(np.int64))
    probe = {}
    for b16 in (False, True):
        _torch_targeted(model, xt[:s], tt[:s], TTP["eps"], TTP["step_size"], 1, b16)  # warm
        t0 = time.perf_counter()
        _torch_targeted(model, xt[:s], tt[:s], TTP["eps"], TTP["step_size"], 2, b16)
        probe["bf16" if b16 else "f32"] = (time.perf_counter() - t0) / 2
    bf16 = args.dtype == "bfloat16"
    kb = min(args.torch_batches * s, n)
    t0 = time.perf_counter()
    t_succ = np.concatenate([_torch_targeted(model, xt[i:i + s], tt[i:i + s], TTP["eps"],
                                             TTP["step_size"], TTP["steps"], bf16)
                             for i in range(0, kb, s)])
    t_torch = (time.perf_counter() - t0) * n / kb
    hist, edges = np.histogram(steps[succ], bins=np.arange(0, TTP["steps"] + 6, 5))
    return {
        "judge": f"{judge.label}", "images": n, "slots": s, "dtype": args.dtype,
        "attack": "pgd targeted (target at a random rank 20-60 of the clean logits), eps 4/255, "
                  "step 1/255, budget 50, early stop",
        "streaming_seconds": t_stream, "masked_seconds": t_masked, "torch_seconds": t_torch,
        "torch_config": f"eager channels-last {'bf16 autocast' if bf16 else 'f32'}",
        "torch_step_seconds_probe": probe,
        "torch_images_run": kb, "torch_extrapolated": kb < n,
        "streaming_success": float(succ.mean()), "masked_success": float(m_succ.mean()),
        "torch_success_on_run": float(t_succ.mean()),
        "steps_histogram": {f"{int(a)}-{int(b) - 1}": int(c)
                            for a, b, c in zip(edges[:-1], edges[1:], hist, strict=True)},
        "failed": int((~succ).sum()), "mean_steps": float(steps[succ].mean()) if succ.any() else None,
        "ideal_iterations": ideal_iters, "masked_iterations": masked_iters,
        "masked_steps_equal": bool(np.array_equal(m_steps, steps)),
        "ideal_seconds": ideal_iters * t_masked / max(masked_iters, 1),
        "ratio_vs_torch": t_stream / t_torch, "ratio_vs_masked": t_stream / t_masked,
        "steps_per_image": steps.tolist(), "success_per_image": succ.tolist(),
    }


# --------------------------------------------------------------------------- main

HOST_CHOICE = (
    "Choice (`ppjax.runs.pipeline`): worker **processes** for both pools. With the pool alone, "
    "threads can be the faster (on quiet cores: this table); with a consumer that holds the "
    "GIL, as the device loop does, processes keep decoding beside it at least as well, and "
    "inside `protect` the two writer kinds were within noise (RESULTS `pipeline` notes). "
    "Processes confine a decoder crash (or a worker the OS kills) to its file, which threads "
    "cannot, so they are kept. grain's `mp_prefetch` starts its worker processes "
    "per iterator and was slowest at these set sizes, so it is not a dependency. PNG encoding "
    "is the host's slowest job: at zlib level 6 (Pillow's default) it capped a simulated 100 img/s "
    "device at ~40 img/s on these 2 cores, so ppjax writes at level 1 (a run setting, "
    "`--png-level`, stored in the run's config.json so a resume stays byte-identical).")


def _markdown(res: dict, meta: dict) -> str:
    cpu = meta["cpu"].get("model", meta["processor"])
    md = [f"Measured {meta['date']} on **{cpu}** ({meta['cpus']} CPUs, jax {meta['jax']}, "
          f"{meta['backend']}). All judges are STAND-INs (speed only). "
          "`python -m benchmarks.pipeline`.\n"]
    if "host" in res:
        md.append(f"**Host ceiling** (the pools alone, {res['host_images']} varied JPEGs -> "
                  "256x256; PNG encode + sha256 + atomic write with fsync):\n")
        md.append(_results.markdown_table(
            ["job", "mechanism", "workers", "img/s"],
            [[r["job"], r["mechanism"], r["workers"], r["img_s"] if r["img_s"] else "n/a"]
             for r in res["host"]]))
    if "scale" in res:
        md.append("\n**Scale** (`run_protect`, cheap judge `sim_cheap` STAND-IN, "
                  f"{res['scale'][0]['steps'] if res['scale'] else '-'} steps; peak RSS of a "
                  "fresh child process; tree = main + pool workers, sampled every 0.2 s):\n")
        md.append(_results.markdown_table(
            ["images", "protected", "img/s", "peak RSS MiB (main)", "peak RSS MiB (tree)"],
            [[r["images"], r["protected"], r["img_s"], r["rss_mib"], r["rss_tree_mib"]]
             for r in res["scale"]]))
    if "efficiency_cases" in res:
        md.append("\n**Pipeline efficiency** (end-to-end `run_protect` img/s, decode to zip, over "
                  "engine-only `stream` img/s on images in memory; same attack, slots, steps; "
                  "warm; the best of the runs of each side, alternated; every run in the JSON):\n")
        md.append(_results.markdown_table(
            ["case", "judge", "dtype", "images", "slots", "steps", "engine img/s",
             "protect img/s", "**efficiency**"],
            [[c, r["judge"], r["dtype"], r["images"], r["slots"], r["steps"], r["engine_img_s"],
              r["protect_img_s"], r["efficiency"]] for c, r in res["efficiency_cases"].items()
             if "efficiency" in r]))
        md.extend(f"\n- case {c} skipped: {r['skipped']}" for c, r in res["efficiency_cases"].items()
                  if "skipped" in r)
    if "ttp" in res:
        t = res["ttp"]
        md.append(f"\n**Time to protect** {t['images']} varied images, {t['attack']}, "
                  f"{t['judge']}, {t['slots']} slots, {t['dtype']}:\n")
        md.append(_results.markdown_table(
            ["engine", "seconds", "success", "ratio"],
            [["streaming (`stream`)", t["streaming_seconds"], t["streaming_success"], 1.0],
             ["masked batch (`ppjax.attack`, driver python)", t["masked_seconds"],
              t["masked_success"], t["masked_seconds"] / t["streaming_seconds"]],
             [f"torch fixed 50 steps, {t['torch_config']}"
              + (f" (run on {t['torch_images_run']} images, time scaled)"
                 if t["torch_extrapolated"] else ""),
              t["torch_seconds"], t["torch_success_on_run"],
              t["torch_seconds"] / t["streaming_seconds"]],
             ["ideal: sum(steps_i) / slots iterations", t["ideal_seconds"], "-",
              t["ideal_seconds"] / t["streaming_seconds"]]]))
        md.append(f"\nratio_vs_torch = {t['ratio_vs_torch']:.3f}, ratio_vs_masked = "
                  f"{t['ratio_vs_masked']:.3f}; steps to success (histogram): "
                  + ", ".join(f"{k}: {v}" for k, v in sorted(
                      t["steps_histogram"].items(), key=lambda kv: int(kv[0].split("-")[0])))
                  + f"; failed: {t['failed']}. torch seconds per PGD step on {t['slots']} images "
                  "(2-step probe): " + ", ".join(f"{k} {v:.3g}" for k, v in
                                                  t["torch_step_seconds_probe"].items()) + ".")
    return "\n".join(md)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--parts", default="host,scale,efficiency,ttp")
    p.add_argument("--host-n", type=int, default=160, help="images of the host ceiling")
    p.add_argument("--scale", default="300,3000", help="set sizes of the RSS measurement")
    p.add_argument("--scale-steps", type=int, default=2)
    p.add_argument("--cases", default="resnet50,sim", help="efficiency cases")
    p.add_argument("--eff-n", type=int, default=32, help="images of the ResNet-50 case")
    p.add_argument("--sim-n", type=int, default=400, help="images of the simulated case")
    p.add_argument("--eff-steps", type=int, default=2)
    p.add_argument("--eff-repeats", type=int, default=2,
                   help="timed runs of each side of an efficiency case (the best counts)")
    p.add_argument("--sim-rate", type=float, default=100.0,
                   help="images/s of the simulated accelerator")
    p.add_argument("--ttp-n", type=int, default=64)
    p.add_argument("--torch-batches", type=int, default=1,
                   help="batches of the set torch runs (its fixed-step time is scaled to all)")
    p.add_argument("--judge", default="resnet50_places365")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--slots", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--results-section", default="pipeline")
    p.add_argument("--no-results-md", dest="results_md", action="store_false")
    p.add_argument("--_scale_child", default=None, help=argparse.SUPPRESS)
    _results.add_smoke(p)
    args = p.parse_args(argv)
    _results.apply_smoke(args, parts="host,scale,efficiency,ttp", host_n=4, scale="8",
                         scale_steps=1, cases="resnet50", eff_n=2, eff_steps=1, eff_repeats=1,
                         ttp_n=2, slots=2, results_md=False)
    weights_dir = args.weights_dir or tempfile.mkdtemp(prefix="ppjax-pipe-weights-")
    if args._scale_child:
        _scale_child(args._scale_child, weights_dir, args.slots, args.scale_steps)
        return 0
    parts = set(args.parts.split(","))
    meta = _results.machine()
    res: dict = {"args": vars(args)}

    def save():  # after every part: a long run that stops early keeps what it measured
        _results.write_json(args.json, {"machine": meta, "standin": True, **res})
        rest = {k: v for k, v in res.items() if k not in ("host", "host_images")}
        if args.results_md:
            if "host" in res:  # ppjax.runs.pipeline's choice of mechanism cites this section
                _results.update_section(args.results_section + "_host", _markdown(
                    {"host": res["host"], "host_images": res["host_images"]}, meta) + "\n\n"
                    + HOST_CHOICE)
            if set(rest) - {"args"}:
                _results.update_section(args.results_section, _markdown(rest, meta))

    root = Path(tempfile.mkdtemp(prefix="ppjax-pipe-"))
    try:
        if "host" in parts:
            paths = make_varied_set(root / "host", args.host_n, seed=1)
            res["host"], res["host_images"] = host_ceiling(paths, 2019, tmp=root / "w"), len(paths)
            print(_markdown({"host": res["host"], "host_images": len(paths)}, meta), flush=True)
            save()
        if "scale" in parts:
            res["scale"] = [dict(scale(int(n), root, weights_dir, args.slots, args.scale_steps),
                                 steps=args.scale_steps) for n in args.scale.split(",") if n]
            for r in res["scale"]:
                res[f"rss_mib_{r['images']}"] = r["rss_mib"]
                res[f"rss_tree_mib_{r['images']}"] = r["rss_tree_mib"]
            print(res["scale"], flush=True)
            save()
        if "efficiency" in parts:
            res["efficiency_cases"] = {}
            for case in args.cases.split(","):
                ok, why = simdevice.available() if case == "sim" else (True, "")
                if not ok:
                    print(f"efficiency case sim skipped: {why}", file=sys.stderr, flush=True)
                    res["efficiency_cases"][case] = {"skipped": why}
                    continue
                n = args.sim_n if case == "sim" else args.eff_n
                folder = root / f"eff_{case}"
                paths = make_varied_set(folder, n, seed=2)
                res["efficiency_cases"][case] = efficiency_case(case, folder, paths, args,
                                                                weights_dir)
                print(case, res["efficiency_cases"][case], flush=True)
            res["efficiency"] = {c: r["efficiency"] for c, r in res["efficiency_cases"].items()
                                 if "efficiency" in r}
            save()
        if "ttp" in parts:
            paths = make_varied_set(root / "ttp", args.ttp_n, seed=3)
            res["ttp"] = time_to_protect(paths, args, weights_dir)
            res["ratio_vs_torch"] = res["ttp"]["ratio_vs_torch"]
            res["ratio_vs_masked"] = res["ttp"]["ratio_vs_masked"]
            print(res["ttp"], flush=True)
            save()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(_markdown({k: v for k, v in res.items() if k not in ("host", "host_images")}, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
