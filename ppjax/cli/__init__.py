"""``ppjax`` command line. Each sub-command lives in its own module exposing
``add_parser(subparsers)``; the module sets ``func`` on its parser. This file only dispatches.

Only the module of the command being run is imported (``ppjax --help`` loads no JAX). Exit codes
(:mod:`ppjax.errors`): 0 all done, 1 some files failed (each with its error), 2 usage or setup
error (nothing done), 3 unexpected error (``-v`` shows the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ppjax import errors

# command -> (module providing it, one-line help shown by ``ppjax --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "protect": ("ppjax.runs.protect", "protect a test set and write a submission run (resumable)"),
    "evaluate": ("ppjax.runs.evaluate", "score a run as the organisers did; or --compare runs"),
    "sweep": ("ppjax.runs.sweep", "run a grid of attacks and values (resumable)"),
    "fetch": ("ppjax.cli.weights", "download official checkpoints and convert them"),
    "fetch-data": ("ppjax.cli.weights", "download label files and MEPP lists"),
    "convert": ("ppjax.cli.weights", "convert a checkpoint file you downloaded by hand"),
    "standin": ("ppjax.cli.weights", "create random-weight STAND-IN judges (tests/demos only)"),
    "judges": ("ppjax.cli.weights", "list judges and whether they are converted"),
}
# kept for callers that import every command's parser
COMMAND_MODULES = list(dict.fromkeys(m for m, _ in COMMANDS.values()))

EPILOG = """exit codes:
  0    every image done
  1    some files failed; each is listed with its error (the others are done)
  2    usage or setup error: bad settings, missing or unwritable folders, empty input, missing
       weights, an output folder in use by another run; nothing was done
  3    unexpected error (a bug): run with -v for the traceback
  130  interrupted"""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command (``command=None``), or with only ``command``'s module
    imported (any other string: none); the others are listed by name and help."""
    p = argparse.ArgumentParser(prog="ppjax", description="Protect photos from automatic inference.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and the traceback of an unexpected error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = {COMMANDS[command][0]} if command in COMMANDS else (
        set(COMMAND_MODULES) if command is None else set())
    for mod in dict.fromkeys(m for m, _ in COMMANDS.values()):
        if mod in wanted:
            importlib.import_module(mod).add_parser(sub)
    for name, (mod, text) in COMMANDS.items():
        if mod not in wanted:
            sub.add_parser(name, help=text, add_help=False)
    return p


def _command_of(argv) -> str | None:
    """The sub-command named in ``argv`` (first word that is one), else None."""
    for a in argv:
        if a in COMMANDS:
            return a
    return None


def _persistent_compilation_cache() -> None:
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
    try:
        _persistent_compilation_cache()
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return errors.INTERRUPTED
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
    return int(rc or 0)

