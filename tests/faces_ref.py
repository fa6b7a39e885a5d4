"""Real face photos for the MTCNN tests, from installed packages (never committed):
scikit-image's ``astronaut``, ``camera`` and ``lfw_subset``, matplotlib's ``grace_hopper.jpg``."""

from __future__ import annotations

import numpy as np
from PIL import Image


def astronaut() -> np.ndarray:
    import skimage.data

    return np.asarray(skimage.data.astronaut())


def camera() -> np.ndarray:
    import skimage.data

    return np.repeat(np.asarray(skimage.data.camera())[..., None], 3, axis=-1)


def grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
        return np.asarray(im.convert("RGB"))


def lfw_composite(faces: tuple[int, ...], size: int = 192, face_px: int = 72,
                  seed: int = 0) -> np.ndarray:
    """``len(faces)`` faces of scikit-image's ``lfw_subset`` (25x25 grey, upscaled bicubic to
    ``face_px``) side by side on a real background (scikit-image's ``coffee``, resized to
    ``size``): uint8 [size, size, 3]."""
    import skimage.data

    lfw = skimage.data.lfw_subset()
    bg = Image.fromarray(skimage.data.coffee()).resize((size, size), Image.BICUBIC)
    canvas = np.asarray(bg).copy()
    rng = np.random.default_rng(seed)
    step = size // len(faces)
    for n, i in enumerate(faces):
        face = Image.fromarray((lfw[i] * 255).round().astype(np.uint8)).resize(
            (face_px, face_px), Image.BICUBIC)
        x0 = n * step + (step - face_px) // 2
        y0 = int(rng.integers(0, size - face_px + 1))
        canvas[y0:y0 + face_px, x0:x0 + face_px] = np.asarray(face)[..., None]
    return canvas


_CACHE: dict = {}


def mtcnn_judge(tmp_path_factory):
    """The real ``mtcnn`` judge, fetched (copied from the installed facenet-pytorch) into a
    temporary weights folder once per test session: (judge, weights_dir)."""
    import pytest

    if "judge" not in _CACHE:
        pytest.importorskip("torch")
        from ppjax.judges import load_judge
        from ppjax.judges.fetch import fetch_judge

        wd = tmp_path_factory.mktemp("mtcnn_weights")
        fetch_judge("mtcnn", wd)
        _CACHE["judge"] = (load_judge("mtcnn", wd), wd)
    return _CACHE["judge"]


def match_faces(a_boxes: np.ndarray, b_boxes: np.ndarray) -> np.ndarray:
    """The order of ``b_boxes`` [N, 4] that pairs each with the nearest of ``a_boxes`` [N, 4]
    (by centre; the two detectors order faces differently)."""
    ca = (a_boxes[:, :2] + a_boxes[:, 2:]) / 2
    cb = (b_boxes[:, :2] + b_boxes[:, 2:]) / 2
    order = [int(np.argmin(np.linalg.norm(cb - c, axis=1))) for c in ca]
    assert sorted(order) == list(range(len(b_boxes))), "faces do not pair one to one"
    return np.asarray(order)


def torch_one_thread():
    """A generator for a module fixture: torch on one thread while the module runs (the small
    MTCNN nets gain nothing from more, and a busy machine makes them crawl), then restored."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
