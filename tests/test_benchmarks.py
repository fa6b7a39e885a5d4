"""Every benchmark still runs (issue 27, item 6): ``python -m benchmarks.run_all --smoke`` runs each
``benchmarks.*`` module with its ``--smoke`` (tiny sizes, one round, no torch.compile) in one
sequence, so a refactor that breaks a benchmark fails here. The numbers mean nothing; the full
runs stay in ``make bench``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import NO_SMOKE, SMOKE

REPO = Path(__file__).resolve().parents[1]


def test_smoke_covers_every_benchmark_module():
    mains = {p.stem for p in (REPO / "benchmarks").glob("*.py")
             if "def main(" in p.read_text(encoding="utf-8")} - {"run_all", *NO_SMOKE}
    assert mains == set(SMOKE), "a benchmark module is missing from run_all.SMOKE"


@pytest.mark.bench_smoke
def test_every_benchmark_runs_small(tmp_path):
    results_md = REPO / "benchmarks" / "RESULTS.md"
    before = results_md.read_bytes()
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu",
               PPJAX_WEIGHTS_DIR=str(tmp_path / "weights"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--smoke", "--json",
                           str(tmp_path / "all.json")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    for name in SMOKE:  # each one ran to its end and wrote its JSON
        assert isinstance(json.loads((tmp_path / f"{name}.json").read_text()), dict), name
    assert results_md.read_bytes() == before  # a smoke run measures nothing
