"""Convert ``KonCept512.pth`` (the 2020 judge, PyTorch re-implementation) to ppjax.

The published file is a plain state dict of ``model_qa(num_classes=1)``: ``base.<child index>...``
(Cadene InceptionResNetV2 children, e.g. ``base.0.conv.weight``, ``base.7.branch3.1.bn.running_var``,
``base.10.19.conv2d.bias``) and ``fc.<index>...`` (``fc.0.weight`` ... ``fc.12.bias``). A dict
with a ``"state_dict"`` entry and keys prefixed ``module.`` (saved from ``DataParallel``) is
accepted too. Anything else fails with one :class:`~converters.common.ConversionError` naming every
missing, unexpected and mis-shaped key; nothing is written in that case.

    python -m converters.koncept512 KonCept512.pth [--weights-dir DIR]
"""

from __future__ import annotations

from pathlib import Path

from converters.common import convert_torch_checkpoint, converter_main, write_standin_file
from ppjax.judges import get_spec

NAME = "koncept512"


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    """Validate ``src`` strictly against the Flax KonCept512 tree and save it; returns the
    converted judge's directory (``<weights_dir>/koncept512`` unless ``out_dir`` is given)."""
    return convert_torch_checkpoint(get_spec(NAME), src, weights_dir, standin,
                                    strip_prefixes=("module.",), out_dir=out_dir)


def plain_layout(state_dict: dict) -> dict:
    """``KonCept512.pth`` is the bare ``state_dict()`` of ``model_qa``: nothing to wrap."""
    return dict(state_dict)


def make_standin(weights_dir=None, seed: int = 0) -> Path:
    """Random weights in the ``KonCept512.pth`` layout, converted by :func:`convert` and
    flagged as a stand-in."""
    src = write_standin_file(get_spec(NAME), plain_layout, weights_dir, seed)
    return convert(src, weights_dir, standin=True)


def main(argv=None) -> int:
    return converter_main(__doc__, "KonCept512.pth", convert, argv)


if __name__ == "__main__":
    raise SystemExit(main())
