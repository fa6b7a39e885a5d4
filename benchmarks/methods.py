"""Fidelity of ppjax's attacks to independent torch implementations, per image.

``python -m benchmarks.methods --json PATH`` runs, on the ResNet-50-Places365 stand-in (random
weights, BatchNorm statistics calibrated on real photos; its torch replica gets the same weights):

* each published preset against the compact torch reference written from its paper
  (``tests/torch_attack_ref.py``): ACE BMVC, ACE journal, PerC-AL, PerC-AL kappa=40. Per method:
  ``success_agreement`` (share of images whose success is identical), ``distortion_rel_diff``
  (largest relative difference of the final distortion over the images both fooled: ACE's
  regulariser, PerC-AL's CIEDE2000 L2; journal ACE has no regulariser and is measured by the
  CIEDE2000 L2 of its output), mean distortion, mean steps and wall time of both; for PerC-AL
  also the same torch reference run again with another thread count
  (``torch_threads_distortion_rel_diff``): PerC-AL's final distortion is chaotic (its 8-bit copy
  sits at the decision boundary and float rounding decides the near-ties), so this is the
  envelope that ppjax's difference is to be read against (``tests/test_fidelity.py`` checks the
  algorithm step for step);
* ``fused_eval`` for ACE: wall time per step with the straight-through fused judgement and with
  the original's continuous gradient plus a separate judgement (what the default costs), and
  whether both give the same success, 8-bit images and regulariser;
* torchattacks 3.5.1 (FGSM, PGD, MI-FGSM, C&W-L2) against the same ppjax attacks: success
  agreement, and for PGD the share of pixels equal after step 1 (later steps diverge
  chaotically even between two torch runs with different thread counts), for C&W mean L2 and
  success.

kappa = 40 is the notebook's confidence on real ImageNet logits; the stand-in's logits are O(1),
so ``--kappa`` (default 1) stands in for it and the table says which value ran.
Writes the table into ``benchmarks/RESULTS.md`` (section ``methods``) unless ``--no-results-md``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
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
    update_section,
    write_json,
)


def _setup(hw, batch: int, seed: int):
    import torch
    from tests.torch_ref.resnet import resnet50

    from ppjax.config import downloads_dir
    from ppjax.convert import resnet50_places365
    from ppjax.convert.common import augmented_crops, calibration_photos
    from tests import torch_attack_ref as ref

    d = tempfile.mkdtemp(prefix="ppjax-methods-")
    resnet50_places365.make_standin(weights_dir=d)
    judge = ppjax.load_judge("resnet50_places365", weights_dir=d, standin=True)
    judge = judge.replace(spec=dataclasses.replace(judge.spec, input_hw=tuple(hw)))
    sd = torch.load(downloads_dir(d) / "resnet50_places365.pth.tar.standin",
                    weights_only=True)["state_dict"]
    net = resnet50(365)
    net.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    tm = ref.NHWCClassifier(net)
    x = augmented_crops(calibration_photos(), tuple(hw), batch, seed)
    labels = np.asarray(jnp.argmax(judge(jnp.asarray(x)), -1))
    return judge, tm, x, labels


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _compare(s1, d1, s2, d2) -> dict:
    s1, s2 = np.asarray(s1, bool), np.asarray(s2, bool)
    both = s1 & s2
    d1, d2 = np.asarray(d1, np.float64), np.asarray(d2, np.float64)
    rel = np.abs(d1[both] - d2[both]) / np.maximum(np.abs(d2[both]), 1e-12)
    return {"success_agreement": float(np.mean(s1 == s2)),
            "distortion_rel_diff": float(rel.max()) if both.any() else 0.0,
            # the spread of the per-image differences, and the sets' means compared (where
            # per-image paths are chaotic, the distribution is what can agree)
            "distortion_rel_diff_median": float(np.median(rel)) if both.any() else 0.0,
            "mean_distortion_rel_diff": (float(abs(d1[both].mean() - d2[both].mean())
                                               / max(abs(d2[both].mean()), 1e-12))
                                         if both.any() else 0.0),
            "n_both": int(both.sum()),
            "success_ppjax": float(s1.mean()), "success_torch": float(s2.mean()),
            "mean_distortion_ppjax": float(d1[s1].mean()) if s1.any() else None,
            "mean_distortion_torch": float(d2[s2].mean()) if s2.any() else None}


def methods(judge, tm, x, labels, steps: int, kappa: float, out: dict | None = None,
            save=None, only: set[str] | None = None) -> dict:
    from ppjax.image.color import ciede2000_l2
    from tests import torch_attack_ref as ref

    def perc(images):
        return np.asarray(ciede2000_l2(jnp.asarray(images), jnp.asarray(x)))

    cases = {
        "ace_bmvc": (dict(name="ace"), lambda: ref.ace(tm, x, labels, steps)),
        "ace_journal": (dict(name="ace", preset="journal"),
                        lambda: ref.ace(tm, x, labels, steps, lam=0.0, lr=1.0, theta_min=1 / 64,
                                        theta_max=16 / 64, journal=True)),
        "perc_al": (dict(name="perc_al"), lambda **kw: ref.perc_al(kw.pop("model", tm), x, labels,
                                                                   steps, **kw)),
        "perc_al_kappa": (dict(name="perc_al", preset="kappa40", kappa=kappa),
                          lambda **kw: ref.perc_al(kw.pop("model", tm), x, labels, steps,
                                                   kappa=kappa, **kw)),
    }
    out = {} if out is None else out
    for key, (kw, run_ref) in cases.items():
        if only and key not in only:
            continue
        kw = dict(kw)
        name = kw.pop("name")
        res, t_ours = _timed(lambda name=name, kw=kw: ppjax.attack(
            name, judge, x, labels, steps=steps, backend="xla", **kw))
        jax.block_until_ready(res.images)
        theirs, t_ref = _timed(run_ref)
        if key == "ace_journal":
            d_ours, d_ref = perc(res.images), perc(theirs["images"])
        else:
            d_ours, d_ref = np.asarray(res.extras["best_key"]), theirs["distortion"]
        row = _compare(res.success, d_ours, theirs["success"], d_ref)
        if key.startswith("perc_al"):
            # the chaos envelope: the same torch reference with another thread count (float
            # reordering only); PerC-AL's distortion parts at near-ties of its 8-bit copy
            import torch

            n = torch.get_num_threads()
            torch.set_num_threads(1 if n > 1 else 2)
            try:
                again = run_ref()
            finally:
                torch.set_num_threads(n)
            env = _compare(theirs["success"], d_ref, again["success"], again["distortion"])
            row["torch_threads_success_agreement"] = env["success_agreement"]
            row["torch_threads_distortion_rel_diff"] = env["distortion_rel_diff"]
            row["torch_threads_distortion_rel_diff_median"] = env["distortion_rel_diff_median"]
            row["torch_threads_mean_distortion_rel_diff"] = env["mean_distortion_rel_diff"]
            # the same algorithm in float64 (model and arithmetic): how far each float32
            # implementation, torch's and ppjax's, lands from the more exact trajectory
            exact = run_ref(model=copy.deepcopy(tm).double(), dtype=torch.float64)
            for who, (s_, d_) in {"torch": (theirs["success"], d_ref),
                                  "ppjax": (res.success, d_ours)}.items():
                f64 = _compare(s_, d_, exact["success"], exact["distortion"])
                for k in ("success_agreement", "distortion_rel_diff",
                          "distortion_rel_diff_median", "mean_distortion_rel_diff"):
                    row[f"{who}_vs_f64_{k}"] = f64[k]
        row.update(steps_ppjax=float(np.mean(res.steps)),
                   steps_torch=float(np.mean(theirs.get("steps", np.full(len(x), steps)))),
                   seconds_ppjax=t_ours, seconds_torch=t_ref, budget=steps,
                   kappa=kappa if key == "perc_al_kappa" else 0.0)
        out[key] = row
        print(key, {k: row[k] for k in ("success_agreement", "distortion_rel_diff",
                                        "seconds_ppjax", "seconds_torch")}, flush=True)
        if save is not None:
            save()
    return out


def fused_cost(judge, x, labels, steps: int) -> dict:
    """ACE's wall time with fused_eval on and off (the second run of each, compiled), and
    whether the two give the same results (success, kept 8-bit images, regulariser)."""
    out, res = {}, {}
    for fused in (True, False):
        kw = dict(steps=steps, plateau=0, fused_eval=fused, backend="xla")
        ppjax.attack("ace", judge, x, labels, **kw)
        r, t = _timed(lambda kw=kw: jax.block_until_ready(ppjax.attack("ace", judge, x, labels,
                                                                        **kw)))
        key = "fused" if fused else "continuous"
        res[key] = r
        out[key] = {"seconds": t, "seconds_per_step": t / steps,
                    "success": float(np.mean(r.success))}
    out["ratio_continuous_over_fused"] = (out["continuous"]["seconds"]
                                          / out["fused"]["seconds"])
    a, b = res["fused"], res["continuous"]
    u8a, u8b = (np.round(np.asarray(r.images, np.float64) * 255) for r in (a, b))
    out["success_equal"] = float(np.mean(np.asarray(a.success) == np.asarray(b.success)))
    out["images_equal"] = float(np.mean(np.all((u8a == u8b).reshape(len(x), -1), -1)))
    out["pixels_equal"] = float(np.mean(u8a == u8b))
    ka, kb = np.asarray(a.extras["best_key"]), np.asarray(b.extras["best_key"])
    both = np.asarray(a.success) & np.asarray(b.success)
    out["distortion_rel_diff"] = (float(np.max(np.abs(ka[both] - kb[both]) / kb[both]))
                                  if both.any() else 0.0)
    return out


def torchattacks_parity(judge, tm, x, labels) -> dict:
    import torch
    import torchattacks

    class NCHW(torch.nn.Module):
        def forward(self, xc):
            return tm(xc.permute(0, 2, 3, 1))

    model = NCHW().eval()
    xt = torch.as_tensor(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.as_tensor(labels, dtype=torch.long)

    def theirs(atk):
        adv = atk(xt, yt).detach()
        with torch.no_grad():
            z = model(adv)
        adv = adv.permute(0, 2, 3, 1).numpy()
        return adv, (z.argmax(1).numpy() != labels)

    def round8(a):
        return np.round(np.asarray(a, np.float64) * 255)

    out = {}
    eps = 4 / 255
    cases = {
        "fgsm": (torchattacks.FGSM(model, eps=eps), dict(name="fgsm", eps=eps)),
        "pgd_step1": (torchattacks.PGD(model, eps=eps, alpha=1 / 255, steps=1, random_start=False),
                      dict(name="pgd", eps=eps, step_size=1 / 255, steps=1, random_start=False,
                           early_stop=False, best="final")),
        "pgd_10": (torchattacks.PGD(model, eps=eps, alpha=1 / 255, steps=10, random_start=False),
                   dict(name="pgd", eps=eps, step_size=1 / 255, steps=10, random_start=False,
                        early_stop=False, best="final")),
        "mifgsm": (torchattacks.MIFGSM(model, eps=eps, alpha=1 / 255, steps=10, decay=1.0),
                   dict(name="mifgsm", eps=eps, step_size=1 / 255, steps=10, early_stop=False,
                        best="final")),
        "cw_l2": (torchattacks.CW(model, c=1.0, kappa=0.0, steps=50, lr=0.01),
                  dict(name="cw_l2", const=1.0, steps=50, search_steps=1, step_size=0.01)),
    }
    for key, (atk, kw) in cases.items():
        kw = dict(kw)
        name = kw.pop("name")
        (adv, succ_t), t_ref = _timed(lambda atk=atk: theirs(atk))
        res, t_ours = _timed(lambda name=name, kw=kw: ppjax.attack(name, judge, x, labels,
                                                                  backend="xla", **kw))
        ours = np.asarray(res.images)
        row = {"success_ppjax": float(np.mean(res.success)), "success_torch": float(succ_t.mean()),
               "success_agreement": float(np.mean(np.asarray(res.success) == succ_t)),
               "pixel_agreement": float(np.mean(round8(ours) == round8(adv))),
               "seconds_ppjax": t_ours, "seconds_torch": t_ref}
        if key == "cw_l2":
            row["mean_l2_ppjax"] = float(np.mean(np.asarray(res.l2)[np.asarray(res.success)])
                                         ) if np.any(res.success) else None
            l2t = np.sqrt(((adv - x) ** 2).reshape(len(x), -1).sum(1))
            row["mean_l2_torch"] = float(l2t[succ_t].mean()) if succ_t.any() else None
        out[key] = row
        print(key, row, flush=True)
    return out


def ciede2000_authors_variant(lab1, lab2):
    """CIEDE2000 with the PerC authors' handling of neutral colours (written from its
    description, for measurement only): a colour with a = b = 0 gets b = 1e-4 before the formula.
    Their other deviation, a mean hue of 0 instead of h1' + h2' where a chroma is 0, changes
    nothing: there dH' = 2 sqrt(C1' C2') sin(.) = 0, and the mean hue only enters through terms
    multiplied by dH'."""
    from ppjax.image.color import ciede2000

    def nudge(lab):
        zero = (lab[..., 1] == 0) & (lab[..., 2] == 0)
        return lab.at[..., 2].add(jnp.where(zero, 1e-4, 0.0))

    return ciede2000(nudge(lab1), nudge(lab2))


