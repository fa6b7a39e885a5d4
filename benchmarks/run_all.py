"""``make bench``: run every benchmark and collect their JSON under one directory.

Each benchmark writes its own JSON and its section of ``benchmarks/RESULTS.md``; a failing
benchmark is reported and the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
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
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default="out/bench/all.json", help="summary JSON path")
    p.add_argument("--only", default=None, help="comma-separated subset of: "
                   + ",".join(b for b, _ in BENCHMARKS))
    a = p.parse_args(argv)
    out = Path(a.json).parent
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(a.only.split(",")) if a.only else None
    failed = []
    for name, extra in BENCHMARKS:
        if wanted and name not in wanted:
            continue
        t0 = time.time()
        print(f"== benchmarks.{name}", flush=True)
        rc = subprocess.call([sys.executable, "-m", f"benchmarks.{name}",
                              "--json", str(out / f"{name}.json"), *extra])
        print(f"== benchmarks.{name}: rc={rc} in {time.time() - t0:.0f}s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
