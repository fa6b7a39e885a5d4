"""The face set (``ppjax fetch-data faces``), the Haar detector and the matching of found boxes."""

from __future__ import annotations

import dataclasses
import re
import sys
import types

import numpy as np
import pytest
import skimage.data
from PIL import Image

from ppjax.cli import main
from ppjax.faces import haar
from ppjax.faces.dataset import FACE_PX, LONG_SIDE_PX, build_face_set, load_face_images, read_face_set
from ppjax.faces.haar import box_iou, count_found, haar_detect, match_faces, scale_boxes


@pytest.fixture(scope="module")
def face_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    assert main(["fetch-data", "faces", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def face_set(face_dir):
    return load_face_images(face_dir)


def test_manifest_and_layout(face_dir, face_set):
    fs = read_face_set(face_dir)
    assert 95 <= fs.n_faces <= 110 and fs.n_faces == sum(len(i.faces) for i, _ in face_set)
    lfw = [i for i, _ in face_set if i.file.startswith("lfw_")]
    assert sum(len(i.faces) for i in lfw) == 100
    used = [int(re.search(r"\[(\d+)\]", f.source).group(1)) for i in lfw for f in i.faces]
    assert sorted(used) == list(range(100))  # every LFW face once, none of the non-faces
    for item, img in face_set:
        assert img.shape == (item.height, item.width, 3)
        b = item.boxes()
        assert (b[:, :2] >= 0).all() and (b[:, 2] <= item.width).all() and (b[:, 3] <= item.height).all()
        off_diag = box_iou(b, b)[~np.eye(len(b), dtype=bool)]
        assert (off_diag == 0).all(), item.file
        if item in lfw:
            assert LONG_SIDE_PX[0] <= max(img.shape[:2]) <= LONG_SIDE_PX[1]
            side = b[:, 2] - b[:, 0]
            assert (side == b[:, 3] - b[:, 1]).all()
            assert (side >= FACE_PX[0]).all() and (side <= FACE_PX[1]).all()


def test_deterministic(face_set):
    again = build_face_set()
    assert [i for i, _ in again] == [dataclasses.replace(i, sha256="") for i, _ in face_set]
    for (_, a), (_, b) in zip(again, face_set, strict=True):
        np.testing.assert_array_equal(a, b)


def test_boxes_hold_the_faces(face_set):
    """Each LFW box holds exactly its face, upscaled with Pillow's bicubic filter."""
    faces = np.clip(np.rint(skimage.data.lfw_subset()[:100] * 255.0), 0, 255).astype(np.uint8)
    item, img = next((i, m) for i, m in face_set if i.file.startswith("lfw_"))
    for f in item.faces:
        i = int(re.search(r"\[(\d+)\]", f.source).group(1))
        ref = np.asarray(Image.fromarray(faces[i]).resize((f.x1 - f.x0, f.y1 - f.y0), Image.BICUBIC))
        np.testing.assert_array_equal(img[f.y0:f.y1, f.x0:f.x1], np.repeat(ref[..., None], 3, -1))


def test_haar_finds_the_clean_faces(face_set):
    found = sum(count_found(item.boxes(), haar_detect(img)) for item, img in face_set)
    total = sum(len(item.faces) for item, _ in face_set)
    # measured 99 of 103 (0.96): the cameraman (three-quarter profile) and 3 LFW faces are missed
    assert found / total >= 0.9, (found, total)


def test_matching_by_hand():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    found = np.array([[5, 0, 15, 10],      # IoU with truth 0: 50 / 150
                      [1, 1, 11, 11],      # IoU with truth 0: 81 / 119
                      [50, 50, 60, 60]], np.float32)
    iou = box_iou(truth, found)
    np.testing.assert_allclose(iou, [[50 / 150, 81 / 119, 0], [0, 0, 0]], rtol=1e-12)
    assert match_faces(truth, found).tolist() == [True, False]
    assert count_found(truth, found, iou=0.7) == 0
    # one box between two faces finds one of them only (one-to-one)
    two = np.array([[0, 0, 10, 10], [6, 0, 16, 10]], np.float32)
    assert count_found(two, np.array([[3, 0, 13, 10]], np.float32), iou=0.5) == 1
    assert count_found(two, np.zeros((0, 4), np.float32)) == 0
    np.testing.assert_allclose(scale_boxes(truth, (40, 100), (20, 60)),
                               [[0, 0, 6, 5], [12, 10, 18, 15]])


def test_haar_without_cascades_is_a_clear_error(monkeypatch):
    fake = types.ModuleType("cv2")
    fake.__version__ = "5.1.0"  # OpenCV 5's wheel: no CascadeClassifier
    monkeypatch.setitem(sys.modules, "cv2", fake)
    haar.load_cascade.cache_clear()
    try:
        with pytest.raises(haar.HaarUnavailable, match="opencv-python-headless"):
            haar_detect(np.zeros((32, 32, 3), np.uint8))
    finally:
        haar.load_cascade.cache_clear()


def test_unwritable_out_is_a_setup_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["fetch-data", "faces", "--out", str(blocker / "sub")]) == 2
    assert "cannot write the face set" in capsys.readouterr().err
