"""Fidelity of ``ppjax.image.jpeg.jpeg`` to Pillow's real JPEG codec.

For every image in ``--images`` (default: ``$PPJAX_TEST_DATA/images`` or ``../shared/data/images``
beside the checkout), at its own size, at 256x256 and at 512x384 (width x height, Pillow bicubic),
and for qualities 50, 75, 90, 95, compare our decoded image with Pillow's encode + decode
(``ppjax.image.jpeg.pil_jpeg``, 4:2:0 as Pillow's default). Reported per quality (pooled over all images
and sizes) and per size: PSNR in dB (pooled MSE; ``inf`` when identical) and the fraction of
identical 8-bit values. Modes: ``exact`` (the headline), ``ste`` / ``cubic`` / ``soft`` and the
float twin that the gradients of ``exact`` come from (``float_twin``); ``exact`` also at 4:4:4.
Compile and steady-state time of ``exact`` at 512x384 are reported beside Pillow's time, and a
small "gradient usefulness" test: how much each mode's gradient raises a linear objective measured
through the real codec (see :func:`gradient_usefulness`).

    python -m benchmarks.jpeg_fidelity --images DIR --json PATH
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import PIL
from PIL import Image, features

from benchmarks._results import (
    add_smoke,
    apply_smoke,
    machine,
    markdown_table,
    update_section,
    write_json,
)
from ppjax.image import jpeg as J

REPO = Path(__file__).resolve().parents[1]
QUALITIES = (50, 75, 90, 95)
SIZES = ("own", "256x256", "512x384")
MODES = ("exact", "ste", "cubic", "soft", "float_twin")


def default_images() -> Path:
    env = os.environ.get("PPJAX_TEST_DATA")
    return Path(env) / "images" if env else REPO.parent / "shared" / "data" / "images"


def load(path: Path, size: str) -> np.ndarray:
    """[1, H, W, 3] float32 in [0, 1] (8-bit values)."""
    im = Image.open(path).convert("RGB")
    if size != "own":
        w, h = (int(v) for v in size.split("x"))
        im = im.resize((w, h), Image.BICUBIC)
    return np.asarray(im, np.float32)[None] / 255.0


def _float_twin(x, q, subsampling="420"):
    return J.float_twin(x, q, subsampling=subsampling, rounding="exact")


_FNS = {
    "exact": jax.jit(lambda x, q: J.jpeg(x, q, rounding="exact")),
    "ste": jax.jit(lambda x, q: J.jpeg(x, q, rounding="ste")),
    "cubic": jax.jit(lambda x, q: J.jpeg(x, q, rounding="cubic")),
    "soft": jax.jit(lambda x, q: J.jpeg(x, q, rounding="soft")),
    "float_twin": jax.jit(_float_twin),
    "exact444": jax.jit(lambda x, q: J.jpeg(x, q, subsampling="444", rounding="exact")),
}


class Acc:
    """Pooled squared error and identical-value count over 8-bit images."""

    def __init__(self):
        self.se, self.same, self.n = 0.0, 0, 0

    def add(self, ours: np.ndarray, ref: np.ndarray):
        a = np.round(np.asarray(ours, np.float64) * 255.0)
        b = np.round(np.asarray(ref, np.float64) * 255.0)
        self.se += float(np.sum((a - b) ** 2))
        self.same += int(np.sum(a == b))
        self.n += a.size

    def psnr(self) -> float:
        mse = self.se / max(self.n, 1)
        return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)

    def ident(self) -> float:
        return self.same / max(self.n, 1)


def timing(x: np.ndarray, q: int = 90, reps: int = 5) -> dict:
    fn = jax.jit(lambda v, qq: J.jpeg(v, qq))  # fresh jit: measure compilation
    xj = jnp.asarray(x)
    t0 = time.perf_counter()
    fn(xj, q).block_until_ready()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(reps):
        fn(xj, q).block_until_ready()
    ours = (time.perf_counter() - t0) / reps
    grad = jax.jit(jax.grad(lambda v, qq: jnp.sum(J.jpeg(v, qq))))
    grad(xj, q).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        grad(xj, q).block_until_ready()
    ours_grad = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        J.pil_jpeg(x, q)
    pil = (time.perf_counter() - t0) / reps
    return {"shape": list(x.shape), "compile_s": compile_s, "exact_fwd_ms": 1e3 * ours,
            "exact_grad_ms": 1e3 * ours_grad, "pillow_ms": 1e3 * pil}


def gradient_usefulness(paths, steps: int = 10, quality: int = 90) -> dict:
    """How far each mode's gradient moves a linear objective measured through the *real* codec.

    Six 48x64 crops, ``steps`` sign-gradient steps of 1/255 inside an L-inf ball of 4/255 (rounded
    to 8 bits each step), maximising ``sum(w * pil_jpeg(x, quality))`` for a white-noise ``w`` and a
    smooth (bilinearly upsampled 4x) ``w``. Reported: the rise of the real objective. ``none`` uses
    the gradient without JPEG in the loop (``w`` itself)."""
    crops = []
    for i in range(6):  # 48x64 crops of each photo downscaled to 192x256, at three offsets
        im = Image.open(paths[i % len(paths)]).convert("RGB").resize((256, 192), Image.BICUBIC)
        k = i // len(paths)
        crops.append(np.asarray(im.crop((64 * k, 48 * k, 64 * k + 64, 48 * k + 48)), np.float32))
    x0 = np.stack(crops) / 255.0
    rng = np.random.default_rng(0)
    targets = {
        "white": rng.normal(size=x0.shape).astype(np.float32),
        "smooth": np.asarray(jax.image.resize(
            jnp.asarray(rng.normal(size=(6, 12, 16, 3)).astype(np.float32)), x0.shape, "linear")),
    }
    out = {}
    for name, w in targets.items():
        wj = jnp.asarray(w)
        base = float(np.sum(w * J.pil_jpeg(x0, quality)))
        out[name] = {}
        for mode in ("none", *J.ROUNDING_MODES):
            if mode == "none":
                def gf(v, wj=wj):
                    return wj
            else:
                gf = jax.jit(jax.grad(
                    lambda v, m=mode, wj=wj: jnp.sum(wj * J.jpeg(v, quality, rounding=m))))
            x = x0.copy()
            for _ in range(steps):
                g = np.asarray(gf(jnp.asarray(x)))
                x = np.clip(np.clip(x + np.sign(g) / 255, x0 - 4 / 255, x0 + 4 / 255), 0, 1)
                x = np.round(x * 255) / 255
            out[name][mode] = float(np.sum(w * J.pil_jpeg(x, quality))) - base
    return out


def run(images: Path, qualities=QUALITIES, smoke: bool = False) -> dict:
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise FileNotFoundError(f"no images in {images}")
    acc = {(m, s, q): Acc() for m in (*MODES, "exact444") for s in SIZES for q in qualities}
    for path in paths:
        for size in SIZES:
            x = load(path, size)
            xj = jnp.asarray(x)
            for q in qualities:
                refs = {"420": J.pil_jpeg(x, q), "444": J.pil_jpeg(x, q, "444")}
                for m, fn in _FNS.items():
                    ref = refs["444" if m == "exact444" else "420"]
                    acc[(m, size, q)].add(fn(xj, q), ref)

    def pooled(m, q, sizes=SIZES):
        a = Acc()
        for s in sizes:
            b = acc[(m, s, q)]
            a.se, a.same, a.n = a.se + b.se, a.same + b.same, a.n + b.n
        return a

    ks = [str(q) for q in qualities]
    out = {
        "psnr_db": {k: pooled("exact", q).psnr() for k, q in zip(ks, qualities, strict=True)},
        "identical_pixel_fraction": {
            k: pooled("exact", q).ident() for k, q in zip(ks, qualities, strict=True)},
        "per_size": {
            s: {k: {"psnr_db": acc[("exact", s, q)].psnr(),
                    "identical_pixel_fraction": acc[("exact", s, q)].ident()}
                for k, q in zip(ks, qualities, strict=True)}
            for s in SIZES},
        "modes": {
            m: {"psnr_db": {k: pooled(m, q).psnr() for k, q in zip(ks, qualities, strict=True)},
                "identical_pixel_fraction": {
                    k: pooled(m, q).ident() for k, q in zip(ks, qualities, strict=True)}}
            for m in (*MODES, "exact444")},
        "images": [p.name for p in paths],
        "sizes": {p.name: list(Image.open(p).size) for p in paths},
        "pillow": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo"),
        "timing": timing(load(paths[0], "512x384"), reps=1 if smoke else 5),
        "gradient_usefulness": gradient_usefulness(paths[:1] if smoke else paths,
                                                   steps=1 if smoke else 10),
        "machine": machine(),
    }
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    ks = list(res["psnr_db"])

    def db(v):
        return "inf (identical)" if math.isinf(v) else f"{v:.2f}"

    head = (
        f"Differentiable JPEG vs Pillow {res['pillow']} (libjpeg-turbo {res['libjpeg_turbo']}), "
        f"4:2:0, images {', '.join(res['images'])} at own size, 256x256 and 512x384. "
        f"{m['date']}, {m['processor']}, {m['cpus']} CPUs, jax {m['jax']} ({m['backend']}).\n\n"
        "PSNR (dB, pooled MSE over all images and sizes) and identical 8-bit values, by rounding mode "
        "(`ste` and `soft_ste` share the `exact` forward; `float_twin` is the float pipeline whose "
        "gradient `exact` uses):\n\n"
    )
    rows = []
    for k in ks:
        row = [k]
        for mode in (*MODES, "exact444"):
            r = res["modes"][mode]
            row.append(f"{db(r['psnr_db'][k])} / {r['identical_pixel_fraction'][k]:.4f}")
        rows.append(row)
    t1 = markdown_table(["quality", *MODES, "exact 4:4:4"], rows)
    rows = [[s] + [f"{db(res['per_size'][s][k]['psnr_db'])} / "
                   f"{res['per_size'][s][k]['identical_pixel_fraction']:.4f}" for k in ks]
            for s in res["per_size"]]
    t2 = markdown_table(["size (exact)", *ks], rows)
    t = res["timing"]
    tim = (
        f"\n\nTiming, exact mode, batch {t['shape']}, quality 90: compile {t['compile_s']:.2f} s, "
        f"forward {t['exact_fwd_ms']:.1f} ms, forward+gradient {t['exact_grad_ms']:.1f} ms; "
        f"Pillow encode+decode {t['pillow_ms']:.1f} ms.\n"
    )
    gu = res["gradient_usefulness"]
    modes = list(next(iter(gu.values())))
    t3 = markdown_table(["target", *modes], [[k, *(f"{gu[k][m]:.1f}" for m in modes)] for k in gu])
    gtxt = (
        "\nGradient usefulness (rise of a linear objective measured through Pillow JPEG-90 after 10 "
        "sign-gradient steps of 1/255 in an L-inf ball of 4/255, six 48x64 crops; `none` = no JPEG "
        "in the loop):\n\n" + t3 + "\n"
    )
    return (head + t1 + "\n\nPer size, exact mode (PSNR dB / identical fraction):\n\n" + t2 + tim
            + gtxt)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-markdown", action="store_true", help="do not update benchmarks/RESULTS.md")
    add_smoke(ap)
    args = ap.parse_args(argv)
    apply_smoke(args, no_markdown=True)
    res = run(args.images or default_images(), (90,) if args.smoke else QUALITIES,
              smoke=args.smoke)
    write_json(args.json, res)
    md = markdown(res)
    if not args.no_markdown:
        update_section("jpeg_fidelity", md)
    print(md)
    return res


if __name__ == "__main__":
    main()
