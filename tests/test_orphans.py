"""A run killed with kill -9 leaves no pool worker or fork server behind (they would hold the
caller's stdout/stderr pipes open and block whoever waits for the run's output)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ppjax.runs import orphans

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
import numpy as np
from ppjax.runs import pipeline
if __name__ == "__main__":
    w = pipeline.Writer(workers=2)
    w.submit(sys.argv[1], np.zeros((8, 8, 3), np.uint8)).result()
    print("ready", flush=True)
    time.sleep(300)
"""


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    kids = [int(x) for x in out.split()]
    return kids + [g for k in kids for g in _descendants(k)]


def test_killed_run_leaves_no_helper_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "x.png")],
                            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE,
                            text=True)
    try:
        proc.stdout.readline()
        helpers = _descendants(proc.pid)
        assert len(helpers) >= 3  # fork server + 2 workers (+ the resource tracker)
        assert all(orphans.alive(p) for p in helpers)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.time() + 10 * orphans.POLL_S + 10
        # the killed process stays a zombie (not reaped while we look): it counts as gone
        while time.time() < deadline and any(orphans.alive(p) for p in helpers):
            time.sleep(0.2)
        left = [p for p in helpers if orphans.alive(p)]
        assert not left, f"still alive after the run was killed: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # returns: nothing holds the pipe any more


def test_alive_sees_a_zombie_as_dead():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while orphans.alive(p.pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not orphans.alive(p.pid)  # exited, not yet reaped
    p.wait()
    assert orphans.alive(os.getpid())
