"""The torch replicas now live in :mod:`benchmarks.torch_ref` (installed with the package, so no
benchmark needs the tests). ``tests.torch_ref.<module>`` keeps working as an alias."""

import importlib as _importlib
import sys as _sys

for _m in ("inception_resnet_v2", "mobilenet_v2", "pgd", "places365_zoo", "resnet"):
    _sys.modules[f"{__name__}.{_m}"] = _importlib.import_module(f"benchmarks.torch_ref.{_m}")
