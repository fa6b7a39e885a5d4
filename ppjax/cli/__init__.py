"""``ppjax`` command line: argument parsing and dispatch only; the work lives in importable
libraries (:mod:`ppjax.runs`, :mod:`ppjax.judges`). Each command's module (``ppjax.cli.protect``,
``.evaluate``, ``.sweep``, ``.weights``, ``.bench``) exposes ``add_parser(subparsers)``, which sets ``func``
on its parser; :data:`COMMANDS` is the registry of commands.

Only the module of the command being run is imported (``ppjax --help`` loads no JAX). Exit codes
(:mod:`ppjax.errors`): 0 all done, 1 some files failed (each with its error), 2 usage or setup
error (nothing done; or the disk filled up), 3 unexpected error (``-v`` shows the traceback),
130 interrupted, 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import NamedTuple

from ppjax import errors
from ppjax.registry import Registry, lazy


class Command(NamedTuple):
    """A sub-command: its module, imported on use (it has ``add_parser(subparsers)``), and the
    one-line help ``ppjax --help`` shows without importing it."""

    module: Callable[[], object]
    help: str


COMMANDS: Registry[Command] = Registry("command")
for _name, _module, _help in (
        ("protect", "ppjax.cli.protect", "protect a test set and write a submission run (resumable)"),
        ("evaluate", "ppjax.cli.evaluate", "score a run as the organisers did; or --compare runs"),
        ("sweep", "ppjax.cli.sweep", "run a grid of attacks and values (resumable)"),
        ("attacks", "ppjax.cli.attacks", "list the attacks and presets with every resolved setting"),
        ("fetch", "ppjax.cli.weights", "download official checkpoints and convert them"),
        ("fetch-data", "ppjax.cli.weights",
         "download label files and MEPP lists, or build the face set"),
        ("convert", "ppjax.cli.weights", "convert a checkpoint file you downloaded by hand"),
        ("standin", "ppjax.cli.weights", "create random-weight STAND-IN judges (tests/demos only)"),
        ("judges", "ppjax.cli.weights", "list judges and whether they are converted"),
        ("bench", "ppjax.cli.bench", "measure attack throughput on this machine (img·it/s)")):
    COMMANDS.register(_name, Command(lazy(_module), _help))


def _module_name(cmd: Command) -> str:
    return cmd.module.target


EPILOG = """exit codes:
  0    every image done
  1    some files failed; each is listed with its error (the others are done)
  2    usage or setup error: bad settings, missing or unwritable folders, empty input, missing
       weights, an output folder in use by another run; nothing was done
       (also: the disk filled up; what is recorded is whole, rerun to resume)
  3    unexpected error (a bug): run with -v for the traceback
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM); both finish the files being written"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command (``command=None``), or with only ``command``'s module
    imported (any other string: none); the others are listed by name and help."""
    p = argparse.ArgumentParser(prog="ppjax", description="Protect photos from automatic inference.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    if command is None:
        wanted = set(COMMANDS)
    else:
        wanted = {n for n in COMMANDS if command in COMMANDS
                  and _module_name(COMMANDS[n]) == _module_name(COMMANDS[command])}
    added = set()
    for name in COMMANDS:  # one module may add several commands (weights: fetch, convert, ...)
        if name in wanted and _module_name(COMMANDS[name]) not in added:
            added.add(_module_name(COMMANDS[name]))
            COMMANDS[name].module().add_parser(sub)
        elif name not in wanted:
            sub.add_parser(name, help=COMMANDS[name].help, add_help=False)
    return p


def _command_of(argv) -> str | None:
    """The sub-command named in ``argv`` (first word that is one), else None."""
    for a in argv:
        if a in COMMANDS:
            return a
    return None


def persistent_compilation_cache() -> None:
    """Keep compiled attacks across runs (a resumed ``protect``, the next sweep, the next batch
    of submissions skip their compilation): ``$JAX_COMPILATION_CACHE_DIR`` when set, else
    ``~/.cache/ppjax/jax``. ``PPJAX_NO_COMPILATION_CACHE=1`` turns it off."""
    import os

    if os.environ.get("PPJAX_NO_COMPILATION_CACHE") or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    from ppjax.config import _cache_root

    jax.config.update("jax_compilation_cache_dir", str(_cache_root() / "jax"))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(_command_of(argv) or "").parse_args(argv)
    # force: importing jax/orbax may already have configured the root logger, which would make
    # basicConfig a silent no-op; libraries stay at WARNING, ppjax's own loggers at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("ppjax").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    old_term = _raise_on_sigterm()
    try:
        persistent_compilation_cache()
        rc = args.func(args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated)
        term = isinstance(e, errors.Terminated)
        print("terminated" if term else "interrupted", file=sys.stderr)
        return errors.TERMINATED if term else errors.INTERRUPTED
    except errors.SetupError as e:
        if args.verbose:
            logging.getLogger("ppjax").exception("setup error")
        print(f"error: {e}", file=sys.stderr)
        return errors.USAGE
    except Exception as e:  # a bug or an environment fault: one line, the traceback with -v
        if args.verbose:
            logging.getLogger("ppjax").exception("unexpected error")
        print(f"error: unexpected {type(e).__name__}: {e}"
              + ("" if args.verbose else " (run `ppjax -v ...` for the traceback)"), file=sys.stderr)
        return errors.INTERNAL
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    return int(rc or 0)


def _raise_on_sigterm():
    """Make SIGTERM raise :class:`ppjax.errors.Terminated` in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so a run stopped by a service manager finishes and records the files
    being written; returns the previous handler (None off the main thread)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise errors.Terminated()

    return signal.signal(signal.SIGTERM, handler)

