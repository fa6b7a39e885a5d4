"""Convert the CSAIL ``wideresnet18_places365.pth.tar`` (Places365 zoo) to ppjax.

Layout and renames: :mod:`ppjax.convert.places365`. A plain state dict (with or without the
``module.`` prefix) is accepted too; ``whole_wideresnet18_places365.pth.tar`` is refused.

    ppjax convert wideresnet18_places365 wideresnet18_places365.pth.tar
"""

from __future__ import annotations

from ppjax.convert.places365 import ZooConverter

_ZOO = ZooConverter("wideresnet18_places365", "wideresnet18", conflicts=("resnet18",))
NAME, ARCH, SOURCE_FORMAT = _ZOO.name, _ZOO.arch, _ZOO.source_format
convert, csail_layout, make_standin = _ZOO.convert, _ZOO.csail_layout, _ZOO.make_standin
