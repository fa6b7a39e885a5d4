"""The task ``faces``: task names, size buckets, the controls on the real MTCNN, and the
protect -> evaluate path on a few small photos (docs/faces.md)."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from ppjax.runs import data, faces

pytest.importorskip("cv2")


# ----------------------------------------------------------------------------- no JAX work


def test_task_keys():
    assert data.task_key("2019") == 2019 and data.task_key(2020) == 2020
    assert data.task_key("faces") == "faces"
    assert data.get_task("faces").hw is None and data.get_task("faces").judge == "mtcnn"
    assert data.get_task(2019).hw == (256, 256) and data.get_task("2020").hw == (384, 512)
    with pytest.raises(ValueError, match="known tasks: 2019, 2020, faces"):
        data.task_key("face")


def test_bucket_rule():
    # multiples of 128 up to 1024, of 256 above
    got = [faces.bucket_side(n) for n in (1, 128, 129, 500, 1024, 1025, 1280, 1281, 2048)]
    assert got == [128, 128, 256, 512, 1024, 1280, 1280, 1536, 2048]
    assert faces.bucket_hw(333, 500) == (384, 512)
    assert faces.bucket_slots((1536, 2048), 8) == 2 and faces.bucket_slots((256, 256), 8) == 8
    # no more slots than photos in the bucket (an empty slot computes as much as a full one)
    assert faces.bucket_slots((256, 256), 8, photos=3) == 3
    assert faces.bucket_slots((256, 256), 8, photos=1) == 2


def test_pad_crop_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (201, 268, 3), np.uint8)
    p = faces.pad_to(img, faces.bucket_hw(201, 268))
    assert p.shape == (256, 384, 3)
    assert (p[:201, 268:] == img[:, -1:]).all() and (p[201:, :268] == img[-1:]).all()
    assert (faces.crop_to(p, img.shape[:2]) == img).all()


def test_cap_long_side_is_pillow_lanczos():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (900, 3000, 3), np.uint8)
    from ppjax.image.io import cap_long_side

    out, notes = cap_long_side(img, 2048)
    ref = np.asarray(Image.fromarray(img).resize((2048, 614), Image.LANCZOS))
    assert out.shape == (614, 2048, 3) and (out == ref).all() and "downscaled" in notes[0]
    same, none = cap_long_side(img[:100, :100], 2048)
    assert same.shape == (100, 100, 3) and none == []


def test_predicted_hw_matches_the_decoder(tmp_path):
    im = Image.fromarray(np.zeros((60, 3000, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: decoded 3000 high, 60 wide
    im.save(tmp_path / "r.jpg", exif=exif)
    lo = data.load_item(data.Item("r.jpg", str(tmp_path / "r.jpg")), "faces")
    assert faces.predicted_hw(tmp_path / "r.jpg", 2048) == lo.image.shape[:2] == (2048, 41)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    assert faces.predicted_hw(tmp_path / "bad.png", 2048) is None


def test_runs_of_bucket_groups_consecutive_runs():
    xs = [1, 1, 2, 2, 2, 1, 3]
    got = [(k, list(g)) for k, g in faces.runs_of_bucket(iter(xs), lambda v: v)]
    assert got == [(1, [1, 1]), (2, [2, 2, 2]), (1, [1]), (3, [3])]


# ----------------------------------------------------------------------------- the real judge


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def judge(weights):
    from ppjax.runs.faces_detect import load_mtcnn

    for pkg in ("torch", "facenet_pytorch"):  # MTCNN's weights: facenet-pytorch's torch files
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"needs {pkg}, which is not installed here (MTCNN's real weights are "
                        f"converted from facenet-pytorch's torch files)")

    return load_mtcnn(weights)  # converted from the installed facenet-pytorch package


@pytest.fixture(scope="module")
def face_set(tmp_path_factory):
    from ppjax.faces import dataset

    root = tmp_path_factory.mktemp("faces")
    dataset.write_face_set(root)
    items = dataset.load_face_images(root)
    return root, sorted(items, key=lambda t: t[1].shape[0] * t[1].shape[1])


def _rate(judge, images, truths, view=None) -> float:
    from ppjax.runs import faces_detect as fd

    found = total = 0
    for img, truth in zip(images, truths, strict=True):
        v = img if view is None else view(img)
        boxes = fd.rescale(fd.detect(judge, v)[0], v.shape[:2], img.shape[:2])
        found += fd.count_found(truth, boxes)
        total += len(truth)
    return found / total


def test_controls_the_network_is_real(judge, face_set):
    """>= 95% of the true faces of a few photos are found clean, after uniform noise of the
    default attack's Linf (8/255), and after each pipeline (the ones the report uses and the
    held-out ones): a trained detector, not a chaotic stand-in."""
    from benchmarks.faces import uniform_noise
    from ppjax.runs import faces_detect as fd

    small = face_set[1][:3]
    images, truths = [im for _, im in small], [it.boxes() for it, _ in small]
    assert sum(len(t) for t in truths) >= 6
    assert _rate(judge, images, truths) >= 0.95
    assert _rate(judge, uniform_noise(images, 8), truths) >= 0.95
    for name in fd.pipeline_names() + fd.pipeline_names(held_out=True):
        assert _rate(judge, images, truths, fd.pipeline(name)) >= 0.95, name


def test_benchmark_names_the_photos_whose_faces_survive():
    from benchmarks.faces import survivors

    row = {"per_image": [{"image": "a.png", "faces": 3, "found_upload": 0},
                         {"image": "b.x.png", "faces": 4, "found_upload": 2}]}
    assert survivors(row, "found_upload") == ["b.x 2/4"]
    assert survivors({}, "found_upload") == []


def test_compiled_programs_stay_bounded(judge, monkeypatch):
    """Photos of many sizes: detection keeps at most MAX_SIZES_CACHED compiled pyramids, and
    release_programs gives back the memory mappings a bucket's programs hold (each compiled
    program maps memory of its own; the kernel's map limit ended a 28-photo run)."""
    import os

    from ppjax.faces import cascade

    monkeypatch.setattr(cascade, "MAX_SIZES_CACHED", 2)
    rng = np.random.default_rng(0)
    for side in (40, 41, 42, 43):
        cascade.detect(judge, rng.integers(0, 256, (side, 48, 3), np.uint8))
        assert cascade.sizes_compiled() <= 2
    if not os.path.exists("/proc/self/maps"):
        return

    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for _ in f)

    before = maps()
    faces.release_programs()
    assert cascade.sizes_compiled() == 0
    assert maps() < before


