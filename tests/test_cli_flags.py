"""The CLI flags that only pass a value on reach what they name: ``protect --appeal JUDGE``,
``--resize RULE`` and ``--workers N`` reach the run's config and the run; ``evaluate
--appeal-resize RULE`` reaches the scorer (the runs themselves are tested elsewhere; this is the
plumbing between the command line and them)."""

from __future__ import annotations

import pytest

from ppjax import cli
from ppjax.runs import evaluate as run_eval
from ppjax.runs import protect as run_prot


def test_protect_flags_reach_the_run(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, out, **kw):
        seen.update(cfg=cfg, **kw)
        return {"zip": "x.zip", "standin": True, "run_code": cfg.run_code, "protected": 0,
                "images": 0, "failed": 0, "errors": []}

    monkeypatch.setattr(run_prot, "run_protect", fake_run)
    rc = cli.main(["protect", "--task", "2019", "--attack", "pgd", "--images", str(tmp_path),
                   "--out", str(tmp_path / "o"), "--run-code", "T_1", "--standin",
                   "--appeal", "nima_mobilenet", "--resize", "squash", "--workers", "3"])
    assert rc == 0
    assert seen["cfg"].appeal == "nima_mobilenet" and seen["cfg"].resize == "squash"
    assert seen["workers"] == 3


def test_protect_refuses_an_unknown_appeal_judge(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["protect", "--task", "2019", "--attack", "pgd", "--images", str(tmp_path),
                  "--out", str(tmp_path / "o"), "--run-code", "T_1", "--appeal", "nope"])
    assert e.value.code == 2


def test_evaluate_appeal_resize_reaches_the_scorer(tmp_path, monkeypatch):
    seen = {}

    def fake_eval(task, run, out, **kw):
        seen.update(kw)
        return {"standin": True, "run_code": "T_1", "run": str(run), "n_images": 0,
                "n_failed": 0, "protection": {}, "errors": []}

    monkeypatch.setattr(run_eval, "run_evaluate", fake_eval)
    rc = cli.main(["evaluate", "--task", "2019", "--run", str(tmp_path), "--out",
                   str(tmp_path / "e"), "--appeal-resize", "nearest", "--trust-files"])
    assert rc == 0
    assert seen["appeal_resize"] == "nearest" and seen["trust_files"] is True