def ciede2000_gap(n: int = 8) -> dict:
    """Standard CIEDE2000 vs the authors' variant on real photos and their JPEG-90 copies: the
    per-pixel and per-image (L2 norm) differences."""
    from benchmarks._results import shared_photos
    from ppjax.image.color import ciede2000, rgb_to_lab
    from ppjax.image.jpeg import pil_jpeg

    x = shared_photos(n, (256, 256))
    y = pil_jpeg(np.round(x * 255).astype(np.uint8), 90)
    y = np.asarray(y, np.float32)
    y = y / 255.0 if y.max() > 1.5 else y
    l1, l2 = rgb_to_lab(jnp.asarray(x)), rgb_to_lab(jnp.asarray(y))
    a, b = np.asarray(ciede2000(l1, l2)), np.asarray(ciede2000_authors_variant(l1, l2))
    na = np.sqrt((a.reshape(n, -1) ** 2).sum(1))
    nb = np.sqrt((b.reshape(n, -1) ** 2).sum(1))
    return {"pixel_max_abs_diff": float(np.abs(a - b).max()),
            "pixel_share_differing": float(np.mean(np.abs(a - b) > 1e-6)),
            "image_l2_max_rel_diff": float(np.max(np.abs(na - nb) / na)),
            "mean_pixel_de": float(a.mean())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    # small defaults keep the run short on a 2-core CPU; RESULTS.md gives a run's time and load
    p.add_argument("--size", type=int, default=48, help="image side (ResNet-50 takes any size)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--kappa", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--skip-torchattacks", action="store_true")
    p.add_argument("--only", default="", help="comma-separated method keys (ace_bmvc, "
                   "ace_journal, perc_al, perc_al_kappa): run those and nothing else")
    p.add_argument("--section", default="methods", help="RESULTS.md section to write")
    p.add_argument("--no-results-md", action="store_true")
    add_smoke(p)
    a = p.parse_args(argv)
    apply_smoke(a, size=32, batch=1, steps=2, skip_torchattacks=True, no_results_md=True)
    t0 = time.perf_counter()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    hw = (a.size, a.size)
    judge, tm, x, labels = _setup(hw, a.batch, a.seed)
    payload = {"machine": machine(), "judge": judge.label, "hw": list(hw), "batch": a.batch,
               "steps": a.steps, "load_average_start": os.getloadavg()[0]}

    def save():  # after every part, so that an interrupted run keeps what it measured
        payload["seconds_total"] = time.perf_counter() - t0
        payload["load_average_end"] = os.getloadavg()[0]
        write_json(a.json, payload)
        if not a.no_results_md:
            update_section(a.section, results_markdown(payload))

    payload["methods"] = {}
    only = {k for k in a.only.split(",") if k}
    methods(judge, tm, x, labels, a.steps, a.kappa, payload["methods"], save, only)
    if only:  # a partial run: the methods asked for, nothing else
        payload["complete"] = True
        save()
        return 0
    payload["ace_fused_eval"] = fused_cost(judge, x, labels, min(a.steps, 20))
    save()
    payload["ciede2000_vs_authors"] = ciede2000_gap()
    save()
    if not a.skip_torchattacks:
        payload["torchattacks"] = torchattacks_parity(judge, tm, x, labels)
    payload["complete"] = True
    save()
    return 0


def results_markdown(p: dict) -> str:
    m = p["machine"]
    lines = ["## Fidelity: ppjax vs torch references (`benchmarks.methods`)\n",
             f"{m['date']}, {m.get('cpu', {}).get('model') or m['processor']}, {m['cpus']} CPUs; "
             f"judge {p['judge']} at "
             f"{p['hw'][0]}x{p['hw'][1]}, {p['batch']} images, budget {p['steps']} steps; "
             "ppjax on XLA f32. Success agreement = share of images with the same outcome; "
             "distortion diff = largest relative difference where both fooled."
             + ("" if p.get("complete") else " INCOMPLETE: the run was interrupted; parts below"
                " are those it finished.")
             + (f" Run time {p['seconds_total'] / 60:.1f} min, load average "
                f"{p['load_average_start']:.1f} -> {p['load_average_end']:.1f}."
                if "seconds_total" in p else "") + "\n"]
    rows = []
    for k, r in p["methods"].items():
        rows.append([k + (f" (kappa {r['kappa']:g})" if r["kappa"] else ""),
                     r["success_agreement"], r["distortion_rel_diff"],
                     r.get("torch_threads_distortion_rel_diff", ""), r["n_both"],
                     r["mean_distortion_ppjax"], r["mean_distortion_torch"], r["steps_ppjax"],
                     r["steps_torch"], r["seconds_ppjax"], r["seconds_torch"]])
    lines.append(markdown_table(
        ["method", "success agreement", "distortion rel. diff", "torch vs torch (threads)",
         "both fooled", "mean dist. ppjax",
         "mean dist. torch", "steps ppjax", "steps torch", "s ppjax", "s torch"], rows))
    spread = [[k, r["distortion_rel_diff_median"], r.get("torch_threads_distortion_rel_diff_median",
                                                        ""),
               r["mean_distortion_rel_diff"], r.get("torch_threads_mean_distortion_rel_diff", "")]
              for k, r in p["methods"].items() if "distortion_rel_diff_median" in r]
    if spread:
        lines.append("\nThe spread over the images both fooled: median per-image relative "
                     "difference, and the relative difference of the mean distortions; each also "
                     "for the torch reference against itself (1 vs 2 threads):\n")
        lines.append(markdown_table(["method", "median rel. diff", "torch vs torch median",
                                     "means rel. diff", "torch vs torch means"], spread))
    f64 = [[f"{k} {who}", r[f"{who}_vs_f64_success_agreement"],
            r[f"{who}_vs_f64_distortion_rel_diff"], r[f"{who}_vs_f64_distortion_rel_diff_median"],
            r[f"{who}_vs_f64_mean_distortion_rel_diff"]]
           for k, r in p["methods"].items() for who in ("torch", "ppjax")
           if f"{who}_vs_f64_distortion_rel_diff" in r]
    if f64:
        lines.append("\nEach float32 implementation against the torch reference run in float64 "
                     "(model and arithmetic; the more exact trajectory of the same algorithm):\n")
        lines.append(markdown_table(["method, float32 run", "success agreement",
                                     "max rel. diff", "median rel. diff", "means rel. diff"], f64))
    f = p.get("ace_fused_eval")
    if f:
        lines.append(f"\nACE per step: fused (straight-through) {f['fused']['seconds_per_step']:.3g} s,"
                     f" continuous gradient + separate judgement (default, the original's) "
                     f"{f['continuous']['seconds_per_step']:.3g} s "
                     f"(x{f['ratio_continuous_over_fused']:.2f}); same success on "
                     f"{f['success_equal']:.0%} of the images, same 8-bit images on "
                     f"{f['images_equal']:.0%} ({f['pixels_equal']:.2%} of pixels), regulariser "
                     f"max rel. diff {f['distortion_rel_diff']:.2g}.\n")
    c = p.get("ciede2000_vs_authors")
    if c:
        lines.append(f"CIEDE2000 (Sharma) vs the PerC authors' neutral-colour nudge, 8 photos vs "
                     f"their Pillow JPEG-90 at 256x256 (mean dE {c['mean_pixel_de']:.3g}): per-pixel "
                     f"max |diff| {c['pixel_max_abs_diff']:.2g} on {c['pixel_share_differing']:.2%}"
                     f" of pixels; per-image L2 max rel. diff {c['image_l2_max_rel_diff']:.2g}.\n")
    t = p.get("torchattacks")
    if t:
        rows = [[k, r["success_agreement"], r["pixel_agreement"], r["success_ppjax"],
                 r["success_torch"], r.get("mean_l2_ppjax", ""), r.get("mean_l2_torch", ""),
                 r["seconds_ppjax"], r["seconds_torch"]] for k, r in t.items()]
        lines.append("torchattacks 3.5.1 (eps 4/255, step 1/255; C&W c=1, 50 Adam steps, no "
                     "search); pixel agreement = share of 8-bit values equal:\n")
        lines.append(markdown_table(["attack", "success agreement", "pixel agreement",
                                     "success ppjax", "success torch", "mean L2 ppjax",
                                     "mean L2 torch", "s ppjax", "s torch"], rows))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
