"""Converters from the judges' published checkpoints to ppjax (Flax + orbax).

Each module here converts one published file format; :data:`CONVERTERS` is derived from the
judges' specs (the key a :class:`~ppjax.judges.JudgeSpec` names in its ``converter`` field is
the module's name here), so a new judge's converter needs no list edited. Registration is
lazy (:func:`ppjax.registry.lazy`): a converter module is imported when it is used, and torch or
h5py (``pip install -e ".[convert]"``) only when a file is read or a stand-in written. These
modules (and the tests) are the only places that import torch or h5py.

The command line is ``ppjax convert JUDGE FILE`` (and ``ppjax fetch`` / ``ppjax standin``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from ppjax.judges.spec import JUDGES
from ppjax.registry import Registry, lazy

__all__ = ["CONVERTERS", "Converter", "converters", "get_converter"]


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


def converters() -> Registry[Callable[[], Converter]]:
    """converter key -> loader of its module, for every registered judge's spec (a judge
    registered later is included in the next call)."""
    out: Registry[Callable[[], Converter]] = Registry("converter")
    for key in dict.fromkeys(spec.converter for spec in JUDGES.values()):
        out.register(key, lazy(f"ppjax.convert.{key}"))
    return out


#: converter key -> loader of its module (call it, or use :func:`get_converter`), derived from
#: the judges' specs when this package is imported.
CONVERTERS = converters()


def get_converter(key: str) -> Converter:
    """The converter a spec names as ``key``, imported on first use."""
    return converters()[key]()
