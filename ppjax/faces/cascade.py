"""The full MTCNN cascade, as ``facenet_pytorch.MTCNN(keep_all=True).detect`` runs it.

The three networks run as compiled JAX (P-Net over the whole pyramid in one program per image
size; R-Net and O-Net on batches of crops padded to a power of two, so a handful of programs
serve every photo); NMS and the box bookkeeping run on the host in float32
(:mod:`ppjax.faces.boxes`), in the original's order:

1. P-Net at every pyramid scale; windows with p >= 0.6; NMS 0.5 per scale, then 0.7 over all
   scales; calibrated by their offsets and squared.
2. Crops (clipped to the image) area-resized to 24x24; R-Net p > 0.7; NMS 0.7; calibrated,
   squared.
3. Crops resized to 48x48; O-Net p > 0.7; landmarks; calibrated; "Min" NMS 0.7.

One deliberate difference: a box lying wholly outside the image after clipping has no crop; the
original then misaligns its arrays (a bug), ppjax drops the box.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.faces import boxes as bx
from ppjax.models.mtcnn import FACTOR, MIN_FACE, ONET_HW, RNET_HW, pyramid_scales

#: facenet-pytorch's stage thresholds (P-Net, R-Net, O-Net).
THRESHOLDS = (0.6, 0.7, 0.7)


class Faces(NamedTuple):
    """The faces found in one image: ``boxes`` [N, 4] float32 (x1, y1, x2, y2 in pixels),
    ``probs`` [N] float32 (O-Net's face probability), ``landmarks`` [N, 5, 2] float32 (x, y of
    the eyes, nose and mouth corners). N = 0 when no face is found."""

    boxes: np.ndarray
    probs: np.ndarray
    landmarks: np.ndarray

    def __len__(self) -> int:  # the number of faces
        return len(self.probs)


def _empty() -> Faces:
    return Faces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                 np.zeros((0, 5, 2), np.float32))


#: Image sizes whose compiled pyramid is kept at once. Each size is one compiled program, and
#: every compiled program holds memory mappings of its own: a long run over photos of many sizes
#: (the face benchmark: 28 photos through 14 pipelines) ended in LLVM's "Cannot allocate memory"
#: once the process reached the kernel's map limit (vm.max_map_count, 65530 here).
MAX_SIZES_CACHED = 32


_SIZES: set = set()


def _hold_size(shape) -> None:
    """Before compiling the pyramid for a new ``shape``: drop every compiled one once
    :data:`MAX_SIZES_CACHED` are held."""
    shape = tuple(shape)
    if shape not in _SIZES and len(_SIZES) >= MAX_SIZES_CACHED:
        _pyramid.clear_cache()
        _SIZES.clear()
    _SIZES.add(shape)


def sizes_compiled() -> int:
    """How many image shapes have a compiled pyramid held now (at most
    :data:`MAX_SIZES_CACHED`)."""
    return len(_SIZES)


def release() -> None:
    """Drop the compiled pyramids (:func:`ppjax.runs.faces.release_programs` drops them all)."""
    _pyramid.clear_cache()
    _SIZES.clear()


@jax.jit
def _pyramid(judge, x01):
    return [(lv.prob, lv.reg) for lv in judge.module.apply(judge.variables, x01,
                                                           method="pyramid")]


@functools.partial(jax.jit, static_argnums=2)
def _net(judge, crops, method: str):
    return judge.module.apply(judge.variables, crops, method=method)


def as_x01(images) -> np.ndarray:
    """``images`` ([H, W, 3] or [B, H, W, 3], uint8 0..255 or float in [0, 1]) as float32
    [B, H, W, 3] in [0, 1]."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"detect: images must be [H, W, 3] or [B, H, W, 3], got {x.shape}")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    return x.astype(np.float32)


def run_net(judge, crops: np.ndarray, method: str) -> list[np.ndarray]:
    """``method`` ("rnet" | "onet") of ``judge`` on ``crops`` [N, S, S, 3] in [0, 1], in batches
    padded to a power of two (at least 16): a few compiled programs for any N."""
    n = len(crops)
    size = max(16, 1 << (n - 1).bit_length())
    padded = np.zeros((size, *crops.shape[1:]), np.float32)
    padded[:n] = crops
    out = _net(judge, jnp.asarray(padded), method)
    return [np.asarray(o)[:n] for o in (out.prob, out.reg, out.landmarks) if o is not None]


def stage1(levels, scales, thresh: float) -> np.ndarray:
    """P-Net's proposals of one image from its pyramid ``levels`` [(prob [h, w], reg [h, w, 4])]:
    windows over ``thresh``, NMS 0.5 per scale, NMS 0.7, calibrated and squared: [N, 5]."""
    found = []
    for (prob, reg), s in zip(levels, scales, strict=True):
        b = bx.window_boxes(prob, reg, s, thresh)
        found.append(b[bx.nms(b[:, :4], b[:, 4], 0.5)])
    b = np.concatenate(found) if found else np.zeros((0, 9), np.float32)
    b = b[bx.nms(b[:, :4], b[:, 4], 0.7)]
    return bx.rerec(bx.calibrate_windows(b))


