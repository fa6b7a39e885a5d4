"""``make demo``: protect a folder of photos against the 2019 judge and report.

Steps: find the judge (real converted weights; else try ``ppjax fetch``; else, unless
``--require-real``, a clearly labelled random-weight STAND-IN), run ``ppjax protect`` (I-FGSM,
8-bit PNGs + run zip) and ``ppjax evaluate`` (top-1 before/after, NIMA appeal, PSNR/SSIM/CIEDE2000,
figures) into ``--out``. Real users with the real weights get real protection figures; here, offline,
the demo says plainly that it runs on a stand-in.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ppjax import config
from ppjax.fetch import FetchError, fetch_judge, missing_weights_message
from ppjax.judges import get_spec, judge_dir

log = logging.getLogger("ppjax.demo")
REPO = Path(__file__).resolve().parents[1]
JUDGE = "resnet50_places365"
APPEAL = "nima_mobilenet"

BANNER = """
==============================================================================
 STAND-IN DEMO: the real {name} weights are not available here.
 The demo runs on RANDOM weights: the pipeline is real, the protection
 figures are meaningless. To use the real judge:
{how}
==============================================================================
"""


def default_images() -> Path:
    for cand in (config.data_dir() / "images", REPO.parent / "shared" / "data" / "images"):
        if cand.is_dir():
            return cand
    raise SystemExit("no demo images found: pass --images DIR (any folder of photos)")


def resolve(name: str, weights_dir, require_real: bool, try_fetch: bool) -> bool:
    """Return ``standin``: False when real weights are (or become) available."""
    if (judge_dir(name, weights_dir) / "metadata.json").exists():
        return False
    if try_fetch:
        try:
            fetch_judge(name, weights_dir)
            return False
        except FetchError as e:
            log.warning("%s: %s", name, str(e).splitlines()[0])
        except Exception as e:  # a fetched file that does not convert is reported, not hidden
            log.error("%s: fetched but could not convert: %s", name, e)
    if require_real:
        raise SystemExit(f"--require-real: {missing_weights_message(get_spec(name), weights_dir)}")
    how = "\n".join("   " + line for line in missing_weights_message(get_spec(name), weights_dir)
                    .splitlines()[1:4])
    print(BANNER.format(name=name, how=how), file=sys.stderr, flush=True)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/demo")
    p.add_argument("--images", default=None, help="folder of photos (default: the data dir's "
                   "images/, else ../shared/data/images)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--attack", default="ifgsm")
    p.add_argument("--require-real", action="store_true",
                   help="stop with instructions instead of using a stand-in")
    p.add_argument("--no-fetch", action="store_true", help="do not try to download weights")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("ppjax").setLevel(logging.INFO)

    from ppjax.evaluate import run_evaluate
    from ppjax.protect import ProtectConfig, run_protect

    images = Path(a.images) if a.images else default_images()
    out = Path(a.out).resolve()
    standin = resolve(JUDGE, a.weights_dir, a.require_real, not a.no_fetch)
    appeal_standin = resolve(APPEAL, a.weights_dir, False, not a.no_fetch) if not standin else True
    run_dir = out / "run"
    cfg = ProtectConfig(task=2019, attack=a.attack, run_code="ppjax_demo", images=str(images.resolve()),
                        judge=JUDGE, standin=standin)
    summary = run_protect(cfg, run_dir, weights_dir=a.weights_dir, batch_size=4)
    report = run_evaluate(2019, run_dir, out, images=images, run_code="ppjax_demo",
                          standin=standin or appeal_standin, weights_dir=a.weights_dir)
    tag = "STAND-IN (random weights) " if standin else ""
    print(f"\n{tag}demo done: {summary.get('done', '?')} images protected, "
          f"{summary.get('failed', 0)} failed -> {run_dir}\nreport: {out / 'report.md'}")
    if standin:
        print("Reminder: STAND-IN judge; figures exercise the pipeline only.")
    return 1 if summary.get("failed") else 0 if report is not None else 1


if __name__ == "__main__":
    sys.exit(main())
