"""Convert the CSAIL ``resnet50_places365.pth.tar`` (the 2019 judge) to ppjax.

The published file is ``{"epoch", "arch", "state_dict", "best_prec1"}`` whose ``state_dict`` was
saved from ``DataParallel``: every key is a torchvision ResNet-50 name prefixed ``module.``. A plain
state dict (with or without the prefix) is accepted too; ``whole_resnet50_places365.pth.tar`` (a
whole-model pickle) is refused (:mod:`ppjax.convert.places365`).

    ppjax convert resnet50_places365 resnet50_places365.pth.tar
"""

from __future__ import annotations

from pathlib import Path

from ppjax.convert import places365
from ppjax.convert.common import calibrate_standin, write_standin_file
from ppjax.judges import get_spec

NAME = "resnet50_places365"
# the published file this converter reads (ppjax.convert.Converter)
SOURCE_FORMAT = (
    "resnet50_places365.pth.tar: torch weights-only {epoch, arch, state_dict "
    "(module.-prefixed torchvision ResNet-50 names), best_prec1}"
)


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    return places365.convert(get_spec(NAME), src, weights_dir, standin, out_dir)


def csail_layout(state_dict: dict) -> dict:
    """Wrap a torchvision-named state dict exactly as the CSAIL model-zoo file is laid out."""
    return {
        "epoch": 90,
        "arch": "resnet50",
        "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
        "best_prec1": 0.0,
    }


def make_standin(weights_dir=None, seed: int = 0) -> Path:
    """Random weights in the CSAIL layout, converted by :func:`convert` and flagged as stand-in.
    Its BatchNorm statistics are calibrated on real photos and its fc bias centred
    (:func:`ppjax.convert.common.calibrate_standin`), so its top-1 depends on the input."""
    spec = get_spec(NAME)

    def calibrate(sd):
        return calibrate_standin(spec, sd, seed=seed, output_bias=("fc", "bias"))

    src = write_standin_file(spec, csail_layout, weights_dir, seed, calibrate=calibrate)
    return convert(src, weights_dir, standin=True)