def crops_at(img255: np.ndarray, boxes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Crops of ``img255`` [H, W, 3] (0..255) at ``boxes`` (clipped as the original does), area-
    resized to ``size``: ([M, size, size, 3] float32 in [0, 1], the indices of the boxes kept)."""
    h, w = img255.shape[:2]
    c = bx.clip_boxes(boxes, w, h)
    keep = np.nonzero((c[:, 3] > c[:, 1] - 1) & (c[:, 2] > c[:, 0] - 1))[0]
    out = [bx.area_resize_np(img255[c[k, 1] - 1:c[k, 3], c[k, 0] - 1:c[k, 2]], size)
           for k in keep]
    crops = np.stack(out) if out else np.zeros((0, size, size, 3))
    return (crops / 255.0).astype(np.float32), keep


def stage2(judge, img255: np.ndarray, boxes: np.ndarray, thresh: float) -> np.ndarray:
    """R-Net on the proposals ``boxes`` [N, 5]: kept (p > ``thresh``), NMS 0.7, calibrated and
    squared: [M, 5] with R-Net's probability."""
    crops, keep = crops_at(img255, boxes, RNET_HW)
    if not len(keep):
        return np.zeros((0, 5), np.float32)
    prob, reg = run_net(judge, crops, "rnet")
    ok = prob > thresh
    b = np.concatenate([boxes[keep][ok, :4], prob[ok, None]], axis=1).astype(np.float32)
    pick = bx.nms(b[:, :4], b[:, 4], 0.7)
    return bx.rerec(bx.bbreg(b[pick], reg[ok][pick]))


def stage3(judge, img255: np.ndarray, boxes: np.ndarray, thresh: float) -> Faces:
    """O-Net on R-Net's boxes: kept (p > ``thresh``), landmarks, calibrated, "Min" NMS 0.7."""
    crops, keep = crops_at(img255, boxes, ONET_HW)
    if not len(keep):
        return _empty()
    prob, reg, pts = run_net(judge, crops, "onet")
    ok = prob > thresh
    b = np.concatenate([boxes[keep][ok, :4], prob[ok, None]], axis=1).astype(np.float32)
    w = b[:, 2] - b[:, 0] + np.float32(1)
    h = b[:, 3] - b[:, 1] + np.float32(1)
    pts = pts[ok]
    px = w[:, None] * pts[:, :5] + b[:, 0:1] - np.float32(1)
    py = h[:, None] * pts[:, 5:] + b[:, 1:2] - np.float32(1)
    b = bx.bbreg(b, reg[ok])
    pick = bx.nms_min(b[:, :4], b[:, 4], 0.7)
    return Faces(b[pick, :4], b[pick, 4], np.stack([px, py], axis=-1)[pick].astype(np.float32))


def detect(judge, images, thresholds=THRESHOLDS, min_face: int = MIN_FACE,
           factor: float = FACTOR) -> list[Faces]:
    """Every face MTCNN finds in each image, as ``facenet_pytorch.MTCNN(keep_all=True,
    min_face_size=min_face, thresholds=thresholds, factor=factor).detect`` does.

    Args:
      judge: the loaded ``mtcnn`` judge (``ppjax.load_judge("mtcnn")``).
      images: [H, W, 3] or [B, H, W, 3] (images of one size), uint8 0..255 or float in [0, 1].
    Returns one :class:`Faces` per image, boxes in the cascade's order (decreasing probability).
    """
    if (min_face, factor) != (judge.module.min_face, judge.module.factor):
        judge = judge.replace(module=judge.module.clone(min_face=min_face, factor=factor))
    x01 = as_x01(images)
    scales = pyramid_scales(x01.shape[1], x01.shape[2], min_face, factor)
    _hold_size(x01.shape)
    levels = [tuple(np.asarray(a) for a in lv) for lv in _pyramid(judge, jnp.asarray(x01))]
    out = []
    for i in range(len(x01)):
        boxes = stage1([(p[i], r[i]) for p, r in levels], scales, thresholds[0])
        img255 = x01[i].astype(np.float64) * 255.0
        if len(boxes):
            boxes = stage2(judge, img255, boxes, thresholds[1])
        out.append(stage3(judge, img255, boxes, thresholds[2]) if len(boxes) else _empty())
    return out


def count_faces(judge, images, **kwargs) -> list[int]:
    """The number of faces :func:`detect` finds in each image."""
    return [len(f) for f in detect(judge, images, **kwargs)]
