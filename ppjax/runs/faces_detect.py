"""What the task ``faces`` measures a photo with, in one place: the MTCNN cascade
(:mod:`ppjax.faces`), OpenCV's Haar detector (:mod:`ppjax.faces.haar`), the named upload
pipelines, and box matching. Boxes are ``[N, 4]`` float ``(x1, y1, x2, y2)`` in the pixels of
the image given; :func:`count_found` maps boxes found on a resized copy back first.
"""

from __future__ import annotations

import numpy as np


def detect(judge, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's faces in ``img`` [H, W, 3] uint8 at the default thresholds: ``(boxes [N, 4],
    probs [N])`` (:func:`ppjax.faces.detect` with the judge's nets)."""
    from ppjax import faces

    return faces.detect(judge, img)


def haar(img: np.ndarray) -> np.ndarray:
    """OpenCV Haar frontal-face boxes ``[N, 4]`` of ``img`` [H, W, 3] uint8."""
    from ppjax.faces import haar as haar_mod

    return haar_mod.detect(img)


def pipeline(name: str):
    """The named evaluation pipeline ``fn(img uint8 [H, W, 3]) -> uint8 [h, w, 3]`` (jpeg90,
    upload, and the held-out ones of :mod:`ppjax.faces.pipelines`)."""
    from ppjax.faces import pipelines

    return pipelines.PIPELINES[name]


def pipeline_names(held_out: bool = False) -> tuple[str, ...]:
    """The evaluation pipelines: the two of the report, or every held-out one."""
    from ppjax.faces import pipelines

    return pipelines.held_out_names() if held_out else ("jpeg90", "upload")


def rescale(boxes: np.ndarray, src_hw, dst_hw) -> np.ndarray:
    """``boxes`` found on an image of ``src_hw`` in the pixels of one of ``dst_hw``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return b * np.array([sx, sy, sx, sy])


def count_found(true_boxes, found_boxes, iou: float = 0.5) -> int:
    """How many of ``true_boxes`` are matched by ``found_boxes`` (one-to-one, IoU >= ``iou``;
    :func:`ppjax.faces.haar.match`)."""
    from ppjax.faces import haar as haar_mod

    if len(true_boxes) == 0 or len(found_boxes) == 0:
        return 0
    return int(haar_mod.match(np.asarray(true_boxes), np.asarray(found_boxes), iou))
