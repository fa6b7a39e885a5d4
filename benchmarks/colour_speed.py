"""The CIEDE2000 distance's speed against torch (issue 26: PerC-AL's per-step gap).

    python -m benchmarks.colour_speed --json PATH [--batch 8] [--size 256] [--rounds 7]

PerC-AL differentiates the PerC distance (the L2 norm of the CIEDE2000 map, sRGB -> CIELAB under
D65) of the whole batch on every step. This times ``ppjax.image.color.ciede2000_l2`` (jitted:
its value, and its value with the gradient) against the torch reference PerC-AL is compared
with (``tests/torch_attack_ref.perc_distance``, autograd), on the same photos, in the same run,
interleaved rounds, best of each. It also times the elementary functions XLA runs per element
on CPU next to the vectorisable versions of ``ppjax.image.fastmath``, which is why the colour
code uses the latter.

Fields: ``ratio_vs_torch`` (torch's value+gradient time over ppjax's), ``ratio_value``,
``ppjax_grad_ms``, ``torch_grad_ms``, ``ppjax_value_ms``, ``torch_value_ms``,
``elementwise_ms`` ({name: {"xla": ms, "fastmath": ms}} per ``--batch``x``--size``^2 floats),
and ``max_abs_grad_diff`` / ``max_grad`` (ppjax's gradient against torch's float64 one).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._results import (
    add_smoke,
    apply_smoke,
    machine,
    markdown_table,
    update_section,
    write_json,
)
from ppjax import bench
from ppjax.image import fastmath
from ppjax.image.color import ciede2000_l2


def _photos(n: int, size: int) -> tuple[np.ndarray, str]:
    from benchmarks._results import shared_photos

    try:
        return np.asarray(shared_photos(n, (size, size)), np.float32), "shared photos"
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        return rng.random((n, size, size, 3), np.float32), "random pixels (no shared photos)"


def elementwise(shape, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    pos = jnp.asarray(rng.uniform(0.05, 1.0, shape).astype(np.float32))
    sgn = jnp.asarray(rng.uniform(-1.0, 1.0, shape).astype(np.float32))
    pairs = {
        "cbrt": (jnp.cbrt, fastmath.cbrt, (pos,)),
        "pow_2.4": (lambda u: u ** 2.4, lambda u: fastmath.pow_pos(u, 2.4), (pos,)),
        "atan2": (jnp.arctan2, fastmath.atan2, (sgn, pos)),
        "sin_and_cos": (lambda v: (jnp.sin(3 * v), jnp.cos(3 * v)), lambda v: fastmath.sincos(3 * v),
                        (sgn,)),
        "exp (reference)": (jnp.exp, jnp.exp, (sgn,)),
    }
    out = {}
    for name, (xla_fn, fast_fn, args) in pairs.items():
        row = {}
        for side, fn in (("xla", xla_fn), ("fastmath", fast_fn)):
            f = jax.jit(fn)
            row[side] = 1e3 * bench.best_of(lambda f=f, args=args: f(*args), repeats)
        out[name] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-results-md", action="store_true", help="do not update benchmarks/RESULTS.md")
    add_smoke(ap)
    a = ap.parse_args(argv)
    apply_smoke(a, batch=2, size=32, rounds=1, no_results_md=True)

    import torch

    from tests import torch_attack_ref as ref

    x0, source = _photos(a.batch, a.size)
    noise = np.random.default_rng(2).uniform(-3 / 255, 3 / 255, x0.shape).astype(np.float32)
    x = np.clip(x0 + noise, 0, 1)
    j0, jx = jnp.asarray(x0), jnp.asarray(x)
    value = jax.jit(lambda v: jnp.sum(ciede2000_l2(v, j0)))
    grad = jax.jit(jax.value_and_grad(lambda v: jnp.sum(ciede2000_l2(v, j0))))
    t0 = torch.from_numpy(x0.copy())

    def torch_grad():
        tx = torch.from_numpy(x.copy()).requires_grad_(True)
        return torch.autograd.grad(ref.perc_distance(tx, t0).sum(), tx)[0]

    def torch_value():
        with torch.no_grad():
            return ref.perc_distance(torch.from_numpy(x.copy()), t0).sum()

    runs = {"ppjax_grad": lambda: grad(jx), "torch_grad": torch_grad,
            "ppjax_value": lambda: value(jx), "torch_value": torch_value}
    engines = [bench.Engine(k, k.split("_")[0], f, a.batch, bench.timed_first(f))
               for k, f in runs.items()]                      # the first call compiles / warms
    ms = {k: 1e3 * min(v) for k, v in bench.interleaved(engines, a.rounds).items()}

    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    g64 = torch.autograd.grad(ref.perc_distance(tx, torch.tensor(x0, dtype=torch.float64)).sum(),
                              tx)[0].numpy()
    gj = np.asarray(grad(jx)[1])
    result = {
        "machine": machine(), "images": source, "batch": a.batch, "size": a.size,
        "rounds": a.rounds, "torch_threads": torch.get_num_threads(),
        "ppjax_grad_ms": ms["ppjax_grad"], "torch_grad_ms": ms["torch_grad"],
        "ppjax_value_ms": ms["ppjax_value"], "torch_value_ms": ms["torch_value"],
        "ratio_vs_torch": ms["torch_grad"] / ms["ppjax_grad"],
        "ratio_value": ms["torch_value"] / ms["ppjax_value"],
        "max_abs_grad_diff": float(np.abs(gj - g64).max()), "max_grad": float(np.abs(g64).max()),
        "elementwise_ms": elementwise((a.batch, a.size, a.size), max(1, a.rounds)),
    }
    write_json(a.json, result)
    rows = [["value + gradient", ms["ppjax_grad"], ms["torch_grad"], result["ratio_vs_torch"]],
            ["value", ms["ppjax_value"], ms["torch_value"], result["ratio_value"]]]
    ew = [[k, v["xla"], v["fastmath"], v["xla"] / v["fastmath"]]
          for k, v in result["elementwise_ms"].items()]
    text = (f"PerC distance on [{a.batch}, {a.size}, {a.size}, 3] ({source}), "
            f"{result['machine']['cpu'].get('model', '?')}, {result['machine']['date']}, "
            f"best of {a.rounds} interleaved rounds, torch {result['torch_threads']} threads.\n\n"
            + markdown_table(["", "ppjax ms", "torch ms", "torch / ppjax"], rows)
            + f"\n\nGradient against torch float64: max |diff| {result['max_abs_grad_diff']:.3g} "
              f"(max |grad| {result['max_grad']:.3g}).\n\nElementary functions on "
              f"{a.batch * a.size * a.size} float32 values (XLA's own, and ppjax.image.fastmath):\n\n"
            + markdown_table(["function", "XLA ms", "fastmath ms", "ratio"], ew))
    print(text)
    if not a.no_results_md:
        update_section("colour_speed", "## CIEDE2000 gradient (`python -m benchmarks.colour_speed`)\n\n"
                       + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
