"""Transfer: the Places365 zoo judges' parity and attack speed, and the PGD transfer matrix.

    python -m benchmarks.transfer --json PATH [--weights-dir DIR] [--batch 4] [--steps 10]
        [--judges a,b] [--ensemble a,b] [--boosters pgd/di,...] [--booster-source NAME]
        [--section NAME] [--no-results-md]

* **Parity** of every zoo judge added for transfer (resnet18, wideresnet18, densenet161, alexnet):
  the torch replica of ``benchmarks/torch_ref/places365_zoo.py`` with random weights and randomised
  BatchNorm statistics is saved in the CSAIL file layout, converted by the real converter and run
  beside ppjax on the shared photos (256x256, ImageNet mean/std, float32):
  ``parity_max_abs_diff`` = max |logit difference| (DenseNet-161 at batch 1, others at 2).
* **Attack throughput** per judge: plain PGD (Linf, eps 8/255, no early stop, the final iterate
  kept), float32, XLA
  backend, Python driver; first call (compile + run) and second call (run) timed apart; img*it/s
  = batch * steps / second call.
* **Ensembles**: PGD with ``ensemble_logits`` and ``ensemble_losses`` over ``--ensemble``
  (equal weights) adds two rows to the matrix and two rows to the speed table.
* **Boosters**: one row per transfer booster (``--boosters``, attack/preset names of the
  registry: DI, TI, MI, VMI, SGM), each run against ``--booster-source`` (a ResNet-family judge, as
  SGM needs) with the same eps, steps and no early stop, the final iterate kept; one timed call
  each (compile included).
* **Transfer matrix** for plain PGD: the images protected against judge X (rows) are judged by
  every judge Y (columns); cell = top-1 accuracy drop, with each judge's clean top-1 as the
  label. Judges with real converted weights in ``--weights-dir`` are used as such, the others
  as random-weight STAND-INs, and the output says so: transfer rates between random networks
  are meaningless (random networks share no features).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import _results

ZOO_NEW = ("resnet18_places365", "wideresnet18_places365", "densenet161_places365",
           "alexnet_places365")
MATRIX_JUDGES = ("resnet50_places365", *ZOO_NEW)
PARITY_BATCH = {"densenet161_places365": 1}
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def parity(name: str, x01: np.ndarray, tmp: Path) -> dict:
    """max |logit diff| between the torch replica and its converted ppjax judge."""
    import jax
    import torch

    from benchmarks.torch_ref.places365_zoo import build
    from ppjax import load_judge
    from ppjax.convert import get_converter
    from ppjax.judges import get_spec

    model = build(name)
    conv = get_converter(get_spec(name).converter)  # a registry key, not a module path
    src = tmp / get_spec(name).filename
    torch.save(conv.csail_layout(model.state_dict()), src)
    conv.convert(src, weights_dir=tmp)
    judge = load_judge(name, weights_dir=tmp)
    x = x01[:PARITY_BATCH.get(name, 2)]
    with torch.no_grad():
        t = model(torch.from_numpy(((x - MEAN) / STD).transpose(0, 3, 1, 2).copy())).numpy()
    j = np.asarray(jax.jit(lambda jd, a: jd(a))(judge, x))
    return {"judge": name, "batch": len(x), "parity_max_abs_diff": float(np.abs(j - t).max()),
            "reference_logit_std": float(t.std()),
            "top1_agree": bool((j.argmax(-1) == t.argmax(-1)).all())}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def load(name: str, weights_dir) -> tuple:
    """The real converted judge when present, else its STAND-IN."""
    from ppjax import load_judge

    try:
        return load_judge(name, weights_dir), False
    except FileNotFoundError:
        return load_judge(name, weights_dir, standin=True), True


BOOSTERS = ("pgd/di", "pgd/ti", "mifgsm/default", "mifgsm/vmi", "pgd/sgm", "mifgsm/all")


def attack_and_time(judge, x, steps: int, label: str | None = None, labels=None,
                    attack: str = "pgd", timed: bool = True, **kw) -> tuple[np.ndarray, dict]:
    """``attack`` ("name" or "name/preset") against ``judge`` without early stop; timed twice
    (compile apart) unless ``timed`` is False (one call, compile included)."""
    import jax

    import ppjax

    name, _, preset = attack.partition("/")
    kw.setdefault("best", "final")  # every step taken, the final iterate (as torchattacks)

    def once():
        t0 = time.perf_counter()
        res = ppjax.attack(name, judge, x, labels, preset=preset or None, driver="python",
                           backend="xla", steps=steps, early_stop=False, **kw)
        jax.block_until_ready(res.images)
        return res, time.perf_counter() - t0

    res, t1 = once()
    if timed:
        res, t2 = once()
    else:
        t2 = t1
    b = x.shape[0]
    return np.asarray(res.images), {
        "judge": label or judge.spec.name, "standin": bool(judge.standin), "batch": b,
        "steps": steps,
        "first_call_s": t1, "run_s": t2, "compile_s": max(t1 - t2, 0.0),
        "pgd_img_it_per_s": b * steps / t2, "success_8bit": float(np.mean(res.success))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--weights-dir", default=None,
                   help="converted judges; real weights there are used, else stand-ins "
                        "(default: a temporary directory, i.e. stand-ins only)")
    p.add_argument("--judges", default=",".join(MATRIX_JUDGES),
                   help="judges of the matrix (comma-separated)")
    p.add_argument("--ensemble", default="resnet50_places365,densenet161_places365,alexnet_places365",
                   help="members of the ensemble rows (equal weights; loss averaged over logits "
                        "and over losses); '' = none")
    p.add_argument("--boosters", default=",".join(BOOSTERS),
                   help="booster rows: attack/preset names run against --booster-source; '' = none")
    p.add_argument("--booster-source", default="resnet50_places365",
                   help="the judge the booster rows attack (ResNet family for SGM)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-results-md", dest="results_md", action="store_false")
    p.add_argument("--section", default="transfer",
                   help="section of benchmarks/RESULTS.md to write (default: transfer)")
    _results.add_smoke(p)
    args = p.parse_args(argv)
    _results.apply_smoke(args, judges="resnet18_places365,alexnet_places365", ensemble="",
                         boosters="", booster_source="resnet18_places365", batch=1, steps=1,
                         results_md=False)
    if args.batch < 1 or args.steps < 1:
        p.error("--batch and --steps must be >= 1")
    import jax
    import jax.numpy as jnp

    from ppjax.runs import plots, transfer

    names = transfer.parse_judges(args.judges)
    members = transfer.parse_judges(args.ensemble) if args.ensemble else []
    if set(members) - set(names):
        p.error(f"ensemble members must be judges of the matrix: {set(members) - set(names)}")
    t0 = time.perf_counter()
    x01 = _results.shared_photos(max(args.batch, 2))
    with tempfile.TemporaryDirectory() as tmp:
        par = []
        for name in ZOO_NEW[:1] if args.smoke else ZOO_NEW:
            d = Path(tmp) / f"parity_{name}"
            d.mkdir()
            par.append(parity(name, x01, d))
            print(f"{name}: parity max |logit diff| {par[-1]['parity_max_abs_diff']:.2e} "
                  f"(logit std {par[-1]['reference_logit_std']:.2f})", flush=True)
        wdir = args.weights_dir or tmp
        judges = {n: load(n, wdir)[0] for n in names}
        x = jnp.asarray(x01[:args.batch])
        fn = jax.jit(lambda j, a: jnp.argmax(j(a), -1))
        clean = {n: np.asarray(fn(j, x)) for n, j in judges.items()}
        speed, drop = [], []
        for n in names:
            adv, s = attack_and_time(judges[n], x, args.steps)
            speed.append(s)
            print(f"{judges[n].label}: PGD {s['pgd_img_it_per_s']:.2f} img*it/s "
                  f"(compile {s['compile_s']:.1f}s), white-box success {s['success_8bit']:.2f}",
                  flush=True)
            xa = jnp.asarray(adv)
            drop.append([float(np.mean(np.asarray(fn(judges[m], xa)) != clean[m])) for m in names])
        rows = list(names)
        if members:
            from ppjax.attacks.ensembles import ensemble_members

            main, extra, hyper = ensemble_members([judges[m] for m in members])
            # one label for all members: the first member's clean top-1
            for reduce in ("logits", "losses"):
                label = f"ensemble_{reduce}({'+'.join(m.replace('_places365', '') for m in members)})"
                adv, s = attack_and_time(main, x, args.steps, label, clean[members[0]],
                                         objective=f"ensemble_{reduce}", hyper=hyper,
                                         extra_judges=extra)
                speed.append(s)
                print(f"{label}: PGD {s['pgd_img_it_per_s']:.2f} img*it/s, success on every "
                      f"member {s['success_8bit']:.2f}", flush=True)
                xa = jnp.asarray(adv)
                drop.append([float(np.mean(np.asarray(fn(judges[m], xa)) != clean[m]))
                             for m in names])
                rows.append(label)
        boosters = [b for b in args.boosters.split(",") if b] if args.boosters else []
        if boosters and args.booster_source not in judges:
            p.error(f"--booster-source {args.booster_source} is not a judge of the matrix")
        for b in boosters:
            src = judges[args.booster_source]
            label = f"{args.booster_source.replace('_places365', '')} {b}"
            adv, s = attack_and_time(src, x, args.steps, label, attack=b, timed=False)
            s["compile_s"] = None  # one call: run_s includes compilation
            speed.append(s)
            print(f"{label}: {s['pgd_img_it_per_s']:.2f} img*it/s (compile included), "
                  f"white-box success {s['success_8bit']:.2f}", flush=True)
            xa = jnp.asarray(adv)
            drop.append([float(np.mean(np.asarray(fn(judges[m], xa)) != clean[m])) for m in names])
            rows.append(label)
    standin = any(j.standin for j in judges.values())
    matrix = {"standin": standin, "note": transfer.TRANSFER_STANDIN if standin else None,
              "metric": "top-1 accuracy drop (clean top-1 of each judge as the label)",
              "rows": rows, "columns": names, "drop": drop,
              "boosters": {"source": args.booster_source, "rows": boosters},
              "ensemble": {"members": members, "weights": "equal",
                           "label": f"clean top-1 of {members[0]}" if members else None},
              "judges": {n: j.label for n, j in judges.items()}}
    wall = time.perf_counter() - t0
    payload = {"benchmark": "transfer", "machine": _results.machine(), "cpu_model": cpu_model(),
               "args": vars(args),
               "wall_s": wall, "parity": par, "attack_speed": speed,
               "transfer_matrix_pgd": matrix,
               "parity_max_abs_diff": {r["judge"]: r["parity_max_abs_diff"] for r in par}}
    _results.write_json(args.json, payload)
    if args.json:
        plots.transfer_heatmap(matrix, Path(args.json).with_suffix(".png"))
    md = markdown(payload)
    print(md)
    if args.results_md:
        _results.update_section(args.section, md)
    return 0


def markdown(payload: dict) -> str:
    from ppjax.runs import transfer

    m, a = payload["machine"], payload["args"]
    mat = payload["transfer_matrix_pgd"]
    cmd = ("python -m benchmarks.transfer" + f" --batch {a['batch']} --steps {a['steps']}"
           + f" --judges {a['judges']}" + (f" --ensemble {a['ensemble']}" if a.get("ensemble")
                                            else "")
           + (f" --boosters {a['boosters']} --booster-source {a['booster_source']}"
              if a.get("boosters") else ""))
    title = "Transfer, ensembles and boosters" if a.get("boosters") else "Transfer"
    out = [f"## {title} (`python -m benchmarks.transfer`)", "", f"`{cmd}`", "",
           f"{m['date']}, {payload['cpu_model']} ({m['cpus']} CPUs, shared), jax {m['jax']} "
           f"{m['backend']}; {payload['wall_s']:.0f} s in all.", "",
           "Parity of the Places365 zoo judges (torch replica with random weights and randomised "
           "BatchNorm statistics, CSAIL layout, real converter; shared photos 256x256, float32):",
           "", _results.markdown_table(
               ["judge", "batch", "max abs logit diff", "logit std (reference)", "top-1 agree"],
               [[r["judge"], r["batch"], f"{r['parity_max_abs_diff']:.2e}",
                 r["reference_logit_std"], r["top1_agree"]] for r in payload["parity"]]),
           "", f"PGD (Linf 8/255, {a['steps']} steps, no early stop) per judge, batch "
           f"{a['batch']}, float32, XLA backend, Python driver; run s = the whole compiled attack "
           "(start, steps, final 8-bit check), compile s = first call minus second; img*it/s = "
           "batch x steps / run s:", "",
           _results.markdown_table(
               ["judge", "compile s", "run s", "PGD img*it/s", "white-box success"],
               [[mat["judges"].get(r["judge"], r["judge"] + (" (STAND-IN)" if r["standin"] else "")),
                 "n/a" if r["compile_s"] is None else r["compile_s"], r["run_s"],
                 r["pgd_img_it_per_s"],
                 r["success_8bit"]] for r in payload["attack_speed"]]),
           "", "Transfer matrix, plain PGD, ensembles and boosters (rows: protected against; "
           "columns: judged by; top-1 accuracy drop):", ""]
    if mat["standin"]:
        out += [f"**{transfer.TRANSFER_STANDIN}**", ""]
    if mat["ensemble"]["members"]:
        out += ["Ensemble rows: one PGD against all members at once (equal weights; "
                "`ensemble_logits` averages their logits, `ensemble_losses` their cross-entropies; "
                f"label: the {mat['ensemble']['label']}, one label for every member); the other columns "
                "are held out. Stand-in members disagree on the clean images, so the label is "
                "already wrong for some of them before the attack.", ""]
    if mat.get("boosters", {}).get("rows"):
        out += [f"Booster rows: each attack/preset of the registry against "
                f"{mat['boosters']['source']} (same eps and steps, no early stop, the final "
                "iterate; their speed rows are one call with compilation included, compile s "
                "n/a). With stand-ins these rows only show that each booster runs end to end.",
                ""]
    out.append(_results.markdown_table(
        ["protected against \\ judged by"] + [c.replace("_places365", "") for c in mat["columns"]],
        [[r.replace("_places365", "")] + [f"{v:.2f}" for v in row]
         for r, row in zip(mat["rows"], mat["drop"], strict=True)]))
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
