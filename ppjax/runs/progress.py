"""``ppjax protect``'s progress, told truthfully.

* **Compiling** is its own phase: the bar says "compiling the attack…" from the start until the
  first compiled chunk has been dispatched (the attack's programs compile at that first call).
* The bar then moves **per chunk**: it counts slot-iterations (iterations times the images in
  the slots), with the images done, the success rate and the speed beside it; it no longer
  waits for whole images, so a run with no more images than slots moves too.
* The **ETA** comes from the steady-state throughput: images finished per second since the
  compilation ended (compile time excluded), shown once an image has finished after it.
* Log lines go through :func:`tqdm.contrib.logging.logging_redirect_tqdm` (:func:`redirected`),
  so they print above the bar instead of onto its line.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable


def fmt_eta(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss``) of a duration."""
    s = int(round(max(0.0, seconds)))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProtectProgress:
    """The progress bar of one run (``total`` images). ``clock`` is injectable for tests.

    Call :meth:`chunk` after every compiled chunk, :meth:`image` when an image is done (ok or
    failed), :meth:`close` at the end.
    """

    def __init__(self, total: int, desc: str, tag: str = "", enabled: bool = True, file=None,
                 clock: Callable[[], float] = time.perf_counter):
        from tqdm import tqdm

        self.total, self.desc, self.tag, self.clock = total, desc, tag, clock
        self.t0 = clock()
        self.t_steady: float | None = None  # when compilation ended (first chunk dispatched)
        self.done = self.done_steady = self.n_ok = self.n_succ = self.iterations = 0
        self.bar = tqdm(total=None, unit="it", disable=not enabled, file=file or sys.stderr,
                        desc=f"{tag}compiling the attack…", dynamic_ncols=True, mininterval=0.2)
        self._postfix()

    @property
    def compile_seconds(self) -> float | None:
        return None if self.t_steady is None else self.t_steady - self.t0

    def chunk(self, slot_iterations: int) -> None:
        """A compiled chunk ran ``slot_iterations`` iterations summed over the busy slots."""
        if self.t_steady is None:
            self.t_steady = self.clock()
            self.bar.reset()  # tqdm's own rate and elapsed time start after compilation too
            self.bar.set_description_str(self.desc, refresh=False)
        self.iterations += int(slot_iterations)
        self.bar.update(int(slot_iterations))
        self._postfix()

    def image(self, ok: bool, success: bool = False) -> None:
        """An image is done: written (``ok``; ``success``: the judge is fooled) or failed."""
        self.done += 1
        self.done_steady += self.t_steady is not None
        self.n_ok += bool(ok)
        self.n_succ += bool(ok and success)
        self._postfix()

    def eta_seconds(self) -> float | None:
        """Remaining images over the steady-state rate (None before one finished after
        compilation)."""
        if self.t_steady is None or self.done_steady == 0:
            return None
        rate = self.done_steady / max(self.clock() - self.t_steady, 1e-9)
        return (self.total - self.done) / rate

    def _postfix(self) -> None:
        parts = [f"images {self.done}/{self.total}"]
        if self.n_ok:
            parts.append(f"{self.tag}success {self.n_succ}/{self.n_ok} "
                         f"({100.0 * self.n_succ / self.n_ok:.1f}%)")
        eta = self.eta_seconds()
        if eta is not None:
            rate = self.done_steady / max(self.clock() - self.t_steady, 1e-9)
            parts.append(f"{rate:.2f} img/s, ETA {fmt_eta(eta)}")
        elif self.t_steady is None:
            parts.append("compiling (not in the ETA)")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def redirected(enabled: bool = True):
    """Log lines through tqdm (above the bar) while the block runs, when ``enabled``."""
    if not enabled:
        yield
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm():
        yield
