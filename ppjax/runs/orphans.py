"""Helper processes (the decode and write pools' workers, their fork server) end when the run's
main process is gone, whatever ended it (kill -9 included).

Without this, a killed run's workers, blocked on their task queue, would live on, holding the
terminal's or a caller's stdout/stderr pipes open. :func:`exit_with` starts a daemon thread that
polls the given process and ``os._exit``s this one once it is gone or a zombie (dead but not yet
reaped by its parent). Importing this module in a fork server (it is in
:func:`ppjax.runs.pipeline`'s preload list) guards the server itself, with its parent, the main
process.
"""

from __future__ import annotations

import os
import threading
import time

POLL_S = 0.5


def alive(pid: int) -> bool:
    """``pid`` runs (on Linux a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 tells whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def exit_with(pid: int) -> None:
    """End this process (``os._exit(0)``) soon after process ``pid`` is gone."""

    def watch():
        while alive(pid):
            time.sleep(POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="ppjax-orphan-guard", daemon=True).start()


if __name__ != "__main__" and os.environ.get("PPJAX_ORPHAN_GUARD") == str(os.getppid()):
    exit_with(os.getppid())  # imported by a fork server whose parent is the run's main process
