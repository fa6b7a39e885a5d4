"""``ppjax`` command line. Each sub-command lives in its own module exposing
``add_parser(subparsers)``; the module sets ``func`` on its parser. This file only dispatches."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules providing sub-commands (each has add_parser(subparsers)).
COMMAND_MODULES = [
    "ppjax.commands",
    "ppjax.protect",
    "ppjax.evaluate",
    "ppjax.sweep",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppjax", description="Protect photos from automatic inference.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_parser(sub)
    return p


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
    args = build_parser().parse_args(argv)
    _persistent_compilation_cache()
    # force: importing jax/orbax may already have configured the root logger, which would make
    # basicConfig a silent no-op; libraries stay at WARNING, ppjax's own loggers at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("ppjax").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
