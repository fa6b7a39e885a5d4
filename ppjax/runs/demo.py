"""``make demo``: protect a folder of photos against the 2019 judge and report.

Steps: find the judge (real converted weights; else try ``ppjax fetch``; else, unless
``--require-real``, a clearly labelled random-weight STAND-IN), run ``ppjax protect`` (I-FGSM,
8-bit PNGs + run zip) and ``ppjax evaluate`` (top-1 before/after, NIMA appeal, PSNR/SSIM/CIEDE2000,
figures) into ``--out``. Real users with the real weights get real protection figures; here, offline,
the demo says plainly that it runs on a stand-in.

Photos: ``--images DIR`` (it must exist); else the data directory's ``images/``
(``$PPJAX_DATA_DIR``); else ``../shared/data/images`` beside the checkout; else the public-domain
sample photos that scikit-image ships inside its wheel (astronaut, coffee, chelsea, rocket,
motorcycle), copied to ``<out>/sample-photos/``, so the demo works on a fresh machine offline.

Then the task ``faces`` (:func:`faces_demo`, skipped with ``--no-faces``): the photos of people
that installed packages ship (scikit-image's astronaut and camera, matplotlib's Grace Hopper)
protected from MTCNN with its REAL weights (converted from the installed facenet-pytorch, offline),
and evaluated into ``<out>/faces/report.md``: each photo with the faces found before and after.
Nothing there is a stand-in, so nothing is marked STAND-IN.

Each set of photos and settings gets its own run folder, ``<out>/runs/<folder>-<hash>/``, so a demo
on new photos starts a fresh run and a repeated demo resumes its own; ``<out>/report.md`` reports
the latest demo. Exit codes as ``ppjax`` (:mod:`ppjax.errors`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

from ppjax import config, errors
from ppjax.convert.common import SAMPLE_PHOTOS

log = logging.getLogger("ppjax.runs.demo")
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


def sample_photos(dest: Path) -> Path:
    """Copy scikit-image's sample photos (:data:`SAMPLE_PHOTOS`) into ``dest``; returns it."""
    from importlib.resources import files

    src = files("skimage.data")
    dest.mkdir(parents=True, exist_ok=True)
    for name in SAMPLE_PHOTOS:
        data = (src / name).read_bytes()
        if not (dest / name).exists() or (dest / name).read_bytes() != data:
            (dest / name).write_bytes(data)
    return dest


def default_images(out: Path) -> Path:
    """The first folder of photos that exists (see the module docstring)."""
    for cand in (config.data_dir() / "images", config.beside_checkout("shared", "data", "images")):
        if cand.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in cand.iterdir()):
            return cand
    try:
        return sample_photos(out / "sample-photos")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise errors.SetupError(f"no demo photos: pass --images DIR (scikit-image's sample photos "
                                f"are unavailable: {e})") from None


def resolve(name: str, weights_dir, require_real: bool, try_fetch: bool) -> bool:
    """Return ``standin``: False when real weights are (or become) available."""
    from ppjax.judges import get_spec, judge_dir
    from ppjax.judges.fetch import FetchError, fetch_judge, missing_weights_message

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
        raise errors.SetupError(f"--require-real: "
                                f"{missing_weights_message(get_spec(name), weights_dir)}")
    how = "\n".join("   " + line for line in missing_weights_message(get_spec(name), weights_dir)
                    .splitlines()[1:4])
    print(BANNER.format(name=name, how=how), file=sys.stderr, flush=True)
    return True


def run_folder(out: Path, images: Path, key: dict) -> Path:
    """``<out>/runs/<folder name>-<hash of the photos' folder and settings>``."""
    h = hashlib.sha256(json.dumps({"images": str(images), **key}, sort_keys=True).encode())
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in images.name)[:40] or "photos"
    return out / "runs" / f"{slug}-{h.hexdigest()[:10]}"


def _demo(a) -> int:
    from ppjax.cli.overrides import parse_overrides
    from ppjax.runs.evaluate import run_evaluate
    from ppjax.runs.layout import ProtectConfig
    from ppjax.runs.protect import run_protect

    out = Path(a.out).resolve()
    if a.images is not None:
        images = Path(a.images).expanduser()
        if not images.is_dir():
            what = "is not a folder" if images.exists() else "does not exist"
            raise errors.SetupError(f"--images {images} {what} (DEMO_IMAGES in `make demo`)")
    else:
        images = default_images(out)
    images = images.resolve()
    try:
        overrides = parse_overrides(a.set)
    except ValueError as e:
        raise errors.SetupError(str(e)) from None
    log.info("demo photos: %s", images)
    standin = resolve(JUDGE, a.weights_dir, a.require_real, not a.no_fetch)
    appeal_standin = resolve(APPEAL, a.weights_dir, False, not a.no_fetch) if not standin else True
    cfg = ProtectConfig(task=2019, attack=a.attack, run_code="ppjax_demo", images=str(images),
                        judge=JUDGE, standin=standin, overrides=overrides)
    run_dir = run_folder(out, images, {k: v for k, v in cfg.to_json().items() if k != "images"})
    summary = run_protect(cfg, run_dir, weights_dir=a.weights_dir, batch_size=4)
    report = run_evaluate(2019, run_dir, out, images=images, run_code="ppjax_demo",
                          standin=standin or appeal_standin, weights_dir=a.weights_dir)
    tag = "STAND-IN (random weights) " if standin else ""
    print(f"\n{tag}demo done: {summary.get('done', '?')} images protected, "
          f"{summary.get('failed', 0)} failed -> {run_dir}\nreport: {out / 'report.md'}, "
          f"{out / 'report.html'}")
    if standin:
        print("Reminder: STAND-IN judge; figures exercise the pipeline only.")
    failed = bool(summary.get("failed")) or report is None
    if not a.no_faces:
        failed |= faces_demo(out, a.weights_dir, overrides=parse_overrides(
            a.faces_set or [f"steps={FACES_DEMO_STEPS}"]))
    return errors.SOME_FAILED if failed else errors.OK


