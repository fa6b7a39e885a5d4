"""Converters from the judges' published checkpoints to ppjax (Flax + orbax).

Each module here converts one published file format and is registered in :data:`CONVERTERS`
under the key a :class:`~ppjax.judges.JudgeSpec` names in its ``converter`` field. Registration is
lazy (:func:`ppjax.registry.lazy`): a converter module is imported when it is used, and torch or
h5py (``pip install -e ".[convert]"``) only when a file is read or a stand-in written. These
modules (and the tests) are the only places that import torch or h5py.

The command line is ``ppjax convert JUDGE FILE`` (and ``ppjax fetch`` / ``ppjax standin``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from ppjax.registry import Registry, lazy

__all__ = ["CONVERTERS", "Converter", "get_converter"]


@runtime_checkable
class Converter(Protocol):
    """What every registered converter module provides.

    ``NAME``: the judge (a key of :data:`ppjax.judges.JUDGES`) whose checkpoint it converts.
    ``SOURCE_FORMAT``: the published file it reads, in one line (name and layout).
    """

    NAME: str
    SOURCE_FORMAT: str

    def convert(self, src: str | Path, weights_dir=None, standin: bool = False,
                out_dir=None) -> Path:
        """Validate ``src`` strictly against the judge's Flax tree and save it (nothing is written
        unless the whole file validates); returns the converted judge's directory."""
        ...

    def make_standin(self, weights_dir=None, seed: int = 0) -> Path:
        """Write random weights in the published layout, convert them and flag them as a
        STAND-IN; returns the stand-in's directory."""
        ...


#: converter key -> loader of its module (call it, or use :func:`get_converter`).
CONVERTERS: Registry[Callable[[], Converter]] = Registry("converter")
for _key in ("resnet50_places365", "resnet18_places365", "wideresnet18_places365",
             "densenet161_places365", "alexnet_places365", "koncept512", "nima_keras",
             "nima_mobilenetv2", "mtcnn"):
    CONVERTERS.register(_key, lazy(f"ppjax.convert.{_key}"))


def get_converter(key: str) -> Converter:
    """The converter registered as ``key`` (a spec's ``converter``), imported on first use."""
    return CONVERTERS[key]()
