"""``ppjax bench``: its arguments and its entry; the work is in :mod:`ppjax.bench`."""

from __future__ import annotations

import json
import sys


def _settings(args):
    """The parsed ``args`` as :class:`ppjax.bench.BenchSettings`, every problem at once."""
    from ppjax.attacks import ATTACKS, resolve_attack
    from ppjax.bench import BenchSettings, parse_attack
    from ppjax.errors import SetupError
    from ppjax.judges import JUDGES

    problems = []
    if args.judge not in JUDGES:
        problems.append(f"--judge: unknown judge {args.judge!r}; choose one of {', '.join(JUDGES)}")
    attacks = tuple(a for a in args.attacks.split(",") if a)
    for a in attacks:
        try:
            resolve_attack(*parse_attack(a))
        except (KeyError, ValueError) as e:
            problems.append(f"--attacks: {a!r}: {e.args[0] if e.args else e} (attacks: "
                            f"{', '.join(ATTACKS)}; presets as name/preset)")
    if not attacks:
        problems.append("--attacks: name at least one attack")
    for flag in ("batch", "steps", "rounds"):
        if getattr(args, flag) < 1:
            problems.append(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    size = None
    if args.size:
        try:
            h, w = (int(v) for v in args.size.lower().split("x"))
            size = (h, w)
        except ValueError:
            problems.append(f"--size: expected HxW (e.g. 64x64), got {args.size!r}")
    if problems:
        raise SetupError(problems)
    return BenchSettings(judge=args.judge, attacks=attacks, batch=args.batch, steps=args.steps,
                         rounds=args.rounds, dtype=args.dtype, standin=args.standin,
                         weights_dir=args.weights_dir, size=size, torch=args.torch,
                         gemm_n=args.gemm_n)


def command(args) -> int:
    """Run ``ppjax bench`` with the parsed ``args``; the exit code."""
    from ppjax.bench import bench, plot, table
    from ppjax.errors import SetupError

    s = _settings(args)
    try:
        payload = bench(s, log=lambda m: print(m, file=sys.stderr, flush=True))
    except FileNotFoundError as e:  # weights not converted: the message says how
        raise SetupError(str(e)) from None
    except ModuleNotFoundError as e:  # making a stand-in writes a torch checkpoint
        if e.name != "torch":
            raise
        raise SetupError("--standin needs torch to create the stand-in weights the first time: "
                         "pip install 'ppjax[convert]' (or convert real weights: ppjax fetch)"
                         ) from None
    print(table(payload))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, default=float)
    if args.plot:
        plot(payload, args.plot)
    return 0


def add_parser(sub) -> None:
    from ppjax.cli.help import HelpFormatter
    from ppjax.names import JUDGE_NAMES

    p = sub.add_parser("bench", help="measure attack throughput on this machine (img·it/s)",
                       formatter_class=HelpFormatter,
                       description="Measure attacks on whatever device JAX sees: steady-state "
                                   "img·it/s, first-call compile time, peak memory and the share "
                                   "of the device's peak FLOP/s; beside the torch originals when "
                                   "torch and a ppjax checkout are importable.")
    p.add_argument("--judge", required=True, metavar="JUDGE",
                   help=f"judge name: {', '.join(JUDGE_NAMES)}")
    p.add_argument("--attacks", default="pgd,cw_l2,ace",
                   help="comma-separated attacks, name or name/preset (e.g. mifgsm/all)")
    p.add_argument("--batch", type=int, default=64, help="images per call")
    p.add_argument("--steps", type=int, default=10, help="iterations per timed call")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (median)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: bfloat16 where it runs natively, else float32)")
    p.add_argument("--standin", action="store_true",
                   help="random-weight STAND-IN judge (speed only; outputs say STAND-IN)")
    p.add_argument("--weights-dir", default=None, help="converted weights (default: the cache)")
    p.add_argument("--size", default=None,
                   help="HxW input size instead of the judge's (ResNets take any size)")
    p.add_argument("--no-torch", dest="torch", action="store_false",
                   help="skip the torch side (run by default where torch is installed)")
    p.add_argument("--gemm-n", type=int, default=4096, help="side of the peak-FLOP/s GEMM (CPU)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--plot", default=None, help="write a bar chart here (PNG)")
    p.set_defaults(func=command)
