"""``--merge`` of the benchmarks whose full runs take hours: rows of several runs become one
result, a later run's row replacing an earlier one's, and runs of other settings are refused."""

from __future__ import annotations

import json

import pytest


def _payload(rows, date, peak=None, steps=10):
    machine = {"date": date, "cpu": {"model": "cpu"}, "cpus": 2, "jax": "x"}
    out = {"machine": machine, "dtype": "bfloat16", "torch_dtype": "bf16 autocast",
           "args": {"steps": steps, "rounds": 3, "batch": None, "ttp_n": 64,
                    "ttp_steps_cap": None, "smoke": False},
           "rows": [{"key": k, "judge": "j", "original": "o", **v} for k, v in rows.items()]}
    if peak:
        out["peak"] = peak
    return out


def test_methods_speed_merge(tmp_path):
    from benchmarks import methods_speed as ms

    peak = {"gemm": {d: {"flops_per_s": 1e11, "via": "torch", "n": 8}
                     for d in ("bfloat16", "float32")}, "rows": []}
    a = _payload({"pgd": {"ratio_vs_torch": 0.9}, "ace": {"ratio_vs_torch": 1.6}}, "d1", peak)
    b = _payload({"pgd": {"ratio_vs_torch": 1.0, "ratio_ttp": 3.1}, "fgsm": {}}, "d2")
    m = ms.merge([a, b])
    assert [r["key"] for r in m["rows"]] == ["fgsm", "pgd", "ace"]  # the table's order
    pgd = m["rows"][1]
    assert pgd["ratio_ttp"] == 3.1 and pgd["machine"]["date"] == "d2"
    assert m["rows"][2]["machine"]["date"] == "d1" and m["peak"] == peak
    with pytest.raises(ValueError):
        ms.merge([a, _payload({}, "d3", steps=20)])
    # a later run without the time to protect keeps the earlier TTP fields, and says whose
    c = _payload({"pgd": {"ratio_vs_torch": 1.1, "ratio_vs_torch_judged": 1.3}}, "d4")
    c["args"]["ttp_steps_cap"] = 100  # another cap: each row records its own budget
    pgd = ms.merge([a, b, c])["rows"][1]
    assert pgd["ratio_vs_torch"] == 1.1 and pgd["ratio_ttp"] == 3.1
    assert pgd["measured"]["throughput"]["date"] == "d4" and pgd["measured"]["ttp"]["date"] == "d2"
    assert "ratio_ttp" not in ms.merge([a, c])["rows"][1]
    # the command: files in, one JSON out
    paths = []
    for i, p in enumerate((a, b)):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(p))
    out = tmp_path / "all.json"
    assert ms.main(["--merge", *map(str, paths), "--json", str(out), "--no-results-md"]) == 0
    assert [r["key"] for r in json.loads(out.read_text())["rows"]] == ["fgsm", "pgd", "ace"]
    # merging that result again lists the two runs it came from, then the new one
    paths.append(tmp_path / "2.json")
    paths[-1].write_text(json.dumps(c))
    assert ms.main(["--merge", str(out), str(paths[-1]), "--json", str(out),
                    "--no-results-md"]) == 0
    assert json.loads(out.read_text())["merged_from"] == [str(p) for p in paths]
    assert ms.main(["--merge", str(tmp_path / "missing.json"), "--no-results-md"]) == 2


def test_faces_rows_and_merge():
    """``--rows`` picks rows; ``--merge`` keeps one row per (eps, EOT), the later run's
    winning, recomputes the goals from the merged rows and refuses runs of another set."""
    from benchmarks.faces import merge, parse_rows

    assert parse_rows("16:eot, 8:none") == [(16, True), (8, False)]
    for bad in ("8", "8:jpeg", "x:eot", "0:eot", ","):
        with pytest.raises(ValueError):
            parse_rows(bad)

    def row(eps, eot, upload, date):
        return {"eps_levels": eps, "eot": eot, "detect_rate_png": 0.0,
                "detect_rate_jpeg90": 0.04, "detect_rate_upload": upload, "ssim_mean": 0.93,
                "machine": {"date": date, "cpu": {"model": "cpu"}}}

    def run(rows, ratio, date):
        return {"n_images": 3, "n_faces": 9, "steps": 100, "smoke": False, "contended": False,
                "seconds": 10.0, "machine": {"date": date, "cpu": {"model": "cpu"}},
                "clean_detect_rate": 1.0, "noise_detect_rate": 0.99, "rows": rows,
                "ratio_vs_torch": ratio, "torch": {"ratio_vs_torch": ratio}}

    a = run([row(8, True, 0.2, "d1"), row(8, False, 0.5, "d1")], None, "d1")
    b = run([row(16, True, 0.05, "d2"), row(8, True, 0.08, "d2"), row(2, True, 0.9, "d2")],
            1.5, "d2")
    m = merge([a, b])
    assert [(r["eps_levels"], r["eot"]) for r in m["rows"]] == [(2, True), (8, True),
                                                               (16, True), (8, False)]
    assert m["rows"][1]["detect_rate_upload"] == 0.08 and m["rows"][1]["machine"]["date"] == "d2"
    assert m["ratio_vs_torch"] == 1.5 and m["seconds"] == 20.0
    # merging a merged result counts the runs it came from, not the file
    again = merge([{**m, "source": "m.json"}, {**run([row(4, True, 0.3, "d8")], None, "d8"),
                                               "source": "c.json"}])
    assert len(again["merged_from"]) == 3 and again["merged_from"][-1] == "c.json"
    assert m["smallest_eps"] == {"detect_rate_jpeg90": 2, "detect_rate_upload": 8}
    # a lower eps that reaches a rate only below the SSIM floor is reported apart
    low = merge([a, b, run([{**row(4, True, 0.09, "d7"), "ssim_mean": 0.85}], None, "d7")])
    assert low["smallest_eps"]["detect_rate_upload"] == 8
    assert low["smallest_eps_any_ssim"]["detect_rate_upload"] == 4
    assert m["goals"]["eps8_eot_upload"] and m["goals"]["ratio_vs_torch"]
    with pytest.raises(ValueError):
        merge([a, {**b, "n_faces": 10}])
    with pytest.raises(ValueError):
        merge([a, run([{**row(4, True, 0.1, "d3"), "settings": {"kappa": 5}}], None, "d3")])
    # the default attack's objective changed between the runs (rows before the field: "faces")
    jit = run([{**row(16, True, 0.05, "d4"), "objective": "faces_jitter"}], None, "d4")
    with pytest.raises(ValueError, match="objectives"):
        merge([a, jit])
    assert len(merge([jit, run([{**row(8, False, 0.3, "d5"), "objective": "faces"}], None,
                               "d5")])["rows"]) == 2
    # a run stopped after its first row: no total time, no torch side; its row's time counts
    cut = {k: v for k, v in run([{**row(4, True, 0.3, "d6"), "seconds": 7.0}], None, "d6").items()
           if k not in ("seconds", "torch", "ratio_vs_torch")}
    m = merge([b, cut])
    assert m["seconds"] == 17.0 and m["ratio_vs_torch"] == 1.5 and len(m["rows"]) == 4
