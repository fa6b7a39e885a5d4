"""Exit codes of every ``ppjax`` command and the error that means "usage or setup problem".

* ``0`` (:data:`OK`): every image (every grid point) was done.
* ``1`` (:data:`SOME_FAILED`): the run finished, but some files failed; each has its own error
  (printed, and recorded in ``manifest.jsonl`` / ``summary.json`` / ``results.json``).
* ``2`` (:data:`USAGE`): nothing was done: bad settings, missing or unwritable folders, empty
  input, missing weights, an output folder held by another run or by a run with other settings.
  Every problem found is listed at once, and nothing is written.
  A run stopped by a full disk (:class:`DiskFull`) ends with this code too: what it recorded
  is whole (every PNG the manifest lists, nothing else), and rerunning the same command after
  freeing space resumes it.
* ``3`` (:data:`INTERNAL`): an unexpected error (a bug): one line; ``ppjax -v`` shows the traceback.
* ``130`` (:data:`INTERRUPTED`): interrupted (Ctrl-C, SIGINT); ``143`` (:data:`TERMINATED`):
  stopped by SIGTERM. Both after the files being written are finished and recorded.

This module imports nothing heavy: the CLI catches these errors without loading JAX.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

OK, SOME_FAILED, USAGE, INTERNAL, INTERRUPTED, TERMINATED = 0, 1, 2, 3, 130, 143


class SetupError(Exception):
    """One or more usage/setup problems found before any work (exit code 2)."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)


class DiskFull(SetupError):
    """The output's device filled up (ENOSPC, EDQUOT): the run stopped (exit code 2), keeping
    only whole files and a manifest that lists exactly them."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so the same clean-up
    runs: the files being written are finished and recorded), but exiting with 143."""


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is the device running out of space (or of quota)."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
