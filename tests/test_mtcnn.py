"""MTCNN: the converter, ``ppjax fetch mtcnn``, parity of P-Net/R-Net/O-Net with facenet-pytorch's
own torch modules, and the full cascade against ``facenet_pytorch.MTCNN(keep_all=True).detect``.

facenet-pytorch is imported through tests/facenet_shim.py (torchvision's ``batched_nms`` and
``to_tensor`` written from their definitions; no torchvision wheel matches the torch here)."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import facenet_shim, faces_ref

torch = pytest.importorskip("torch")
fp = facenet_shim.import_facenet()


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    yield from faces_ref.torch_one_thread()


@pytest.fixture(scope="module")
def judge_wd(tmp_path_factory):
    return faces_ref.mtcnn_judge(tmp_path_factory)


@pytest.fixture(scope="module")
def nets():
    return fp.PNet().eval(), fp.RNet().eval(), fp.ONet().eval()


@pytest.fixture(scope="module")
def photos(shared_data):
    from ppjax.image import io as imageio

    return {"astronaut": faces_ref.astronaut(), "camera": faces_ref.camera(),
            "grace_hopper": faces_ref.grace_hopper(),
            "lfw_2": faces_ref.lfw_composite((0, 1), 256, 96),
            "lfw_3": faces_ref.lfw_composite((2, 3, 10), 256, 72, seed=1),
            "cam_example": imageio.load_rgb(shared_data / "images" / "cam_example.jpg")[0]}


def _torch_img(img: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(img, np.float32)).permute(2, 0, 1)[None]


def test_fetch_records_the_package_files(judge_wd):
    from ppjax.convert.mtcnn import package_data
    from ppjax.judges import judge_dir
    from ppjax.judges.checkpoint import read_metadata

    judge, wd = judge_wd
    meta = read_metadata(judge_dir("mtcnn", wd))
    data, version = package_data()
    assert not judge.standin and meta["standin"] is False and version in meta["source"]
    for name in ("pnet.pt", "rnet.pt", "onet.pt"):
        assert meta["source_files"][name]["sha256"] == hashlib.sha256(
            (data / name).read_bytes()).hexdigest()


def test_converter_names_every_mismatch_and_writes_nothing(tmp_path):
    from ppjax.convert import mtcnn as conv
    from ppjax.convert.common import ConversionError
    from ppjax.convert.mtcnn import package_data

    data, _ = package_data()
    src = tmp_path / "bad"
    src.mkdir()
    for net in ("pnet", "rnet", "onet"):
        sd = torch.load(data / f"{net}.pt", weights_only=True)
        if net == "rnet":
            del sd["prelu4.weight"]
            sd["extra.weight"] = torch.zeros(3)
            sd["dense4.weight"] = torch.zeros(128, 575)
        torch.save(sd, src / f"{net}.pt")
    with pytest.raises(ConversionError) as e:
        conv.convert(src, weights_dir=tmp_path / "w")
    msg = str(e.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in msg
    for part in ("rnet.pt: prelu4.weight", "rnet.pt: extra.weight", "rnet.pt: dense4.weight"):
        assert part in msg
    assert not (tmp_path / "w" / "mtcnn").exists()


def test_no_standin_and_missing_package_are_setup_errors(judge_wd, monkeypatch, capsys):
    import importlib.util

    from ppjax.cli import main
    from ppjax.errors import SetupError
    from ppjax.judges import load_judge

    _, wd = judge_wd
    with pytest.raises(SetupError, match="no stand-in"):
        load_judge("mtcnn", wd, standin=True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "facenet_pytorch" else real(name, *a))
    assert main(["fetch", "mtcnn", "--weights-dir", str(wd / "other")]) == 2
    assert "pip install --no-deps facenet-pytorch==2.6.0" in capsys.readouterr().err


def test_resize_area_matches_torch_and_is_differentiable():
    from ppjax.models.mtcnn import resize_area

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 37, 53, 3)).astype(np.float32)
    f = jax.jit(resize_area, static_argnums=1)
    for hw in ((23, 31), (50, 17), (12, 70)):
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=hw,
                                              mode="area").permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(f(jnp.asarray(x), hw)), ref, atol=1e-6)
        np.testing.assert_allclose(np.asarray(resize_area(jnp.asarray(x[:1]), hw)), ref[:1],
                                   atol=1e-6)
    g = jax.grad(lambda v: jnp.sum(resize_area(v, (23, 31)) ** 2))(jnp.asarray(x))
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).sum()) > 0


def test_nets_match_facenet_pytorch(judge_wd, nets, photos):
    """P-Net on a pyramid level, R-Net and O-Net on crops of real photos: <= 1e-5."""
    from ppjax.models.mtcnn import pyramid_sizes

    judge, _ = judge_wd
    pnet, rnet, onet = nets
    apply = jax.jit(lambda j, x, method: j.module.apply(j.variables, x, method=method),
                    static_argnums=2)
    crops24, crops48 = [], []
    # (y, x, side) of crops: the faces of astronaut and grace_hopper, and background
    boxes = {"astronaut": ((62, 181, 100), (0, 0, 60)),
             "grace_hopper": ((125, 175, 190), (300, 20, 120)),
             "cam_example": ((0, 0, 60), (40, 90, 200))}
    for name, crops in boxes.items():
        img = photos[name]
        t = _torch_img(img)
        hw = pyramid_sizes(*img.shape[:2])[2]
        level = torch.nn.functional.interpolate(t, size=hw, mode="area")
        with torch.no_grad():
            reg, prob = pnet((level - 127.5) * 0.0078125)
        out = apply(judge, jnp.asarray(level.permute(0, 2, 3, 1).numpy() / 255.0), "pnet")
        np.testing.assert_allclose(np.asarray(out.prob), prob[:, 1].numpy(), atol=1e-5)
        np.testing.assert_allclose(np.asarray(out.reg), reg.permute(0, 2, 3, 1).numpy(),
                                   atol=1e-5)
        for y, x, s in crops:
            c = t[:, :, y:y + s, x:x + s]
            crops24.append(torch.nn.functional.interpolate(c, size=(24, 24), mode="area"))
            crops48.append(torch.nn.functional.interpolate(c, size=(48, 48), mode="area"))
    c24, c48 = torch.cat(crops24), torch.cat(crops48)
    with torch.no_grad():
        rr, rp = rnet((c24 - 127.5) * 0.0078125)
        ob, ol, op = onet((c48 - 127.5) * 0.0078125)
    r = apply(judge, jnp.asarray(c24.permute(0, 2, 3, 1).numpy() / 255.0), "rnet")
    o = apply(judge, jnp.asarray(c48.permute(0, 2, 3, 1).numpy() / 255.0), "onet")
    for ours, ref in ((r.prob, rp[:, 1]), (r.reg, rr), (o.prob, op[:, 1]), (o.reg, ob),
                      (o.landmarks, ol)):
        np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-5)
    assert float(op[:, 1].max()) > 0.9 > float(op[:, 1].min())  # faces and non-faces among them


def _square(img: np.ndarray, side: int = 256) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((side, side), Image.BICUBIC))


def test_detect_matches_facenet_pytorch(judge_wd, photos):
    """Same faces as facenet-pytorch's own detector: count, boxes (1 px), probabilities (1e-4),
    landmarks (1 px). A batch of 256x256 photos (one compiled pyramid) and one photo at its own
    non-square size."""
    from PIL import Image

    from ppjax.faces import detect

    judge, _ = judge_wd
    ref = fp.MTCNN(keep_all=True)
    grace = np.asarray(Image.fromarray(photos["grace_hopper"]).resize((256, 300), Image.BICUBIC))
    batch = {k: _square(v) for k, v in photos.items() if k != "grace_hopper"}
    found = dict(zip(batch, detect(judge, np.stack(list(batch.values()))), strict=True))
    found["grace_hopper"] = detect(judge, grace)[0]
    counts = {}
    for name, faces in found.items():
        img = grace if name == "grace_hopper" else batch[name]
        boxes, probs, points = ref.detect(img, landmarks=True)
        counts[name] = 0 if boxes is None else len(boxes)
        assert len(faces) == counts[name], name
        if counts[name]:
            order = faces_ref.match_faces(faces.boxes, boxes.astype(np.float32))
            np.testing.assert_allclose(faces.boxes, boxes[order].astype(np.float32), atol=1.0)
            np.testing.assert_allclose(faces.probs, probs[order].astype(np.float32), atol=1e-4)
            np.testing.assert_allclose(faces.landmarks, points[order].astype(np.float32),
                                       atol=1.0)
    assert counts["astronaut"] == counts["grace_hopper"] == counts["camera"] == 1
    assert counts["lfw_2"] == 2 and counts["lfw_3"] == 3
    x01 = batch["lfw_2"].astype(np.float32) / 255  # float input: the same image
    assert len(detect(judge, x01)[0]) == 2
