"""The MTCNN cascade's box bookkeeping on the host (numpy float32, as facenet-pytorch's torch
float32 code computes it): window boxes of a P-Net map, NMS, calibration, squaring, clipping.

Boxes are rows ``[x1, y1, x2, y2, score, ...]`` in pixels of the original image.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def window_boxes(prob: np.ndarray, reg: np.ndarray, scale: float, thresh: float) -> np.ndarray:
    """facenet-pytorch ``generateBoundingBox`` for one image: every 12x12 window (stride 2) of
    the P-Net map ``prob`` [h, w] with ``prob >= thresh``, in row-major order, as rows
    ``[x1, y1, x2, y2, score, r0, r1, r2, r3]`` [N, 9] float32; ``x1 = floor((2 i + 1) /
    scale)``, ``x2 = floor((2 i + 12) / scale)`` (float32 arithmetic)."""
    ys, xs = np.nonzero(prob >= thresh)
    bb = np.stack([xs, ys], axis=1).astype(F32)
    s = F32(scale)
    q1 = np.floor((F32(2) * bb + F32(1)) / s)
    q2 = np.floor((F32(2) * bb + F32(12)) / s)
    return np.concatenate([q1, q2, prob[ys, xs][:, None].astype(F32),
                           reg[ys, xs].astype(F32)], axis=1).astype(F32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """torchvision's NMS: by decreasing score (stable), drop boxes whose IoU with a kept box is
    ``> iou``; areas ``(x2 - x1)(y2 - y1)``. Returns the kept indices (int64) in that order."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(F32) for i in range(4))
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores.astype(F32), kind="stable")
    dropped = np.zeros(len(boxes), bool)
    keep = []
    for i in order:
        if dropped[i]:
            continue
        keep.append(i)
        w = np.maximum(np.minimum(x2[i], x2) - np.maximum(x1[i], x1), F32(0))
        h = np.maximum(np.minimum(y2[i], y2) - np.maximum(y1[i], y1), F32(0))
        inter = w * h
        dropped |= inter / (areas[i] + areas - inter) > F32(iou)
    return np.asarray(keep, np.int64)


def nms_min(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """facenet-pytorch ``nms_numpy(..., "Min")`` (the cascade's last NMS): overlap = intersection
    over the smaller area, with the ``+1`` pixel convention; the order of ``np.argsort``
    (ascending, default kind) taken from the end, as the original does."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    x1, y1, x2, y2 = (boxes[:, i].copy() for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores)
    keep = []
    while order.size > 0:
        i = order[-1]
        keep.append(i)
        idx = order[:-1]
        w = np.maximum(0.0, np.minimum(x2[i], x2[idx]) - np.maximum(x1[i], x1[idx]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[idx]) - np.maximum(y1[i], y1[idx]) + 1)
        inter = w * h
        order = order[np.nonzero(inter / np.minimum(area[i], area[idx]) <= threshold)]
    return np.asarray(keep, np.int64)


def calibrate_windows(boxes: np.ndarray) -> np.ndarray:
    """Stage 1's calibration: ``x1 + r0 (x2 - x1)``, ... (no ``+1``); rows [N, 5]."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    out = np.stack([boxes[:, 0] + boxes[:, 5] * w, boxes[:, 1] + boxes[:, 6] * h,
                    boxes[:, 2] + boxes[:, 7] * w, boxes[:, 3] + boxes[:, 8] * h,
                    boxes[:, 4]], axis=1)
    return out.astype(F32)


def bbreg(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """facenet-pytorch ``bbreg``: ``x1 + r0 (x2 - x1 + 1)``, ...; returns a new [N, 5]."""
    out = boxes.astype(F32).copy()
    w = out[:, 2] - out[:, 0] + F32(1)
    h = out[:, 3] - out[:, 1] + F32(1)
    reg = reg.astype(F32)
    out[:, :4] = np.stack([out[:, 0] + reg[:, 0] * w, out[:, 1] + reg[:, 1] * h,
                           out[:, 2] + reg[:, 2] * w, out[:, 3] + reg[:, 3] * h], axis=1)
    return out


def rerec(boxes: np.ndarray) -> np.ndarray:
    """facenet-pytorch ``rerec``: square each box on its longer side around its centre."""
    out = boxes.astype(F32).copy()
    h = out[:, 3] - out[:, 1]
    w = out[:, 2] - out[:, 0]
    side = np.maximum(w, h)
    out[:, 0] = out[:, 0] + w * F32(0.5) - side * F32(0.5)
    out[:, 1] = out[:, 1] + h * F32(0.5) - side * F32(0.5)
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def clip_boxes(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    """facenet-pytorch ``pad``: coordinates truncated to integers and clipped to the image, as
    1-based inclusive ``[x, y, ex, ey]`` [N, 4] int64 (the crop is ``img[y-1:ey, x-1:ex]``)."""
    b = np.trunc(boxes[:, :4]).astype(np.int64)
    b[:, 0] = np.maximum(b[:, 0], 1)
    b[:, 1] = np.maximum(b[:, 1], 1)
    b[:, 2] = np.minimum(b[:, 2], w)
    b[:, 3] = np.minimum(b[:, 3], h)
    return b


def area_resize_np(img: np.ndarray, size: int) -> np.ndarray:
    """torch ``interpolate(mode="area")`` of ``img`` [h, w, C] to ``size`` x ``size``, in float64
    (prefix sums over exact windows)."""
    out = img.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        j = np.arange(size)
        start = (j * n) // size
        end = -((-(j + 1) * n) // size)
        c = np.concatenate([np.zeros_like(np.take(out, [0], axis)), np.cumsum(out, axis)], axis)
        shape = [1] * out.ndim
        shape[axis] = size
        out = (np.take(c, end, axis) - np.take(c, start, axis)) / (end - start).reshape(shape)
    return out
