"""Convert the CSAIL ``resnet18_places365.pth.tar`` (Places365 zoo) to ppjax.

Layout and renames: :mod:`converters.places365`. A plain state dict (with or without the
``module.`` prefix) is accepted too; ``whole_resnet18_places365.pth.tar`` is refused.

    python -m converters.resnet18_places365 resnet18_places365.pth.tar [--weights-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

from converters import places365
from converters.common import converter_main
from ppjax.judges import get_spec

NAME = "resnet18_places365"
ARCH = "resnet18"
LEGACY = False  # the file spells dense-layer children norm.1 / conv.1 (PyTorch 0.2)
ARCH_CONFLICTS = ("wideresnet18", "wideresnet")


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    return places365.convert(get_spec(NAME), src, weights_dir, standin, out_dir, ARCH_CONFLICTS)


def csail_layout(state_dict: dict) -> dict:
    """Wrap a state dict with current torch names exactly as the CSAIL file is laid out."""
    return places365.csail_layout(state_dict, ARCH, LEGACY)


def make_standin(weights_dir=None, seed: int = 0) -> Path:
    """Random weights in the CSAIL layout, converted by :func:`convert` and flagged as stand-in."""
    return places365.make_standin(get_spec(NAME), convert, ARCH, LEGACY, weights_dir, seed)


def main(argv=None) -> int:
    return converter_main(__doc__, "resnet18_places365.pth.tar", convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
