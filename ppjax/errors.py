"""Exit codes of every ``ppjax`` command and the error that means "usage or setup problem".

* ``0`` (:data:`OK`): every image (every grid point) was done.
* ``1`` (:data:`SOME_FAILED`): the run finished, but some files failed; each has its own error
  (printed, and recorded in ``manifest.jsonl`` / ``summary.json`` / ``results.json``).
* ``2`` (:data:`USAGE`): nothing was done: bad settings, missing or unwritable folders, empty
  input, missing weights, an output folder held by another run or by a run with other settings.
  Every problem found is listed at once, and nothing is written.
* ``3`` (:data:`INTERNAL`): an unexpected error (a bug): one line; ``ppjax -v`` shows the traceback.
* ``130``: interrupted (Ctrl-C).

This module imports nothing heavy: the CLI catches these errors without loading JAX.
"""

from __future__ import annotations

from collections.abc import Iterable

OK, SOME_FAILED, USAGE, INTERNAL, INTERRUPTED = 0, 1, 2, 3, 130


class SetupError(Exception):
    """One or more usage/setup problems found before any work (exit code 2)."""

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        return f"{len(self.problems)} problems:\n" + "\n".join(f"  - {p}" for p in self.problems)
