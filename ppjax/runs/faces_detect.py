"""What the task ``faces`` measures a photo with, in one place: the MTCNN cascade
(:mod:`ppjax.faces`), OpenCV's Haar detector (:mod:`ppjax.faces.haar`), the named upload
pipelines (:mod:`ppjax.image.upload`), and box matching. Boxes are ``[N, 4]`` float
``(x1, y1, x2, y2)`` in the pixels of the image given (:func:`rescale` maps boxes found on a
resized copy back).
"""

from __future__ import annotations

import numpy as np


def detect(judge, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MTCNN's faces in ``img`` [H, W, 3] uint8 at the default thresholds: ``(boxes [N, 4],
    probs [N])`` (:func:`ppjax.faces.detect` with the judge's nets)."""
    from ppjax import faces

    found = faces.detect(judge, img)[0]
    return found.boxes, found.probs


def haar(img: np.ndarray) -> np.ndarray:
    """OpenCV Haar frontal-face boxes ``[N, 4]`` of ``img`` [H, W, 3] uint8."""
    from ppjax.faces import haar as haar_mod

    return haar_mod.haar_detect(img)


def haar_unavailable() -> str | None:
    """Why OpenCV's Haar detector cannot run here (e.g. OpenCV 5 without its cascades), or None.
    The reports then say so instead of failing: it is the independent check, not the judge."""
    from ppjax.faces import haar as haar_mod

    try:
        haar_mod.haar_detect(np.zeros((24, 24, 3), np.uint8))
    except haar_mod.HaarUnavailable as e:
        return str(e)
    return None


def pipeline(name: str):
    """The named pipeline ``fn(img uint8 [H, W, 3]) -> uint8 [h, w, 3]`` (jpeg90, upload, and
    the held-out ones: :data:`ppjax.image.upload.PIPELINES`)."""
    from ppjax.image import upload

    return upload.PIPELINES[name]


def pipeline_names(held_out: bool = False) -> tuple[str, ...]:
    """The evaluation pipelines: the two of the report, or every held-out one."""
    from ppjax.image import upload

    return tuple(upload.HELD_OUT if held_out else upload.EVAL_PIPELINES)


def rescale(boxes: np.ndarray, src_hw, dst_hw) -> np.ndarray:
    """``boxes`` found on an image of ``src_hw`` in the pixels of one of ``dst_hw``."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
    return b * np.array([sx, sy, sx, sy])


def count_found(true_boxes, found_boxes) -> int:
    """How many of ``true_boxes`` are matched by ``found_boxes`` (one-to-one, greedy by IoU, at
    IoU >= :data:`ppjax.faces.haar.MATCH_IOU`: :func:`ppjax.faces.haar.count_found`)."""
    from ppjax.faces import haar as haar_mod

    return haar_mod.count_found(np.asarray(true_boxes).reshape(-1, 4),
                                np.asarray(found_boxes).reshape(-1, 4))


def load_mtcnn(weights_dir=None):
    """The ``mtcnn`` judge; converted first from the installed facenet-pytorch package (offline,
    :func:`ppjax.judges.fetch.fetch_judge`) when it has not been yet."""
    import ppjax
    from ppjax.judges import judge_dir
    from ppjax.judges.fetch import fetch_judge

    if not (judge_dir("mtcnn", weights_dir) / "metadata.json").exists():
        fetch_judge("mtcnn", weights_dir)
    return ppjax.load_judge("mtcnn", weights_dir)
