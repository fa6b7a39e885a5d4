"""Progress that tells the truth (:mod:`ppjax.runs.progress`): compiling is its own phase shown
before any image, the bar moves per chunk, the ETA comes from the steady-state rate (compile time
excluded), and log lines print above the bar, not onto its line."""

from __future__ import annotations

import io
import logging

import pytest

from ppjax.runs.progress import ProtectProgress, fmt_eta, redirected


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _lines(buf: io.StringIO) -> list[str]:
    return [x.strip() for x in buf.getvalue().replace("\r", "\n").splitlines() if x.strip()]


def test_compiling_phase_then_per_chunk_and_steady_state_eta():
    clock, buf = Clock(), io.StringIO()
    bar = ProtectProgress(total=10, desc="protect T", file=buf, clock=clock)
    first = _lines(buf)[-1]
    assert "compiling the attack" in first and "images 0/10" in first
    clock.t = 60.0  # a minute of compilation: the first chunk is dispatched only now
    bar.chunk(4)
    assert bar.compile_seconds == 60.0
    line = _lines(buf)[-1]
    assert line.startswith("protect T") and "4it" in line and "images 0/10" in line
    for _ in range(9):  # the bar moves with every chunk, before any image is done
        clock.t += 0.5
        bar.chunk(4)
    assert bar.iterations == 40 and "40it" in _lines(buf)[-1]
    assert bar.eta_seconds() is None  # no image finished yet: no rate to extrapolate
    bar.image(ok=True, success=True)
    bar.image(ok=True, success=False)
    # 2 images in 4.5 s since compilation ended: 8 left at 0.444 img/s -> 18 s; the 60 s of
    # compilation would have made it 8 / (2 / 64.5) = 258 s
    assert bar.eta_seconds() == pytest.approx(8 / (2 / 4.5))
    line = _lines(buf)[-1]
    assert "images 2/10" in line and "success 1/2 (50.0%)" in line and "ETA 0:18" in line
    bar.close()


def test_log_lines_go_above_the_bar(capsys):
    log = logging.getLogger("ppjax.test_progress")
    handler = logging.StreamHandler()  # a console handler, as the CLI's basicConfig makes
    logging.root.addHandler(handler)
    try:
        with redirected(True):
            bar = ProtectProgress(total=1, desc="protect T")
            bar.chunk(2)
            log.warning("a log line")
            bar.close()
    finally:
        logging.root.removeHandler(handler)
    err = capsys.readouterr().err
    # tqdm.write clears the bar's line first: the message starts a line of its own
    assert any(ln.strip() == "a log line" for ln in err.replace("\r", "\n").splitlines())


def test_fmt_eta():
    assert fmt_eta(18.2) == "0:18" and fmt_eta(3725) == "1:02:05" and fmt_eta(-1) == "0:00"
