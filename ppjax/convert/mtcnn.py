"""Convert MTCNN's trained P-Net, R-Net and O-Net from facenet-pytorch 2.6.0 to ppjax.

The wheel ships three plain torch state dicts, ``facenet_pytorch/data/{pnet,rnet,onet}.pt``
(keys ``conv1.weight``, ``prelu1.weight``, ..., ``dense6_3.bias``). They map one layer at a time
onto ``params/{pnet,rnet,onet}/<layer>`` of :class:`ppjax.models.mtcnn.MTCNN` (:data:`LAYERS`):

  ============  =================================  ================================
  layer kind    torch keys                          Flax leaves
  ============  =================================  ================================
  conv          ``<l>.weight`` [O, I, kh, kw]       ``<l>/kernel`` [kh, kw, I, O]
                ``<l>.bias``                        ``<l>/bias``
  dense         ``<l>.weight`` [out, in]            ``<l>/kernel`` [in, out]
                ``<l>.bias``                        ``<l>/bias``
  prelu         ``<l>.weight`` [C]                  ``<l>/weight`` [C]
  ============  =================================  ================================

Validation is strict over the three files together: every missing, unexpected or mis-shaped key
is named in one :class:`~ppjax.convert.common.ConversionError` and nothing is written.

    ppjax fetch mtcnn                 # offline: copies the files from the installed package
    ppjax convert mtcnn DIR           # DIR holds pnet.pt, rnet.pt, onet.pt

The package is located with :func:`importlib.util.find_spec`, which does not run
``facenet_pytorch/__init__.py`` (that imports torchvision, which does not install beside this
torch). There is no stand-in: the real weights are always at hand once the package is installed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

import numpy as np
from flax import traverse_util

from ppjax.convert.common import (
    ConversionError,
    extract_state_dict,
    load_torch_file,
    mismatch_error,
    sha256_file,
    to_flax_layout,
)
from ppjax.errors import SetupError
from ppjax.judges import get_spec

NAME = "mtcnn"
# the published files this converter reads (ppjax.convert.Converter)
SOURCE_FORMAT = ("mtcnn (a folder, e.g. facenet_pytorch/data): pnet.pt, rnet.pt, onet.pt, "
                 "torch weights-only state dicts of facenet-pytorch 2.6.0's PNet, RNet, ONet")
PACKAGE = "facenet_pytorch"
PIP_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"

#: network -> ((layer, kind), ...) in facenet-pytorch's order; kind: conv | dense | prelu.
LAYERS: dict[str, tuple[tuple[str, str], ...]] = {
    "pnet": (("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4_1", "conv"), ("conv4_2", "conv")),
    "rnet": (("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("dense4", "dense"), ("prelu4", "prelu"),
             ("dense5_1", "dense"), ("dense5_2", "dense")),
    "onet": (("conv1", "conv"), ("prelu1", "prelu"), ("conv2", "conv"), ("prelu2", "prelu"),
             ("conv3", "conv"), ("prelu3", "prelu"), ("conv4", "conv"), ("prelu4", "prelu"),
             ("dense5", "dense"), ("prelu5", "prelu"), ("dense6_1", "dense"),
             ("dense6_2", "dense"), ("dense6_3", "dense")),
}
_LAYOUT = {"conv": "conv", "dense": "linear", "prelu": "id"}


def name_map() -> dict[tuple[str, str], tuple[tuple[str, ...], str]]:
    """(network, torch key) -> (Flax flat key, layout) for every leaf of :data:`LAYERS`."""
    out = {}
    for net, layers in LAYERS.items():
        for layer, kind in layers:
            leaves = ("weight",) if kind == "prelu" else ("kernel", "bias")
            for leaf in leaves:
                torch_key = f"{layer}.{'weight' if leaf == 'kernel' else leaf}"
                layout = _LAYOUT[kind] if leaf != "bias" else "id"
                out[(net, torch_key)] = (("params", net, layer, leaf), layout)
    return out


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    if layout == "linear":
        return (shape[1], shape[0])
    return shape


def _check_map(abstract) -> dict:
    """The name map's Flax leaves must be exactly the model's (a bug here is not the file's)."""
    flat = traverse_util.flatten_dict(dict(abstract))
    mapped = {fk for fk, _ in name_map().values()}
    if mapped != set(flat):
        raise AssertionError(f"mtcnn name map out of date: {sorted(mapped ^ set(flat))}")
    return flat


def to_flax(state_dicts: dict[str, dict], abstract, source: str) -> dict:
    """``{"pnet": sd, "rnet": sd, "onet": sd}`` (numpy state dicts) onto the Flax tree, strictly:
    every missing, unexpected and mis-shaped key of the three files in one error."""
    flat = _check_map(abstract)
    nmap = name_map()
    missing, unexpected, misshaped, out = [], [], [], {}
    for net in LAYERS:
        given = state_dicts.get(net, {})
        for key in sorted(set(given) - {k for n, k in nmap if n == net}):
            unexpected.append(f"{net}.pt: {key}")
        for (n, key), (fk, layout) in nmap.items():
            if n != net:
                continue
            want = _torch_shape(tuple(flat[fk].shape), layout)
            if key not in given:
                missing.append(f"{net}.pt: {key} {want}")
            elif tuple(given[key].shape) != want:
                misshaped.append(f"{net}.pt: {key}: file has {tuple(given[key].shape)}, "
                                 f"needs {want}")
            else:
                out[fk] = np.ascontiguousarray(to_flax_layout(given[key], layout), np.float32)
    if missing or unexpected or misshaped:
        raise mismatch_error(source, get_spec(NAME).architecture, missing, unexpected, misshaped)
    return traverse_util.unflatten_dict(out)


def source_files(src: str | Path) -> dict[str, Path]:
    """``{"pnet": .../pnet.pt, ...}`` in the folder ``src`` (or the folder of a file ``src``)."""
    src = Path(src)
    folder = src.parent if src.is_file() else src
    if not folder.is_dir():
        raise ConversionError(f"{src}: no such folder (expected one holding pnet.pt, rnet.pt, "
                              f"onet.pt)")
    files = {net: folder / f"{net}.pt" for net in LAYERS}
    absent = [p.name for p in files.values() if not p.is_file()]
    if absent:
        raise ConversionError(f"{folder}: missing {', '.join(absent)} (MTCNN needs pnet.pt, "
                              f"rnet.pt and onet.pt together)")
    return files


def convert(src, weights_dir=None, standin: bool = False, out_dir=None,
            origin: str | None = None) -> Path:
    """Validate the three files in ``src`` strictly against the Flax tree and save them to
    ``<weights_dir>/mtcnn`` (or ``out_dir``); returns that folder. ``origin`` says where the
    files came from (recorded in the metadata)."""
    from ppjax.judges import judge_dir
    from ppjax.judges.checkpoint import save_converted

    if standin:
        raise SetupError(no_standin_message())
    spec = get_spec(NAME)
    files = source_files(src)
    sds = {net: extract_state_dict(load_torch_file(p), p, ()) for net, p in files.items()}
    variables = to_flax(sds, spec.abstract_variables(), str(Path(src)))
    meta = {
        "judge": spec.name, "architecture": spec.architecture,
        "preprocessing": spec.preprocessing, "input_hw": list(spec.input_hw),
        "output": spec.output, "any_size": True, "source_url": spec.url,
        "source": origin or str(Path(src).resolve()),
        "source_files": {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                         for p in files.values()},
        "standin": False,
        "converted_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    out = Path(out_dir) if out_dir else judge_dir(spec.name, weights_dir)
    return save_converted(out, variables, meta)


def package_data() -> tuple[Path, str]:
    """(the installed ``facenet_pytorch/data`` folder, ``"facenet-pytorch <version>"``), found
    without importing the package. Raises :class:`~ppjax.errors.SetupError` (exit code 2) with
    the install command when it is not installed."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise SetupError(f"judge {NAME!r} copies its real weights from the facenet-pytorch "
                         f"package, which is not installed: {PIP_INSTALL}")
    data = Path(list(found.submodule_search_locations)[0]) / "data"
    try:
        version = importlib.metadata.version("facenet-pytorch")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    return data, f"facenet-pytorch {version}"


def fetch_bundled(weights_dir=None, force: bool = False) -> Path:
    """``ppjax fetch mtcnn``: copy the three files from the installed facenet-pytorch into
    ``<downloads>/mtcnn/`` and convert them (offline)."""
    from ppjax import config

    data, version = package_data()
    try:
        files = source_files(data)
    except ConversionError as e:
        raise SetupError(f"{e}; reinstall: {PIP_INSTALL}") from None
    dest = config.downloads_dir(weights_dir) / get_spec(NAME).filename
    dest.mkdir(parents=True, exist_ok=True)
    for p in files.values():
        if force or not (dest / p.name).exists():
            shutil.copyfile(p, dest / p.name)
    return convert(dest, weights_dir, origin=f"{version} ({data})")


def no_standin_message() -> str:
    return (f"judge {NAME!r} has no stand-in: its real weights ship with facenet-pytorch "
            f"({PIP_INSTALL}); run: ppjax fetch {NAME}")


def make_standin(weights_dir=None, seed: int = 0) -> Path:
    """Refused: MTCNN is a real judge (:func:`no_standin_message`)."""
    raise SetupError(no_standin_message())