#: steps of the demo's faces attack (the preset's 100 would make the demo several minutes long
#: on a laptop CPU; ``--faces-set steps=100`` for the full attack)
FACES_DEMO_STEPS = 20

#: the photos of people that installed packages ship: scikit-image's astronaut and camera,
#: matplotlib's grace_hopper.jpg
FACE_PHOTOS = (("skimage.data", "astronaut.png"), ("skimage.data", "camera.png"),
               ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))


def face_photos(dest: Path) -> Path:
    """Copy :data:`FACE_PHOTOS` into ``dest``; returns it."""
    from importlib.resources import files

    dest.mkdir(parents=True, exist_ok=True)
    for package, name in FACE_PHOTOS:
        data = (files(package) / name).read_bytes()
        target = dest / Path(name).name
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    return dest


def faces_demo(out: Path, weights_dir=None, overrides=()) -> bool:
    """The task ``faces`` on :data:`FACE_PHOTOS` with MTCNN's real weights (converted from the
    installed facenet-pytorch first): ``<out>/faces/report.md`` with each photo's boxes before
    and after. Returns True when something failed; a missing facenet-pytorch is said and
    skipped."""
    from ppjax.runs.evaluate import run_evaluate
    from ppjax.runs.layout import ProtectConfig
    from ppjax.runs.protect import run_protect

    try:
        from ppjax.runs.faces_detect import load_mtcnn

        load_mtcnn(weights_dir)
    except Exception as e:  # no facenet-pytorch here: the faces demo cannot run on real weights
        print(f"faces demo skipped: MTCNN's weights are unavailable ({e})", file=sys.stderr)
        return False
    photos = face_photos(out / "face-photos")
    cfg = ProtectConfig(task="faces", attack="faces", run_code="ppjax_demo", images=str(photos),
                        judge="mtcnn", overrides=tuple(overrides))
    run_dir = run_folder(out, photos, {k: v for k, v in cfg.to_json().items() if k != "images"})
    summary = run_protect(cfg, run_dir, weights_dir=weights_dir, batch_size=4)
    rep = run_evaluate("faces", run_dir, out / "faces", weights_dir=weights_dir)
    p = {k: "n/a" if v is None else f"{v:.2f}" for k, v in rep["protection"].items()
         if k.startswith("found_rate_")}
    print(f"\nfaces demo (real MTCNN weights): {summary['protected']} photos protected; faces "
          f"still found: PNG {p['found_rate_png']}, JPEG-90 {p['found_rate_jpeg90']}, upload "
          f"{p['found_rate_upload']} -> report: {out / 'faces' / 'report.md'}")
    return bool(summary.get("failed") or rep["n_failed"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output folder")
    p.add_argument("--images", default=None,
                   help="folder of photos (must exist); default: the data dir's images/, else "
                        "../shared/data/images, else scikit-image's sample photos")
    p.add_argument("--weights-dir", default=None, help="converted weights (default "
                   "$PPJAX_WEIGHTS_DIR or ~/.cache/ppjax/weights)")
    p.add_argument("--attack", default="ifgsm", help="attack name")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an attack setting (repeatable), e.g. --set steps=5")
    p.add_argument("--require-real", action="store_true",
                   help="stop with instructions instead of using a stand-in")
    p.add_argument("--no-fetch", action="store_true", help="do not try to download weights")
    p.add_argument("--no-faces", action="store_true", help="skip the faces task (MTCNN)")
    p.add_argument("--faces-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting of the faces attack (repeatable; default: "
                        f"steps={FACES_DEMO_STEPS})")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks of unexpected errors")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        force=True)
    logging.getLogger("ppjax").setLevel(logging.INFO)
    try:
        return _demo(a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return errors.INTERRUPTED
    except errors.SetupError as e:
        print(f"error: {e}", file=sys.stderr)
        return errors.USAGE
    except Exception as e:
        if a.verbose:
            log.exception("unexpected error")
        print(f"error: unexpected {type(e).__name__}: {e}"
              + ("" if a.verbose else " (rerun with -v for the traceback)"), file=sys.stderr)
        return errors.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
