"""Time to protect a set of images: ppjax PGD with per-image early stop against a fixed-step
PyTorch PGD of the same strength (eps, step size, step budget), in the same process.

Both attack the same images (real photos, cut to the judge's size) with untargeted L-inf PGD
(cross-entropy, sign steps, no random start) against the judge's clean top-1 label; success is
counted on the 8-bit rounded result. ppjax stops each batch once every image in it has
succeeded; torch always runs the whole budget (the usual research-code loop). Reported: wall
seconds (ppjax once with compilation, once warm), success rates and the ratio.

    python -m benchmarks.time_to_protect --json out.json [--images DIR] [--n 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import _results

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def load_photos(folder: Path, hw, n: int) -> np.ndarray:
    """``n`` distinct [H, W, 3] crops in [0, 1] (8-bit values) from the photos in ``folder``."""
    from ppjax.runs.data import path_items

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import photos_at

    return photos_at([Path(it.path) for it in path_items([folder])], hw, n)


def run(args) -> dict:
    import jax.numpy as jnp
    import torch

    from benchmarks import torch_models
    from ppjax import load_judge
    from ppjax.attacks import attack

    weights = args.weights_dir or tempfile.mkdtemp(prefix="ppjax-ttp-")
    judge = load_judge("resnet50_places365", weights_dir=weights, standin=True)
    unfolded = judge
    x = load_photos(Path(args.images), judge.spec.input_hw, args.n)
    x = np.round(x * 255) / 255
    eps, alpha = args.eps / 255, args.step / 255

    # torch: the same weights, best torch configuration (channels-last, bf16 autocast)
    net = torch_models.resnet50(365).eval()
    torch_models.load_from_judge(net, unfolded)
    if args.fold:
        from ppjax.accel.fold import fold_bn

        judge = fold_bn(judge)
    model = torch_models.with_normalisation(net, channels_last=True).to(
        memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    xt = torch.from_numpy(x.astype(np.float32))
    with torch.no_grad():
        labels_t = model(xt).argmax(-1)
    labels = labels_t.numpy().astype(np.int32)

    def torch_pgd():
        xs = []
        for s in range(0, args.n, args.batch):
            x0, lab = xt[s:s + args.batch], labels_t[s:s + args.batch]
            xa = x0.clone()
            for _ in range(args.steps):
                xa = xa.detach().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.torch_f32):
                    out = model(xa)
                loss = torch.nn.functional.cross_entropy(out.float(), lab, reduction="sum")
                (g,) = torch.autograd.grad(loss, xa)
                xa = torch.minimum(torch.maximum(xa.detach() + alpha * g.sign(), x0 - eps),
                                   x0 + eps).clamp(0, 1)
            xs.append(torch.round(xa * 255) / 255)
        with torch.no_grad():
            adv = torch.cat(xs)
            return (model(adv).argmax(-1) != labels_t).float().mean().item()

    def ppjax_pgd():
        succ, steps = [], []
        for s in range(0, args.n, args.batch):
            r = attack("pgd", judge, x[s:s + args.batch], labels[s:s + args.batch], eps=eps,
                       step_size=alpha, steps=args.steps, random_start=False, early_stop=True,
                       driver=args.driver, dtype=jnp.bfloat16 if args.bf16 else None)
            succ.append(np.asarray(r.success))
            steps.append(np.asarray(r.steps))
        return float(np.mean(np.concatenate(succ))), float(np.mean(np.concatenate(steps)))

    from ppjax.attacks import count_traces

    t0 = time.perf_counter()
    ppjax_first = ppjax_pgd()
    ppjax_cold = time.perf_counter() - t0
    torch_pgd()  # warm-up (first-call allocations)
    torch_times, ppjax_times = [], []
    with count_traces() as traces:
        for _ in range(args.rounds):  # interleaved: load on a shared machine hits both alike
            t0 = time.perf_counter()
            torch_success = torch_pgd()
            torch_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ppjax_success, mean_steps = ppjax_pgd()
            ppjax_times.append(time.perf_counter() - t0)
    if sum(traces.values()):
        raise RuntimeError("the warm ppjax runs recompiled")
    assert ppjax_first[0] == ppjax_success
    torch_s, ppjax_warm = float(np.median(torch_times)), float(np.median(ppjax_times))
    return {"images": args.n, "batch": args.batch, "eps_255": args.eps, "step_255": args.step,
            "steps_budget": args.steps, "driver": args.driver, "fold": args.fold,
            "ppjax_config": _ppjax_config(args),
            "rounds": args.rounds,
            "torch_config": "eager f32" if args.torch_f32 else "eager channels-last bf16",
            "torch_seconds": torch_s, "torch_success": torch_success,
            "ppjax_seconds_warm": ppjax_warm, "ppjax_seconds_with_compile": ppjax_cold,
            "ppjax_success": ppjax_success, "ppjax_mean_steps": mean_steps,
            "ratio_warm": ppjax_warm / torch_s, "ratio_with_compile": ppjax_cold / torch_s}


def _ppjax_config(args) -> str:
    if not args.bf16:
        return "f32, XLA" + (", BN folded" if args.fold else "")
    from ppjax.accel import onednn

    backend = "oneDNN" if onednn.available() else "XLA"
    return f"bf16, {backend}" + (", BN folded" if args.fold else "")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=None)
    p.add_argument("--images", default=str(DEFAULT_IMAGES))
    p.add_argument("--n", type=int, default=8, help="images")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eps", type=float, default=8.0, help="L-inf radius in 1/255")
    p.add_argument("--step", type=float, default=2.0, help="step size in 1/255")
    p.add_argument("--steps", type=int, default=10, help="step budget")
    p.add_argument("--driver", default="auto")
    p.add_argument("--f32", dest="bf16", action="store_false",
                   help="ppjax judge in f32 (default: bf16, which takes the oneDNN/AMX path on "
                        "CPU, like torch's channels-last bf16 autocast)")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="keep BatchNorm unfolded in the ppjax judge")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--torch-f32", action="store_true")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--no-results-md", dest="results_md", action="store_false")
    _results.add_smoke(p)
    args = p.parse_args(argv)
    _results.apply_smoke(args, n=1, batch=1, steps=1, rounds=1, results_md=False)
    res = run(args)
    meta = _results.machine()
    _results.write_json(args.json, {"machine": meta, "result": res})
    md = (f"Measured {meta['date']}, {meta['cpus']} CPUs, ResNet-50 stand-in weights, "
          f"{res['images']} images, L-inf PGD eps {res['eps_255']}/255, step "
          f"{res['step_255']}/255, budget {res['steps_budget']} steps.\n\n" +
          _results.markdown_table(
              ["engine", "seconds", "success", "mean steps", "ratio"],
              [[f"torch fixed-step ({res['torch_config']})", res["torch_seconds"],
                res["torch_success"], res["steps_budget"], 1.0],
               [f"ppjax early stop, {res['ppjax_config']}, driver {res['driver']} (warm)",
                res["ppjax_seconds_warm"],
                res["ppjax_success"], res["ppjax_mean_steps"], res["ratio_warm"]],
               ["ppjax early stop (incl. compilation)", res["ppjax_seconds_with_compile"],
                res["ppjax_success"], res["ppjax_mean_steps"], res["ratio_with_compile"]]]))
    print(md)
    if args.results_md:
        _results.update_section("time_to_protect", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
