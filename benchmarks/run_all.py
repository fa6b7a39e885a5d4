"""``make bench``: run every benchmark and collect their JSON under one directory.

Each benchmark writes its own JSON and its section of ``benchmarks/RESULTS.md``; a failing
benchmark is reported and the others still run.

``--smoke`` runs every benchmark module (:data:`SMOKE`), each with its own ``--smoke`` (tiny
sizes, one round, no torch.compile, RESULTS.md untouched), sharing one folder of stand-in
weights: a check that none is broken (``tests/test_benchmarks.py``), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = [
    ("jpeg_fidelity", []),
    ("jpeg_survival", []),
    # the Places365 zoo judges have their parity and speed in benchmarks.transfer
    ("judges", ["--judges", "resnet50_places365,koncept512,nima_mobilenet,nima_mobilenetv2"]),
    ("attacks", []),
    ("throughput", []),
    ("transfer", []),
    ("faces", []),
]

#: every benchmark module, as ``--smoke`` runs them (cheapest first)
SMOKE = ["jpeg_survival", "colour_speed", "time_to_protect", "attacks", "methods", "methods_speed",
         "transfer", "judges", "throughput", "jpeg_fidelity", "pipeline", "faces"]
#: benchmark modules without a smoke run here: GPU measurements (benchmarks/gpu_check.sh)
NO_SMOKE = {"gpu": "GPU only (benchmarks/gpu_check.sh)",
            "gpu_env": "GPU only (benchmarks/gpu_check.sh)"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="out/bench/all.json", help="summary JSON path")
    p.add_argument("--only", default=None, help="comma-separated subset of: "
                   + ",".join(b for b, _ in BENCHMARKS))
    p.add_argument("--smoke", action="store_true",
                   help="run every benchmark module tiny (each with --smoke): a check, not numbers")
    a = p.parse_args(argv)
    out = Path(a.json).parent
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(a.only.split(",")) if a.only else None
    plan = [(n, ["--smoke"]) for n in SMOKE] if a.smoke else BENCHMARKS
    env = dict(os.environ)
    if a.smoke and not env.get("PPJAX_WEIGHTS_DIR"):  # stand-ins made once, shared
        env["PPJAX_WEIGHTS_DIR"] = tempfile.mkdtemp(prefix="ppjax-smoke-weights-")
    failed = []
    for name, extra in plan:
        if wanted and name not in wanted:
            continue
        t0 = time.time()
        print(f"== benchmarks.{name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}",
                              "--json", str(out / f"{name}.json"), *extra], env=env)
        print(f"== benchmarks.{name}: rc={rc} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