def _same_bucket_pair(items):
    """The two smallest photos of different sizes that share a bucket."""
    for i, (a, x) in enumerate(items):
        for b, y in items[i + 1:]:
            if x.shape != y.shape and faces.bucket_hw(*x.shape[:2]) == faces.bucket_hw(
                    *y.shape[:2]):
                return [(a, x), (b, y)]
    raise AssertionError("no two photos of the face set share a bucket")


def test_protect_then_evaluate(judge, weights, face_set, tmp_path, capsys):
    """Two small face photos of different sizes (one bucket: one compilation), a photo with
    no face and a broken file: protect (the attack without EOT, two steps: the path, not the
    strength, which benchmarks.faces measures) keeps each photo's size, stays inside 8/255,
    reports the no-face photo as such and the broken file as a per-file error (exit 1, no
    traceback); evaluate counts the faces before and after and draws the boxes."""
    from ppjax.cli import main

    src = tmp_path / "photos"
    src.mkdir()
    pair = _same_bucket_pair(face_set[1])
    for it, img in pair:
        Image.fromarray(img).save(src / it.file)
    ramp = np.linspace(0, 255, 160 * 120).reshape(120, 160).astype(np.uint8)
    Image.fromarray(np.stack([ramp] * 3, -1)).save(src / "noface.png")
    (src / "broken.png").write_bytes(b"not an image")
    run, rep_dir = tmp_path / "run", tmp_path / "report"
    rc = main(["protect", "--task", "faces", "--images", str(src), "--out", str(run),
               "--run-code", "T", "--weights-dir", str(weights), "--preset", "plain",
               "--set", "steps=2",
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and "broken.png" in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protected"] == 2 and summary["no_face"] == 1 and summary["failed"] == 1
    assert summary["no_face_images"] == ["noface.png"]
    for it, img in pair:
        out = np.asarray(Image.open(run / "images" / f"T_{it.file}"))
        assert out.shape == img.shape  # its own size, not squashed
        assert np.abs(out.astype(int) - img).max() <= 8
    rc = main(["evaluate", "--run", str(run), "--out", str(rep_dir), "--weights-dir",
               str(weights), "--no-progress"])
    assert rc == 1  # the broken file is reported again
    rep = json.loads((rep_dir / "report.json").read_text())
    rows = {r["name"]: r for r in rep["per_image"]}
    assert rows["noface.png"]["no_face"] and rows["noface.png"]["faces_clean"] == 0
    for it, _ in pair:
        r = rows[it.file]
        assert r["faces_clean"] >= 1 and r["linf_levels"] <= 8 and 0.5 < r["ssim"] <= 1.0
        assert {"found_png", "found_jpeg90", "found_upload"} <= set(r)
        assert ("haar_found_upload" in r) == (rep["haar_unavailable"] is None)
    assert rep["protection"]["no_face"] == 1 and rep["protection"]["images_with_faces"] == 2
    assert rep["appeal"]["nima_mean"] is None or rep["appeal_unavailable"] is None
    assert (rep_dir / "faces_boxes.png").exists() and "STAND-IN" not in (
        rep_dir / "report.md").read_text()


def test_full_disk_stops_cleanly_and_resumes(judge, weights, face_set, tmp_path, capsys):
    """``--out`` fills up mid-run on the faces path (issue 27, as for the main path in
    tests/test_faults.py): exit code 2 and one clear message, no file blamed for the disk, only
    whole PNGs that the manifest lists; after space is freed the rerun resumes and its PNGs
    and zip equal an uninterrupted run's. Three photos of one bucket (one compilation)."""
    from ppjax.cli import main
    from tests.test_faults import assert_no_traceback, assert_whole, small_tmpfs

    src = tmp_path / "photos"
    src.mkdir()
    (a, x), (b, y) = _same_bucket_pair(face_set[1])
    for name, img in ((a.file, x), (b.file, y), (f"again_{a.file}", x)):
        Image.fromarray(img).save(src / name)

    def protect(out):
        rc = main(["protect", "--task", "faces", "--images", str(src), "--out", str(out),
                   "--run-code", "T", "--weights-dir", str(weights), "--preset", "plain",
                   "--set", "steps=2", "--workers", "2", "--no-progress"])
        return rc, capsys.readouterr().err

    ref = tmp_path / "ref"
    rc, err = protect(ref)
    assert rc == 0, err[-3000:]
    pngs = sorted(p.stat().st_size for p in (ref / "images").iterdir())
    size = (pngs[-1] + pngs[0] // 2) // 4096 * 4096 + 4096  # room for one PNG, not for three
    with small_tmpfs(tmp_path / "small", size) as free:
        out = tmp_path / "small" / "run"
        rc, err = protect(out)
        assert rc == 2, err[-3000:]
        assert_no_traceback(err)
        msg = [ln for ln in err.splitlines() if "No space left on device" in ln]
        assert len(msg) == 1 and "rerun the same command" in msg[0], err[-3000:]
        man = assert_whole(out)
        assert all(e["status"] == "ok" for e in man.values())  # no file blamed for the disk
        assert 1 <= len(man) < 3, man  # it stopped while writing PNGs, not before
        free()
        rc, err = protect(out)
        assert rc == 0, err[-3000:]
        assert json.loads((out / "summary.json").read_text())["skipped_on_resume"] == len(man)
        assert_whole(out)
        names = sorted(p.name for p in (ref / "images").iterdir())
        assert sorted(p.name for p in (out / "images").iterdir()) == names
        for p in sorted((ref / "images").iterdir()) + [ref / "T.zip"]:
            assert (out / p.relative_to(ref)).read_bytes() == p.read_bytes(), p.name
