"""The Places365 CNN zoo (CSAIL): shared conversion rules for its PyTorch checkpoints.

Every weights file of the zoo (``<arch>_places365.pth.tar``) is ``{"epoch", "arch",
"state_dict", "best_prec1"}`` as written by CSAIL's ``train_placesCNN.py``; ``state_dict`` was
saved from ``DataParallel`` (every key prefixed ``module.``). The loading code of the
``CSAILVision/places365`` repository strips that prefix; DenseNet-161 was saved by PyTorch 0.2,
whose dense layers named their children ``norm.1``, ``relu.1``, ``conv.1``, ``norm.2``, ...;
current torch (and the Flax port) spell them ``norm1``, ``conv1``, ... (:func:`rename_legacy`).

The ``whole_<arch>_places365.pth.tar`` files on the same page are pickles of whole model objects:
loading them would run arbitrary code. They are refused with the name of the weights-only file to
download instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from ppjax.convert.common import (
    ConversionError,
    conversion_metadata,
    extract_state_dict,
    load_torch_file,
    torch_to_flax,
    write_standin_file,
)
from ppjax.judges import get_spec

BASE_URL = "http://places2.csail.mit.edu/models_places365/"

# PyTorch 0.2 DenseNet: features.denseblock1.denselayer1.norm.1.weight -> ...norm1.weight
_LEGACY_DENSE = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(.+)$")


def rename_legacy(state_dict: dict) -> dict:
    """Dense-layer children ``norm.1`` / ``conv.2`` -> ``norm1`` / ``conv2``; other keys as is."""
    out = {}
    for k, v in state_dict.items():
        m = _LEGACY_DENSE.match(k)
        out[f"{m.group(1)}{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def legacy_names(state_dict: dict) -> dict:
    """The inverse of :func:`rename_legacy` (``norm1`` -> ``norm.1`` in dense layers): how the
    CSAIL DenseNet-161 file spells its keys."""
    pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))([12])\.(.+)$")
    out = {}
    for k, v in state_dict.items():
        m = pat.match(k)
        out[f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else k] = v
    return out


def csail_layout(state_dict: dict, arch: str, legacy: bool = False) -> dict:
    """Wrap a state dict (current torch names) exactly as the zoo's files are laid out."""
    sd = legacy_names(state_dict) if legacy else state_dict
    return {"epoch": 90, "arch": arch, "state_dict": {f"module.{k}": v for k, v in sd.items()},
            "best_prec1": 0.0}


def whole_file_message(src: Path, spec) -> str:
    return (f"{src}: '{src.name}' is a whole-model pickle from the Places365 zoo (arbitrary Python "
            f"objects; ppjax never unpickles them). Download the weights-only file "
            f"{spec.filename} instead: {spec.url}")


def convert(spec, src, weights_dir=None, standin: bool = False, out_dir=None,
            arch_conflicts: tuple[str, ...] = ()) -> Path:
    """Load ``src`` weights-only, apply the zoo's renames, map it strictly onto ``spec``'s Flax
    tree and save it; nothing is written unless the whole checkpoint validates.

    ``arch_conflicts``: values of the file's ``arch`` field that name a different network with the
    same keys (ResNet-18 and CSAIL's wide ResNet-18 share every key and shape), refused.
    """
    from ppjax.judges import judge_dir
    from ppjax.judges.checkpoint import save_converted

    src = Path(src)
    if src.name.startswith("whole_"):
        raise ConversionError(whole_file_message(src, spec))
    try:
        obj = load_torch_file(src)
    except ConversionError as e:
        if "not a weights-only checkpoint" in str(e):
            raise ConversionError(f"{e}\n  Download the weights-only file {spec.filename} "
                                  f"instead: {spec.url}") from None
        raise
    arch = obj.get("arch") if isinstance(obj, dict) else None
    if isinstance(arch, str) and arch.lower() in arch_conflicts:
        raise ConversionError(
            f"{src}: the checkpoint says arch={arch!r}, which is not {spec.name} "
            f"({spec.architecture}); convert it as the judge of that architecture")
    sd = rename_legacy(extract_state_dict(obj, src, ("module.",)))
    variables = torch_to_flax(sd, spec.abstract_variables(), str(src), spec.architecture)
    out = Path(out_dir) if out_dir else judge_dir(spec.name, weights_dir, standin)
    return save_converted(out, variables, conversion_metadata(spec, src, standin))


def make_standin(spec, convert_fn, arch: str, legacy: bool = False, weights_dir=None,
                 seed: int = 0) -> Path:
    """Random weights in the zoo's layout, converted by ``convert_fn`` and flagged as stand-in."""
    src = write_standin_file(spec, lambda sd: csail_layout(sd, arch, legacy), weights_dir, seed)
    return convert_fn(src, weights_dir, standin=True)


class ZooConverter:
    """The module-level API of one zoo judge's converter (``convert``, ``csail_layout``,
    ``make_standin``, ``source_format``; the module is a :class:`ppjax.convert.Converter`), so
    each ``ppjax/convert/<judge>.py`` only names its file's architecture: ``arch`` (the file's
    ``"arch"`` field), ``legacy`` (DenseNet's PyTorch 0.2 key spelling) and ``conflicts`` (other
    ``arch`` values to refuse, e.g. a ResNet-18 file given as the wide ResNet-18: their keys are
    identical)."""

    def __init__(self, name: str, arch: str, legacy: bool = False,
                 conflicts: tuple[str, ...] = ()):
        self.name, self.arch, self.legacy, self.conflicts = name, arch, legacy, conflicts
        self.source_format = (f"{name}.pth.tar: torch weights-only {{epoch, arch={arch!r}, "
                              "state_dict (module.-prefixed), best_prec1}, CSAIL Places365 zoo")

    def convert(self, src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
        """Validate ``src`` strictly against the Flax tree and save it; returns its directory."""
        return convert(get_spec(self.name), src, weights_dir, standin, out_dir, self.conflicts)

    def csail_layout(self, state_dict: dict) -> dict:
        """Wrap a state dict with current torch names exactly as the CSAIL file is laid out."""
        return csail_layout(state_dict, self.arch, self.legacy)

    def make_standin(self, weights_dir=None, seed: int = 0) -> Path:
        """Random weights in the CSAIL layout, converted and flagged as a stand-in."""
        return make_standin(get_spec(self.name), self.convert, self.arch, self.legacy,
                            weights_dir, seed)
