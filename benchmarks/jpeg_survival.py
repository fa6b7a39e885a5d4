"""Does protection survive the real JPEG-90? (issue: differentiable JPEG)

    python -m benchmarks.jpeg_survival --json PATH [--weights-dir DIR] [--n 8] [--steps 20]

Adversarial images are made with I-FGSM (the attack engine) against the ResNet-50-Places365
judge twice: without JPEG in the loop, and with the differentiable JPEG in the loop (EOT over a
random quality in [80, 95] per image and step, success judged after the exact-forward JPEG-90).
Each result is then saved by the REAL Pillow codec at quality 90, decoded and judged again. The
figure is the share of images that are still adversarial after the real JPEG-90.

Without converted real weights the judge is the random-weight STAND-IN, and the table says so.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

import ppjax
from benchmarks._results import (
    add_smoke,
    apply_smoke,
    machine,
    markdown_table,
    shared_photos,
    update_section,
    write_json,
)
from ppjax.image.jpeg import pil_jpeg


def load(weights_dir):
    try:
        return ppjax.load_judge("resnet50_places365", weights_dir=weights_dir)
    except FileNotFoundError:
        return ppjax.load_judge("resnet50_places365", weights_dir=weights_dir, standin=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--no-results-md", action="store_true")
    add_smoke(p)
    a = p.parse_args(argv)
    apply_smoke(a, n=1, steps=1, no_results_md=True)

    with tempfile.TemporaryDirectory() as tmp:
        judge = load(a.weights_dir or tmp)
        x = shared_photos(a.n)
        predict = jax.jit(lambda j, x: jnp.argmax(j(x), -1))
        labels = np.asarray(predict(judge, x))
        variants = {
            "no JPEG in the loop": dict(),
            "differentiable JPEG in the loop (EOT q~U[80,95], judged at 90)":
                dict(eot="jpeg", eot_quality_lo=80.0, eot_quality_hi=95.0, judge_jpeg=True,
                     judge_quality=float(a.quality)),
        }
        rows, out = [], {}
        for name, extra in variants.items():
            t0 = time.perf_counter()
            res = ppjax.attack("ifgsm", judge, x, labels, eps=a.eps, step_size=1 / 255,
                               steps=a.steps, **extra)
            adv = np.asarray(res.images)
            elapsed = time.perf_counter() - t0
            after = np.asarray(predict(judge, jnp.asarray(pil_jpeg(adv, a.quality))))
            ok8 = np.asarray(res.success)
            survive = after != labels
            rec = {
                "success_8bit": float(ok8.mean()),
                "adversarial_after_real_jpeg": float(survive.mean()),
                "survival_among_successes": float(survive[ok8].mean()) if ok8.any() else None,
                "mean_steps": float(np.asarray(res.steps).mean()),
                "mean_linf_255": float(np.asarray(res.linf).mean() * 255),
                "seconds": elapsed,
            }
            out[name] = rec
            rows.append([name, rec["success_8bit"], rec["adversarial_after_real_jpeg"],
                         rec["survival_among_successes"], rec["mean_steps"],
                         rec["mean_linf_255"], elapsed])
            print(name, rec, flush=True)

    payload = {"benchmark": "jpeg_survival", "judge": judge.label, "standin": judge.standin,
               "n_images": a.n, "eps": a.eps, "steps": a.steps, "quality": a.quality,
               "machine": machine(), "results": out}
    write_json(a.json, payload)
    md = (f"### JPEG survival ({payload['machine']['date']}, {payload['machine']['processor']}, "
          f"{payload['machine']['backend']})\n\n"
          f"Judge: **{judge.label}**. I-FGSM, eps {a.eps * 255:.0f}/255, step 1/255, {a.steps} "
          f"steps, {a.n} real photos at 256x256; then the real Pillow JPEG at quality "
          f"{a.quality}.\n\n"
          + markdown_table(["attack", "success (8-bit)", "adversarial after real JPEG-90",
                            "survival among successes", "mean steps", "mean Linf (/255)", "s"],
                           rows))
    if judge.standin:
        md += ("\n\nSTAND-IN judge (random weights): the figures show how the engine behaves, "
               "not how well the real judge is fooled.")
    if not a.no_results_md:
        update_section("jpeg_survival", md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
