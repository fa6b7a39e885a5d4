"""Convert the organisers' Keras NIMA (titu1994 ``mobilenet_weights.h5``) to ppjax, with h5py only.

Legacy Keras HDF5 layouts accepted (no TensorFlow or Keras needed at runtime):

* weights-only (``model.save_weights("x.h5")``, the layout of titu1994's release files): the root
  group carries ``layer_names``; each layer has a group ``<layer>`` with a ``weight_names``
  attribute and datasets ``<layer>/<layer>/<weight>:0`` (Keras 2) or ``<layer>/<layer>/<weight>``
  (Keras 3);
* full model (``model.save("x.h5")``): the same under ``model_weights/``;
* a nested sub-model (``Model`` used as a layer): the sub-model's group lists weight names
  ``<inner layer>/<weight>:0``, found through the same ``weight_names`` attribute.
Layers without weights (input, padding, ReLU, pooling, dropout) have empty ``weight_names``.
Attributes longer than the HDF5 header limit are split as ``layer_names0``, ``layer_names1``...

Keras -> Flax map (explicit, see :func:`expected_keras_weights`):

  ==========================================  =====================================  ==============
  Flax leaf                                   Keras weight                           layout
  ==========================================  =====================================  ==============
  params/mobilenet/conv_dw_i/kernel           conv_dw_i/depthwise_kernel [3,3,C,1]   -> [3,3,1,C]
                                              (Keras 3 names it conv_dw_i/kernel)
  params/mobilenet/<conv>/kernel              <conv>/kernel [kh,kw,in,out]           as is
  params/mobilenet/<bn>/scale, bias           <bn>/gamma, beta                       as is
  batch_stats/mobilenet/<bn>/mean, var        <bn>/moving_mean, moving_variance      as is
  params/dense/kernel, bias                   dense_N/kernel [1024,10], bias         as is
  ==========================================  =====================================  ==============

The head's layer name depends on how many Dense layers the session had created (``dense_1`` in
titu1994's files, ``dense`` in Keras 3): any single layer named ``dense`` or ``dense_<n>`` is it.
Validation is strict: missing, unexpected and mis-shaped weights are reported in one
:class:`ConversionError` before anything is written.

    ppjax convert nima_mobilenet mobilenet_weights.h5
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from flax import traverse_util

from ppjax.convert.common import (
    ConversionError,
    calibrate_variables,
    conversion_metadata,
    mismatch_error,
)
from ppjax.judges import get_spec

NAME = "nima_mobilenet"
# the published file this converter reads (ppjax.convert.Converter)
SOURCE_FORMAT = (
    "mobilenet_weights.h5: legacy Keras h5 weights of titu1994's NIMA MobileNet"
)
BACKBONE = "mobilenet"
HEAD = "dense"
DENSE_RE = re.compile(r"^dense(_\d+)?$")

_PARAM_LEAVES = {"scale": "gamma", "bias": "beta"}
_STAT_LEAVES = {"mean": "moving_mean", "var": "moving_variance"}


def _read_attr_list(group, name: str) -> list[str] | None:
    """A (possibly chunked) string-list attribute, decoded; None when absent."""
    def dec(v):
        return v.decode("utf8") if isinstance(v, bytes) else str(v)

    if name in group.attrs:
        return [dec(v) for v in group.attrs[name]]
    if f"{name}0" not in group.attrs:
        return None
    out, k = [], 0
    while f"{name}{k}" in group.attrs:
        out.extend(dec(v) for v in group.attrs[f"{name}{k}"])
        k += 1
    return out


def read_keras_h5(path: str | Path) -> dict[tuple[str, str], np.ndarray]:
    """Every weight of a legacy Keras h5 file as ``{(layer, weight): array}``.

    ``weight`` has no ``:0`` suffix (``kernel``, ``gamma``, ``moving_variance``...); ``layer`` is
    the layer that owns the weight (the inner layer for nested sub-models).
    Raises:
      ConversionError: not a readable legacy Keras h5 file, or duplicated weights.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ConversionError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        layer_names = _read_attr_list(root, "layer_names")
        if layer_names is None:
            raise ConversionError(
                f"{path}: no 'layer_names' attribute: not a legacy Keras h5 file "
                f"(Keras 3 '.weights.h5' files are not supported; save with model.save('x.h5'))"
            )
        weights: dict[tuple[str, str], np.ndarray] = {}
        problems = []
        for layer in layer_names:
            if layer not in root:
                problems.append(f"layer {layer!r} is listed in layer_names but has no group")
                continue
            group = root[layer]
            for wname in _read_attr_list(group, "weight_names") or []:
                if wname not in group:
                    problems.append(f"{layer}: weight {wname!r} listed but absent")
                    continue
                parts = wname.split("/")
                owner = parts[-2] if len(parts) >= 2 else layer
                key = (owner, parts[-1].split(":")[0])
                if key in weights:
                    problems.append(f"weight {'/'.join(key)} appears twice")
                weights[key] = np.asarray(group[wname])
        if problems:
            raise ConversionError(f"{path}: malformed Keras h5 file:\n" +
                                  "\n".join(f"  {p}" for p in problems))
    return weights


