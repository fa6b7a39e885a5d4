"""``ppjax sweep``: its arguments and its entry; the work is in :mod:`ppjax.runs.sweep`."""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from pathlib import Path


def command(args) -> int:
    """Run ``ppjax sweep`` with the parsed ``args``; the exit code."""
    from ppjax.errors import SetupError
    from ppjax.runs.sweep import run_sweep
    from ppjax.runs.sweep_config import load_config

    try:
        cfg = load_config(args.config)
    except (ValueError, KeyError, OSError, tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise SetupError(f"{args.config}: {e.args[0] if isinstance(e, KeyError) else e}") from None
    if args.output:
        cfg = dataclasses.replace(cfg, output=args.output)
    if args.standin:
        cfg = dataclasses.replace(cfg, standin=True)
    if args.weights_dir:
        cfg = dataclasses.replace(cfg, weights_dir=args.weights_dir)
    rows = run_sweep(cfg)
    res = json.loads((Path(cfg.output) / "results.json").read_text())
    tag = "STAND-IN " if res.get("standin") else ""
    print(f"{tag}{len(rows)} rows in {Path(cfg.output) / 'results.csv'}; plot: "
          f"{Path(cfg.output) / 'pareto.png'}")
    for e in res.get("errors", []):
        print(f"{tag}error: {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if res.get("errors") else 0


def add_parser(sub) -> None:
    from ppjax.cli.help import HelpFormatter

    p = sub.add_parser("sweep", help="run a grid of attacks and values (resumable)",
                       formatter_class=HelpFormatter,
                       description="Run a grid of attacks and values; the config format is in the "
                                   "README (section Speed and scale) and ppjax.runs.sweep's docstring.")
    p.add_argument("config", help="TOML or JSON sweep config")
    p.add_argument("--output", default=None, help="output folder (default: the config's output)")
    p.add_argument("--standin", action="store_true",
                   help="random-weight STAND-IN judges (outputs are marked STAND-IN)")
    p.add_argument("--weights-dir", default=None,
                   help="converted weights (default: the config's, else $PPJAX_WEIGHTS_DIR or "
                        "~/.cache/ppjax/weights)")
    p.set_defaults(func=command)
