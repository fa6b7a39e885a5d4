"""Convert the PyTorch NIMA ``nima224.pth`` (truskovskiyk/nima.pytorch v1, MobileNetV2) to ppjax.

The file is a plain state dict of ``NIMA`` from that repository's ``nima/model.py``:
``base_model.0.<i>...`` (``base_model = Sequential(MobileNetV2.features)``; see
:mod:`ppjax.models.mobilenet_v2` for the exact child layout) and ``head.2.weight`` [10, 1280] /
``head.2.bias``. A ``module.`` prefix (DataParallel) or a ``{"state_dict": ...}`` wrapper is
accepted too; ``num_batches_tracked`` entries are optional (the original was saved by an old torch).

    ppjax convert nima_mobilenetv2 nima224.pth
"""

from __future__ import annotations

from pathlib import Path

from ppjax.convert.common import (
    calibrate_standin,
    convert_torch_checkpoint,
    write_standin_file,
)
from ppjax.judges import get_spec

NAME = "nima_mobilenetv2"
# the published file this converter reads (ppjax.convert.Converter)
SOURCE_FORMAT = (
    "nima224.pth: torch weights-only state dict of nima.pytorch v1 NIMA "
    "(base_model.0.*, head.2.*)"
)


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    return convert_torch_checkpoint(get_spec(NAME), src, weights_dir, standin,
                                    strip_prefixes=("module.",), out_dir=out_dir)


def make_standin(weights_dir=None, seed: int = 0, calibrate: bool = True) -> Path:
    """Random weights saved as a plain state dict (the ``nima224.pth`` layout), converted by
    :func:`convert` and flagged as stand-in. With ``calibrate`` (default) the BatchNorm
    statistics are calibrated on real photos (:func:`ppjax.convert.common.calibrate_standin`), so
    that the stand-in's score depends on the photo (the head ends in a softmax: no bias is
    centred)."""
    spec = get_spec(NAME)

    def calibrated(sd):
        return calibrate_standin(spec, sd, n_images=32, seed=seed)

    src = write_standin_file(spec, dict, weights_dir, seed,
                             calibrate=calibrated if calibrate else None)
    return convert(src, weights_dir, standin=True)
