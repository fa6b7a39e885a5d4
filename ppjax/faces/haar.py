"""The independent face detector: OpenCV's Haar cascade (Viola-Jones; not a CNN, its model ships
inside the ``opencv-python-headless`` wheel), and the matching of found boxes to true ones that
``evaluate --task faces`` and ``benchmarks.faces`` share.

OpenCV 5 moved the Haar cascades out of the main wheel; the ``faces`` and ``test`` extras pin
``opencv-python-headless>=4.10,<5``, whose wheel carries ``CascadeClassifier`` and
``cv2.data.haarcascades``.

Boxes everywhere are ``[N, 4]`` float32 ``x0, y0, x1, y1`` in pixels, ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["HAAR", "HaarParams", "HaarUnavailable", "box_iou", "count_found", "haar_detect",
           "load_cascade", "match_faces", "MATCH_IOU", "scale_boxes"]

#: IoU at which a found box counts as finding a true face. 0.4, not the usual 0.5: each
#: detector draws its own box around a face (Haar's square is a little larger than the tight
#: LFW crops, MTCNN's taller than wide), and a box that overlaps a face that much is on it.
MATCH_IOU = 0.4


class HaarUnavailable(RuntimeError):
    """OpenCV (with its Haar cascades) is not installed."""


@dataclass(frozen=True)
class HaarParams:
    """``cv2.CascadeClassifier.detectMultiScale`` settings (OpenCV's documented defaults, with
    the common ``min_neighbors=5`` of its face-detection tutorial and a 20 px minimum face, as
    MTCNN's default minimum face size).

    cascade: file in ``cv2.data.haarcascades``; scale_factor: pyramid step; min_neighbors:
    overlapping detections a face needs; min_size: smallest face side in px (0: no minimum)."""

    cascade: str = "haarcascade_frontalface_default.xml"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size: int = 20


HAAR = HaarParams()


@lru_cache(maxsize=4)
def load_cascade(cascade: str):
    """The ``cv2.CascadeClassifier`` of ``cascade`` (a file in ``cv2.data.haarcascades``), loaded
    once; :class:`HaarUnavailable` when OpenCV or its Haar cascades are missing."""
    try:
        import cv2
    except ImportError:
        raise HaarUnavailable("the Haar face detector needs OpenCV: pip install "
                              "'opencv-python-headless>=4.10,<5' (the faces extra)") from None
    if not hasattr(cv2, "CascadeClassifier"):
        version = getattr(cv2, "__version__", "?")
        raise HaarUnavailable(f"OpenCV {version} has no Haar cascades (OpenCV 5 moved them "
                              "out); pip install 'opencv-python-headless>=4.10,<5'")
    path = cv2.data.haarcascades + cascade
    clf = cv2.CascadeClassifier(path)
    if clf.empty():
        raise HaarUnavailable(f"cannot load the Haar cascade {path}")
    return clf


def haar_detect(img: np.ndarray, params: HaarParams = HAAR) -> np.ndarray:
    """Faces found in ``img`` ([H, W, 3] uint8 RGB) by OpenCV's Haar cascade: ``[N, 4]`` float32
    boxes ``x0, y0, x1, y1``. The image is made grey with ``cv2.COLOR_RGB2GRAY`` first."""
    import cv2

    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"haar_detect expects [H, W, 3] uint8, got {img.shape} {img.dtype}")
    clf = load_cascade(params.cascade)
    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    found = clf.detectMultiScale(grey, scaleFactor=params.scale_factor,
                                 minNeighbors=params.min_neighbors,
                                 minSize=(params.min_size, params.min_size))
    xywh = np.asarray(found, np.float32).reshape(-1, 4)
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: ``a`` [N, 4], ``b`` [M, 4] -> [N, M] float64."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None, :]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def scale_boxes(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """``boxes`` [N, 4] of an ``src_hw`` image in the pixels of the same image resized to
    ``dst_hw`` (e.g. the true faces in what an upload pipeline delivers)."""
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([sx, sy, sx, sy], np.float32)


def match_faces(truth: np.ndarray, found: np.ndarray, iou: float = MATCH_IOU) -> np.ndarray:
    """Which true faces were found: ``[N]`` bool. One-to-one, greedy by IoU (the pair with the
    highest IoU first, then the highest among the rest, ...); a pair counts when its IoU is at
    least ``iou``. ``truth`` [N, 4], ``found`` [M, 4] boxes."""
    m = box_iou(truth, found)
    hit = np.zeros(m.shape[0], bool)
    if m.size == 0:
        return hit
    order = np.argsort(-m, axis=None, kind="stable")
    used = np.zeros(m.shape[1], bool)
    for flat in order:
        i, j = divmod(int(flat), m.shape[1])
        if m[i, j] < iou:
            break
        if not hit[i] and not used[j]:
            hit[i] = used[j] = True
    return hit


def count_found(truth: np.ndarray, found: np.ndarray, iou: float = MATCH_IOU) -> int:
    """How many of the true faces ``truth`` the boxes ``found`` find (see :func:`match_faces`)."""
    return int(match_faces(truth, found, iou).sum())
