"""``ppjax evaluate --judges`` (one run, several judges) and the transfer matrix of
``ppjax evaluate --compare``, checked against torch replicas loaded straight from the stand-in
checkpoint files (the original CSAIL layout), not through ppjax."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.torch_ref.places365_zoo import AlexNet, ResNet18
from ppjax import cli
from ppjax.config import downloads_dir
from ppjax.judges import get_spec
from ppjax.runs import transfer

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
JUDGES = ("resnet18_places365", "alexnet_places365")


def _torch_from_file(name, weights):
    """The replica with the weights of the stand-in file as written (module. prefix stripped)."""
    raw = torch.load(downloads_dir(weights) / (get_spec(name).filename + ".standin"),
                     weights_only=True)
    net = ResNet18(365) if name.startswith("resnet18") else AlexNet(365)
    net.load_state_dict({k.removeprefix("module."): v for k, v in raw["state_dict"].items()})
    return net.eval()


def _top1(net, imgs):
    x = (np.stack(imgs).astype(np.float32) / 255.0 - MEAN) / STD
    with torch.no_grad():
        return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).argmax(-1).numpy()


def test_unknown_or_unsuitable_judges_fail_before_any_work(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown judge.*nope"):
        transfer.parse_judges("alexnet_places365,nope")
    with pytest.raises(ValueError, match="koncept512: not a classifier"):
        transfer.parse_judges("koncept512")
    with pytest.raises(ValueError, match="named twice"):
        transfer.parse_judges("alexnet_places365,alexnet_places365")
    assert transfer.parse_judges(" resnet18_places365, alexnet_places365 ") == list(JUDGES)
    run = tmp_path / "run"
    run.mkdir()
    rc = cli.main(["evaluate", "--task", "2019", "--run", str(run), "--out", str(tmp_path / "o"),
                   "--judges", "nope", "--standin"])
    assert rc == 2 and "unknown judge" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a judge that is not converted (and no --standin): named, before any evaluation
    rc = cli.main(["evaluate", "--task", "2019", "--run", str(run), "--out", str(tmp_path / "o"),
                   "--judges", "alexnet_places365", "--weights-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert rc == 2 and "'alexnet_places365' has not been converted" in err
    assert "ppjax fetch alexnet_places365" in err
    assert not (tmp_path / "o").exists()


def test_several_judges_and_transfer_matrix(photo_paths, standin_weights, tmp_path, capsys):
    w = standin_weights
    orig, run = tmp_path / "orig", tmp_path / "run"
    orig.mkdir()
    run.mkdir()
    rng = np.random.default_rng(0)
    names, clean, prot = [], [], []
    for i, p in enumerate([*photo_paths, photo_paths[0]][:3]):
        o = np.asarray(Image.open(p).convert("RGB").resize((256, 256), Image.BICUBIC))
        if i == 2:
            o = o[::-1].copy()  # a third distinct original
        a = o if i == 1 else np.clip(o.astype(int) + rng.integers(-60, 61, o.shape), 0, 255
                                     ).astype(np.uint8)
        Image.fromarray(o).save(orig / f"img{i}.png")
        Image.fromarray(a).save(run / f"TEAM_img{i}.png")
        names.append(f"img{i}.png")
        clean.append(o)
        prot.append(a)

    out = tmp_path / "ev"
    rc = cli.main(["evaluate", "--task", "2019", "--run", str(run), "--images", str(orig),
                   "--run-code", "TEAM", "--out", str(out), "--standin", "--weights-dir", str(w),
                   "--batch-size", "2", "--judges", ",".join(JUDGES)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "Transfer rates between random networks are meaningless" in stdout
    rep = json.loads((out / "report.json").read_text())
    res = rep["judged_by"]
    assert res["standin"] and [r["judge"] for r in res["judges"]] == list(JUDGES)
    for r in res["judges"]:
        net = _torch_from_file(r["judge"], w)
        pc, pa = _top1(net, clean), _top1(net, prot)
        # no labels given: each judge's own clean prediction is the label
        assert r["n_labelled"] == 3 and r["top1_accuracy_clean"] == 1.0
        assert r["top1_accuracy"] == pytest.approx(float(np.mean(pa == pc)))
        assert r["accuracy_drop"] == pytest.approx(1.0 - float(np.mean(pa == pc)))
        assert "STAND-IN" in r["label"]
        assert f"judged by {r['label']}" in stdout
    md = (out / "report.md").read_text()
    assert "## Judged by several judges (transfer)" in md and "meaningless" in md
    assert rep["protection"]["top1_accuracy"] is not None  # the task's own evaluation is kept

    # the originals as a second "run": nothing changed, every drop is 0
    out2 = tmp_path / "ev2"
    assert cli.main(["evaluate", "--task", "2019", "--run", str(orig), "--images", str(orig),
                     "--out", str(out2), "--standin", "--weights-dir", str(w),
                     "--batch-size", "2", "--judges", "alexnet_places365"]) == 0
    capsys.readouterr()
    cmp = tmp_path / "cmp"
    assert cli.main(["evaluate", "--compare", str(out), str(out2), "--out", str(cmp)]) == 0
    printed = capsys.readouterr().out
    m = json.loads((cmp / "transfer_matrix.json").read_text())
    assert m["standin"] and "meaningless" in m["note"]
    assert m["columns"] == list(JUDGES)
    assert m["rows"] == ["unknown (TEAM)", "unknown (orig)"]  # plain folders: judge unknown
    assert m["drop"][0] == [r["accuracy_drop"] for r in res["judges"]]
    assert m["drop"][1] == [None, 0.0]  # the second run was not judged by resnet18
    tmd = (cmp / "transfer_matrix.md").read_text()
    assert "STAND-IN" in tmd and "meaningless" in tmd and "| protected against" in tmd
    assert "Transfer matrix" in printed
    png = Image.open(cmp / "transfer_matrix.png")
    assert png.size[0] > 200 and png.size[1] > 150


def test_matrix_rows_are_what_each_run_was_protected_against(tmp_path):
    # hand-written reports: protected against X (rows) x judged by Y (columns)
    def rep(against, run_code, drops):
        return {"task": 2019, "run": f"/r/{run_code}", "standin": False, "judged_by": {
            "protected_against": against, "attack": "pgd", "run_code": run_code,
            "standin": False, "judges": [
                {"judge": j, "label": j, "accuracy_drop": d, "top1_accuracy": 1 - d,
                 "top1_accuracy_clean": 1.0, "n_labelled": 10} for j, d in drops.items()]}}

    runs = []
    for i, r in enumerate([rep("resnet50_places365", "A", {"resnet50_places365": 0.9,
                                                           "alexnet_places365": 0.2}),
                           rep("alexnet_places365", "B", {"alexnet_places365": 0.8,
                                                          "resnet50_places365": 0.1})]):
        d = tmp_path / f"r{i}"
        d.mkdir()
        (d / "report.json").write_text(json.dumps(r))
        runs.append(d)
    m = transfer.transfer_matrix(runs, tmp_path / "out")
    assert m["rows"] == ["resnet50_places365", "alexnet_places365"]
    assert m["columns"] == ["resnet50_places365", "alexnet_places365"]
    assert m["drop"] == [[0.9, 0.2], [0.1, 0.8]]
    assert not m["standin"] and m["note"] is None
    md = (tmp_path / "out" / "transfer_matrix.md").read_text()
    assert "STAND-IN" not in md
    assert "| resnet50_places365 | 0.9000 | 0.2000 |" in md
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "report.json").write_text(json.dumps({"task": 2019, "run": "/r/p"}))
    assert transfer.transfer_matrix([plain], tmp_path / "none") is None  # no --judges: no matrix
    assert not (tmp_path / "none").exists()
