"""Convert ``KonCept512.pth`` (the 2020 judge, PyTorch re-implementation) to ppjax.

The published file is a plain state dict of ``model_qa(num_classes=1)``: ``base.<child index>...``
(Cadene InceptionResNetV2 children, e.g. ``base.0.conv.weight``, ``base.7.branch3.1.bn.running_var``,
``base.10.19.conv2d.bias``) and ``fc.<index>...`` (``fc.0.weight`` ... ``fc.12.bias``). A dict
with a ``"state_dict"`` entry and keys prefixed ``module.`` (saved from ``DataParallel``) is
accepted too. Anything else fails with one :class:`~ppjax.convert.common.ConversionError` naming every
missing, unexpected and mis-shaped key; nothing is written in that case.

    ppjax convert koncept512 KonCept512.pth
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ppjax.convert.common import (
    calibrate_standin,
    convert_torch_checkpoint,
    load_torch_file,
    save_weights_file,
    write_standin_file,
)
from ppjax.judges import get_spec

NAME = "koncept512"
# the published file this converter reads (ppjax.convert.Converter)
SOURCE_FORMAT = (
    "KonCept512.pth: torch weights-only state dict of koniq-PyTorch model_qa (base.*,"
    " fc.*)"
)
log = logging.getLogger("ppjax.convert")

# A random-weight KonCept512 scores photos far from the KonIQ scale (about 0.24 at seed 0), below
# the 2020 threshold of 50, and nearly equal for every photo (spread about 0.04), so the camouflage
# attack would stop before its first step. The stand-in's final Linear is calibrated so that clean
# photos score as real test photos do: mean STANDIN_MEAN, standard deviation STANDIN_STD.
STANDIN_MEAN = 65.0
STANDIN_STD = 5.0
FINAL = "fc.12"  # the head's last Linear(256, 1)


def convert(src, weights_dir=None, standin: bool = False, out_dir=None) -> Path:
    """Validate ``src`` strictly against the Flax KonCept512 tree and save it; returns the
    converted judge's directory (``<weights_dir>/koncept512`` unless ``out_dir`` is given)."""
    return convert_torch_checkpoint(get_spec(NAME), src, weights_dir, standin,
                                    strip_prefixes=("module.",), out_dir=out_dir)


def plain_layout(state_dict: dict) -> dict:
    """``KonCept512.pth`` is the bare ``state_dict()`` of ``model_qa``: nothing to wrap."""
    return dict(state_dict)


def make_standin(weights_dir=None, seed: int = 0, calibrate: bool = True) -> Path:
    """Random weights in the ``KonCept512.pth`` layout, converted by :func:`convert`, flagged as a
    stand-in, then score-calibrated (:func:`calibrate_standin_score`). With ``calibrate``
    (default) the BatchNorm statistics are first calibrated on real photos
    (:func:`ppjax.convert.common.calibrate_standin`, 16 crops at 384x512), so that the score
    depends on the photo through the whole network and not only through the final affine map."""
    spec = get_spec(NAME)

    def calibrated(sd):
        return calibrate_standin(spec, sd, n_images=16, seed=seed, batch=4)

    src = write_standin_file(spec, plain_layout, weights_dir, seed,
                             calibrate=calibrated if calibrate else None)
    out = convert(src, weights_dir, standin=True)
    calibrate_standin_score(src, weights_dir)
    return out


def calibration_photos() -> np.ndarray:
    """scikit-image's public-domain sample photos (:data:`ppjax.convert.common.SAMPLE_PHOTOS`) at the 2020
    size: ``[N, 384, 512, 3]`` float32 in [0, 1]."""
    from importlib.resources import files

    from ppjax.convert.common import SAMPLE_PHOTOS
    from ppjax.image import io as imageio

    out = []
    for name in SAMPLE_PHOTOS:
        img, _ = imageio.decode_rgb((files("skimage.data") / name).read_bytes())
        out.append(imageio.to_float01(imageio.to_task_size(img, 2020)[0]))
    return np.stack(out)


def calibrate_standin_score(src, weights_dir=None, photos: np.ndarray | None = None) -> dict:
    """Make the converted stand-in score clean photos like the real judge does: an affine change
    of the final Linear (``fc.12``) of the stand-in file ``src`` so that ``photos`` (default
    :func:`calibration_photos`) score ``STANDIN_MEAN`` on average with a standard deviation of
    ``STANDIN_STD``; then ``src`` is converted again. Only ever applied to stand-ins.

    Returns ``{"scale", "shift", "before", "after"}`` (the scores before and after)."""
    import jax

    from ppjax import load_judge
    from ppjax.parallel import pad_batch

    x = calibration_photos() if photos is None else np.asarray(photos, np.float32)
    score = jax.jit(lambda j, xb: j.score(xb))  # one compile serves both loads

    def scores():
        judge = load_judge(NAME, weights_dir, standin=True)
        if not judge.standin:  # never touch real weights
            raise ValueError(f"{NAME}: refusing to calibrate weights that are not a stand-in")
        xs = pad_batch(x, len(x) + len(x) % 2)  # pairs: one batch shape
        return np.concatenate([np.asarray(score(judge, xs[i:i + 2]))
                               for i in range(0, len(xs), 2)])[:len(x)]

    before = scores()
    std = float(before.std())
    scale = STANDIN_STD / std if std > 0 else 1.0
    shift = STANDIN_MEAN - scale * float(before.mean())
    sd = load_torch_file(src)  # the stand-in file: torch or NumPy archive, as it was written
    sd[f"{FINAL}.weight"] = sd[f"{FINAL}.weight"] * scale
    sd[f"{FINAL}.bias"] = sd[f"{FINAL}.bias"] * scale + shift
    save_weights_file(sd, src)
    convert(src, weights_dir, standin=True)
    after = scores()
    log.info("%s stand-in calibrated: clean scores %.3g..%.3g -> %.1f..%.1f (scale %.3g, "
             "shift %.3g)", NAME, before.min(), before.max(), after.min(), after.max(), scale, shift)
    return {"scale": scale, "shift": shift, "before": before, "after": after}