def _keras_name_and_layout(flat_key: tuple[str, ...], ndim: int, dense: str):
    collection, module, *path, leaf = flat_key
    if module == HEAD and not path:
        return (dense, leaf), "id"
    if module != BACKBONE or len(path) != 1:
        raise ConversionError(f"no Keras name rule for Flax leaf {'/'.join(flat_key)}")
    layer = path[0]
    if collection == "params" and leaf == "kernel":
        if layer.startswith("conv_dw_"):
            return (layer, "depthwise_kernel"), "dw"
        return (layer, "kernel"), "id"
    if collection == "params" and leaf in _PARAM_LEAVES:
        return (layer, _PARAM_LEAVES[leaf]), "id"
    if collection == "batch_stats" and leaf in _STAT_LEAVES:
        return (layer, _STAT_LEAVES[leaf]), "id"
    raise ConversionError(f"no Keras name rule for Flax leaf {'/'.join(flat_key)}")


def expected_keras_weights(abstract_variables, dense: str = "dense_1") -> dict:
    """``(layer, weight) -> (keras shape, flax flat key, layout)`` for every Flax leaf."""
    out = {}
    for flat_key, leaf in traverse_util.flatten_dict(dict(abstract_variables)).items():
        key, layout = _keras_name_and_layout(flat_key, len(leaf.shape), dense)
        shape = tuple(leaf.shape)
        if layout == "dw":  # flax [kh, kw, 1, C] <- keras [kh, kw, C, 1]
            shape = (shape[0], shape[1], shape[3], shape[2])
        out[key] = (shape, flat_key, layout)
    return out


def _find_dense(given: dict, backbone_layers: set[str]) -> tuple[str, list[str]]:
    names = sorted({layer for layer, _ in given if DENSE_RE.match(layer)} - backbone_layers)
    if len(names) == 1:
        return names[0], []
    if not names:
        return "dense_1", ["no Dense head layer (named 'dense' or 'dense_<n>') in the file"]
    return names[0], [f"several candidate Dense head layers: {', '.join(names)}"]


def _keras3_depthwise_names(weights: dict) -> dict:
    """Keras 3's DepthwiseConv2D calls its weight ``kernel``; Keras 2 said ``depthwise_kernel``."""
    out = {}
    for (layer, kind), a in weights.items():
        if (kind == "kernel" and layer.startswith("conv_dw_")
                and (layer, "depthwise_kernel") not in weights):
            kind = "depthwise_kernel"
        out[(layer, kind)] = a
    return out


def keras_to_flax(weights: dict, abstract_variables, source: str, arch: str) -> dict:
    """Map ``read_keras_h5`` output onto the Flax tree, strictly.

    Raises:
      ConversionError: listing every missing, unexpected and mis-shaped weight at once.
    """
    weights = _keras3_depthwise_names(weights)
    probe = expected_keras_weights(abstract_variables, "dense_1")
    backbone_layers = {layer for layer, _ in probe if layer != "dense_1"}
    dense, notes = _find_dense(weights, backbone_layers)
    expected = expected_keras_weights(abstract_variables, dense)

    def fmt(key):
        return "/".join(key)

    missing = sorted(fmt(k) for k in set(expected) - set(weights))
    unexpected = sorted(fmt(k) for k in set(weights) - set(expected))
    misshaped = sorted(
        f"{fmt(k)}: file has {tuple(weights[k].shape)}, {arch} needs {expected[k][0]}"
        for k in set(expected) & set(weights) if tuple(weights[k].shape) != expected[k][0]
    )
    if missing or unexpected or misshaped or notes:
        missing_layers = sorted({k[0] for k in set(expected) - set(weights)})
        if missing_layers:
            notes = [*notes, f"layers with missing weights: {', '.join(missing_layers)}"]
        raise mismatch_error(source, arch, missing, unexpected, misshaped, "weights", notes)
    flat = {}
    for key, (_, flat_key, layout) in expected.items():
        a = np.asarray(weights[key], np.float32)
        if layout == "dw":
            a = np.transpose(a, (0, 1, 3, 2))
        flat[flat_key] = np.ascontiguousarray(a)
    return traverse_util.unflatten_dict(flat)


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    """Read ``src`` (legacy Keras h5), validate it against the Flax tree and save it.

    Nothing is written unless the whole file validates.
    """
    from ppjax.judges import judge_dir
    from ppjax.judges.checkpoint import save_converted

    spec = get_spec(NAME)
    src = Path(src)
    variables = keras_to_flax(read_keras_h5(src), spec.abstract_variables(), str(src),
                              spec.architecture)
    out = Path(out_dir) if out_dir else judge_dir(NAME, weights_dir, standin)
    return save_converted(out, variables, conversion_metadata(spec, src, standin))


