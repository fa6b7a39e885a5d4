"""Datasets: MEPP lists as published, Places365 labels, folders, streaming, and the TFDS builder
(prepared to array_record and read back with data_source, without TensorFlow)."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from PIL import Image

from ppjax.image import io as imageio
from ppjax.runs import data


@pytest.fixture(scope="module")
def lists(shared_data):
    return shared_data / "pixelprivacy"


def _csv_rows(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [r for r in csv.reader(f) if r]


def test_mepp_lists_as_published(lists):
    val = data.read_mepp_list(lists / "MEPP18val.csv")
    ref = _csv_rows(lists / "MEPP18val.csv")
    assert len(val) == len(ref) == 3000
    assert val == [(r[0], int(r[1])) for r in ref]
    # 60 classes x 50 images, as the task describes
    labels = np.array([lab for _, lab in val])
    assert len(set(labels.tolist())) == 60 and np.all(np.bincount(labels)[labels] == 50)
    test19 = data.read_mepp_list(lists / "MEPP19test.csv")
    assert len(test19) == 600 and all(lab is None for _, lab in test19)
    assert test19[0][0] == _csv_rows(lists / "MEPP19test.csv")[0][0]
    manual = data.read_mepp_list(lists / "MEPP19test_manual.csv")
    assert len(manual) == 60 and all(isinstance(lab, int) for _, lab in manual)
    assert {n for n, _ in manual} <= {n for n, _ in test19}


def test_labels_from_places365_file(lists, tmp_path):
    names = [n for n, _ in data.read_mepp_list(lists / "MEPP19test.csv")][:5]
    (tmp_path / "places365_val.txt").write_text(
        "".join(f"{n} {i * 7}\n" for i, n in enumerate(names)))
    items = data.mepp_items(tmp_path / "imgs", lists / "MEPP19test.csv",
                            tmp_path / "places365_val.txt")
    assert len(items) == 600
    assert [it.label for it in items[:5]] == [0, 7, 14, 21, 28]
    assert all(it.label is None for it in items[5:])
    assert items[0].path == str(tmp_path / "imgs" / names[0])
    # the list's own label column wins (MEPP18val)
    items = data.mepp_items(tmp_path, lists / "MEPP18val.csv", tmp_path / "places365_val.txt")
    assert items[0].label == int(_csv_rows(lists / "MEPP18val.csv")[0][1])


def test_folder_streams_in_batches(tmp_path):
    for i in range(5):
        Image.fromarray(np.full((10, 12, 3), 40 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "readme.txt").write_text("not listed")
    (tmp_path / "bad.jpg").write_text("not an image")
    items = data.folder_items(tmp_path)
    assert [it.name for it in items] == ["bad.jpg"] + [f"im{i}.png" for i in range(5)]
    assert all(it.label is None for it in items)

    pulled = []

    def gen():
        for it in items:
            pulled.append(it.name)
            yield it

    stream = data.iter_batches(gen(), 2020, batch_size=2)
    first = next(stream)
    assert len(pulled) == 2  # only one batch decoded so far
    assert first[0].error and "not an image" in first[0].error and first[0].image is None
    assert first[1].image.shape == (384, 512, 3)
    ref = np.asarray(Image.fromarray(np.full((10, 12, 3), 0, np.uint8)).resize((512, 384),
                                                                                Image.BICUBIC))
    np.testing.assert_array_equal(first[1].image, ref)
    assert first[1].notes and "12x10->512x384" in first[1].notes[0]
    rest = list(stream)
    assert [len(b) for b in rest] == [2, 2]
    ok, x = data.stack_ok(rest[-1], pad_to=4)
    assert len(ok) == 2 and x.shape == (4, 384, 512, 3)
    np.testing.assert_array_equal(x[3], x[1])


def test_tfds_builder_without_tensorflow(lists, tmp_path, photo_paths):
    import tensorflow_datasets as tfds

    from ppjax.runs.tfds_mepp import Mepp

    assert "tensorflow" not in sys.modules or not hasattr(sys.modules["tensorflow"], "constant")
    manual = tmp_path / "manual"
    (manual / "val_256").mkdir(parents=True)
    names = [n for n, _ in data.read_mepp_list(lists / "MEPP19test.csv")][:3]
    (manual / "MEPP19test.csv").write_text("\n".join(names) + "\n")
    (manual / "places365_val.txt").write_text("".join(f"{n} {i + 10}\n"
                                                      for i, n in enumerate(names)))
    expected = {}
    for i, n in enumerate(names):
        img = Image.open(photo_paths[i % len(photo_paths)]).convert("RGB")
        img = img.resize((256, 256), Image.BICUBIC)
        img.save(manual / "val_256" / n, quality=95)
        expected[n] = (np.asarray(Image.open(manual / "val_256" / n).convert("RGB")), i + 10)
    b = Mepp(config="mepp19test", data_dir=tmp_path / "tfds")
    b.download_and_prepare(file_format="array_record",
                           download_config=tfds.download.DownloadConfig(manual_dir=manual))
    for src in (b.as_data_source(split="test"),
                tfds.data_source("mepp/mepp19test", split="test", data_dir=tmp_path / "tfds",
                                 download=False)):
        assert len(src) == 3
        seen = set()
        for i in range(len(src)):
            ex = src[i]
            name = ex["file_name"].decode() if isinstance(ex["file_name"], bytes) else ex[
                "file_name"]
            img, label = expected[name]
            np.testing.assert_array_equal(ex["image"], img)
            assert int(ex["label"]) == label
            seen.add(name)
        assert seen == set(names)
    assert imageio.TASK_HW[2019] == (256, 256)
