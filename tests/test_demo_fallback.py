"""The demo's choice of judge weights (``ppjax.runs.demo.resolve``): real weights when converted;
else it tries ``ppjax fetch``; when that fails (offline) it explains how to get the weights and
falls back to the STAND-IN, unless ``--require-real``, which stops with a setup error (rc 2)."""

from __future__ import annotations

import pytest

from ppjax import errors
from ppjax.judges import fetch
from ppjax.runs import demo


def _offline(*args, **kwargs):
    raise fetch.FetchError("cannot reach places2.csail.mit.edu (offline)")


def test_fetch_then_explain_then_standin(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(fetch, "fetch_judge", lambda *a, **k: (calls.append(a), _offline())[1])
    assert demo.resolve("resnet50_places365", tmp_path, require_real=False, try_fetch=True)
    assert calls and calls[0][0] == "resnet50_places365"  # it tried to fetch first
    err = capsys.readouterr().err
    assert "STAND-IN" in err and "ppjax fetch resnet50_places365" in err  # how to get them


def test_require_real_stops_instead(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "fetch_judge", _offline)
    with pytest.raises(errors.SetupError, match="--require-real"):
        demo.resolve("resnet50_places365", tmp_path, require_real=True, try_fetch=True)


def test_converted_weights_are_used_without_fetching(tmp_path, monkeypatch):
    (tmp_path / "resnet50_places365").mkdir()
    (tmp_path / "resnet50_places365" / "metadata.json").write_text("{}")
    monkeypatch.setattr(fetch, "fetch_judge", lambda *a, **k: pytest.fail("fetched"))
    assert demo.resolve("resnet50_places365", tmp_path, require_real=True, try_fetch=True) is False