def _weightless_layers() -> list[str]:
    """The weight-less layers Keras 2 lists in titu1994's file (kept for a faithful layout)."""
    names = ["input_1", "conv1_pad", "conv1_relu"]
    for i in range(1, 14):
        names += [f"conv_dw_{i}_relu", f"conv_pw_{i}_relu"]
    return names + ["global_average_pooling2d_1", "dropout_1"]


def write_keras_h5(path: str | Path, weights: dict[tuple[str, str], np.ndarray],
                   layer_order: list[str], model_group: bool = False) -> Path:
    """Write ``{(layer, weight): array}`` in the legacy Keras 2 h5 layout with h5py.

    ``layer_order`` lists every layer (with or without weights) in model order;
    ``model_group=True`` nests everything under ``model_weights/`` like ``model.save``.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        root = f.create_group("model_weights") if model_group else f
        root.attrs["layer_names"] = np.array([n.encode("utf8") for n in layer_order])
        root.attrs["backend"] = b"tensorflow"
        root.attrs["keras_version"] = b"2.1.3"
        for layer in sorted(layer_order):
            g = root.create_group(layer)
            names = [w for (lay, w) in weights if lay == layer]
            g.attrs["weight_names"] = np.array([f"{layer}/{w}:0".encode() for w in names])
            for w in names:
                g.create_dataset(f"{layer}/{w}:0", data=weights[(layer, w)])
    tmp.replace(path)
    return path


def random_keras_weights(abstract_variables, seed: int = 0, dense: str = "dense_1") -> dict:
    """Random weights (He-normal kernels, randomised BatchNorm statistics) in Keras naming:
    ``{(layer, weight): array}`` shaped as in a Keras file."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, _, layout) in sorted(expected_keras_weights(abstract_variables, dense).items()):
        kind = key[1]
        if kind in ("kernel", "depthwise_kernel"):
            # depthwise [kh, kw, C, 1]: fan-in kh*kw; conv [kh, kw, in, out]; dense [in, out]
            fan_in = int(np.prod(shape[:2]) if layout == "dw" else np.prod(shape[:-1]))
            a = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        elif kind == "gamma":
            # >= 1 so that the signal survives 27 BatchNorms (with gamma < 1 the features of a
            # random MobileNet no longer depend on the input)
            a = rng.uniform(1.0, 1.4, shape)
        elif kind in ("beta", "bias"):
            a = rng.normal(0.0, 0.05, shape)
        elif kind == "moving_mean":
            a = rng.normal(0.0, 0.1, shape)
        else:  # moving_variance
            a = rng.uniform(0.5, 1.5, shape)
        out[key] = a.astype(np.float32)
    return out


def make_standin(weights_dir=None, seed: int = 0, calibrate: bool = True) -> Path:
    """Random weights written in titu1994's weights-only h5 layout (with h5py, no Keras),
    converted by :func:`convert` and flagged as stand-in. With ``calibrate`` (default) the
    BatchNorm moving statistics are calibrated on real photos
    (:func:`ppjax.convert.common.calibrate_variables`) before they are written, so that the
    stand-in's score depends on the photo."""
    from ppjax.config import downloads_dir

    spec = get_spec(NAME)
    abstract = spec.abstract_variables()
    weights = random_keras_weights(abstract, seed)
    if calibrate:
        variables = calibrate_variables(
            spec, keras_to_flax(weights, abstract, "stand-in", spec.architecture), n_images=32,
            seed=seed)
        flat = traverse_util.flatten_dict(variables)
        for key, (_shape, flat_key, _layout) in expected_keras_weights(abstract).items():
            if flat_key[0] == "batch_stats":
                weights[key] = np.asarray(flat[flat_key], np.float32)
    order = _weightless_layers()[:1] + sorted({k[0] for k in weights}, key=_layer_rank)
    order += _weightless_layers()[1:]
    src = write_keras_h5(downloads_dir(weights_dir) / (spec.filename + ".standin"), weights, order)
    return convert(src, weights_dir, standin=True)


def _layer_rank(name: str) -> tuple[int, int]:
    if name.startswith("conv1"):
        return (0, len(name))
    m = re.match(r"conv_(dw|pw)_(\d+)(_bn)?$", name)
    if m:
        return (int(m.group(2)) * 4 + (m.group(1) == "pw") * 2 + bool(m.group(3)), 0)
    return (10_000, 0)
