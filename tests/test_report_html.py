"""``report.html`` as a person sees it: written by ``evaluate``, opened in a real headless
Chromium (Debian's ``chromium``; the test skips, saying why, where it is absent). The page must
load with no script or console error, show every image decoded, name the attack and its main
settings, and sort its table. ``report.md`` and ``compare.md`` name the attack too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from ppjax import cli
from ppjax.attacks import resolve_attack
from ppjax.judges import Judge
from ppjax.runs.evaluate import run_evaluate
from ppjax.runs.provenance import attack_record

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
N = 3


def _mean_score(x):
    return 100.0 * jnp.mean(x, axis=(1, 2, 3))


@pytest.fixture(scope="module")
def evaluated(photo_paths, tmp_path_factory):
    """A 2020 run of 3 real photos (one changed a lot, one a little, one not at all), with a
    config.json naming its attack, evaluated by a user's score judge."""
    tmp = tmp_path_factory.mktemp("html")
    orig_dir, run_dir = tmp / "orig", tmp / "run"
    orig_dir.mkdir()
    run_dir.mkdir()
    rng = np.random.default_rng(3)
    for i, p in enumerate((photo_paths * N)[:N]):
        o = np.asarray(Image.open(p).convert("RGB").resize((512, 384), Image.BICUBIC))
        o = np.clip(o.astype(int) + 60 * i, 0, 255).astype(np.uint8)
        Image.fromarray(o).save(orig_dir / f"img{i}.png")
        a = np.clip(o.astype(int) + (-90, -2, 0)[i] + rng.integers(-1, 2, o.shape) * (i < 2), 0,
                    255).astype(np.uint8)
        Image.fromarray(a).save(run_dir / f"TEAM_x_img{i}.png")
    acfg = resolve_attack("pgd", None, {"steps": 7, "eps": 4 / 255})
    rec = attack_record(acfg, "pgd", None, (("eps", 4 / 255), ("steps", 7)))
    (run_dir / "config.json").write_text(json.dumps({"task": 2020, "attack_resolved": rec}))
    judge = Judge.from_fn(_mean_score, input_hw=(384, 512), output="score", name="brightness")
    out = tmp / "ev"
    rep = run_evaluate(2020, run_dir, out, images=orig_dir, run_code="TEAM_x", judge=judge,
                       no_appeal=True, batch_size=2, progress=False)
    return out, rep


def test_markdown_reports_name_the_attack(evaluated, tmp_path):
    out, rep = evaluated
    md = (out / "report.md").read_text()
    assert "- attack: pgd (preset default): eps=4/255, steps=7, step_size=2/255, norm=linf" in md
    assert "## Per image" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| img")]
    assert len(table) == N
    # the table's scores are the judge's own (mean brightness x 100 after JPEG-90)
    for r in rep["per_image"]:
        assert f"{r['score']:.4f}" in next(ln for ln in table if ln.startswith(f"| {r['name']} "))
    assert cli.main(["evaluate", "--compare", str(out), str(out), "--out", str(tmp_path)]) == 0
    cmp = (tmp_path / "compare.md").read_text()
    assert "| attack | pgd/default | pgd/default |" in cmp and "| eps | 4/255 | 4/255 |" in cmp
    assert "| steps | 7 | 7 |" in cmp


def _chromium(*args, timeout=120):
    env = {**os.environ, "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--disable-extensions", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                                             "chromium); report.html is checked in a real browser")
def test_report_html_in_headless_chromium(evaluated):
    out, rep = evaluated
    page = out / "report.html"
    text = page.read_text()
    assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
    res = _chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
                    "--dump-dom", page.as_uri())
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", res.stdout).group(1)
    assert 'data-ready="1"' in body and "data-js-error" not in body, body
    assert f'data-images="{N}"' in body and f'data-images-decoded="{3 * N}"' in body, body
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    assert res.stdout.count('<figure class="card') == N
    assert res.stdout.count('class="card ok"') == sum(not r["correct"] for r in rep["per_image"])
    assert "pgd (preset default): eps=4/255, steps=7, step_size=2/255" in res.stdout
    shot = Path(os.environ.get("PPJAX_SCREENSHOT_DIR", out)) / "report_html.png"
    res = _chromium("--hide-scrollbars", "--window-size=1300,1500", f"--screenshot={shot}",
                    page.as_uri())
    assert res.returncode == 0 and shot.stat().st_size > 10_000, res.stderr[-2000:]
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # the gallery's unchanged image (img2) has a black difference panel: black pixels present
    assert (px.sum(-1) < 30).sum() > 100 * 100


def test_table_sorts_in_the_browser(evaluated, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    out, rep = evaluated
    page = tmp_path / "sorted.html"
    col = "score after"  # click its header twice: descending
    click = (f"<script>window.addEventListener('load', function () {{ var th = Array.from("
             f"document.querySelectorAll('#per-image th')).find(t => t.textContent === '{col}');"
             f" sortBy(th); sortBy(th); }});</script></body>")
    page.write_text((out / "report.html").read_text().replace("</body>", click))
    res = _chromium("--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    tbody = res.stdout.split('<table id="per-image">')[1].split("</tbody>")[0]
    names = re.findall(r"<tr><td data-v=\"([^\"]+)\"", tbody)
    want = [r["name"] for r in sorted(rep["per_image"], key=lambda r: -r["score"])]
    assert names == want
