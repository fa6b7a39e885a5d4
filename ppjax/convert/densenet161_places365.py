"""Convert the CSAIL ``densenet161_places365.pth.tar`` (Places365 zoo) to ppjax.

Layout and renames: :mod:`ppjax.convert.places365`. A plain state dict (with or without the
``module.`` prefix) is accepted too; ``whole_densenet161_places365.pth.tar`` is refused.

    ppjax convert densenet161_places365 densenet161_places365.pth.tar
"""

from __future__ import annotations

from ppjax.convert.places365 import ZooConverter

_ZOO = ZooConverter("densenet161_places365", "densenet161", legacy=True)
NAME, ARCH, SOURCE_FORMAT = _ZOO.name, _ZOO.arch, _ZOO.source_format
convert, csail_layout, make_standin = _ZOO.convert, _ZOO.csail_layout, _ZOO.make_standin
