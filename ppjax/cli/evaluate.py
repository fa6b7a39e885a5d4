"""``ppjax evaluate``: its arguments and its entry; the work is in :mod:`ppjax.runs.evaluate`."""

from __future__ import annotations

import sys
from pathlib import Path

from ppjax import names
from ppjax.cli.help import HelpFormatter
from ppjax.cli.protect import task_arg


def command(args) -> int:
    """Run ``ppjax evaluate`` with the parsed ``args``; the exit code."""
    from ppjax.runs import report, transfer
    from ppjax.runs.evaluate import run_compare, run_evaluate
    from ppjax.runs.layout import CONFIG

    try:
        if args.compare:
            run_compare(args.compare, args.out)
            print((Path(args.out) / "compare.md").read_text(encoding="utf-8"))
            matrix = transfer.transfer_matrix(args.compare, args.out)  # runs scored with --judges
            if matrix is not None:
                print(transfer.matrix_markdown(matrix))
            return 0
        if not args.run:
            print("error: give --run DIR (or --compare RUN ...)", file=sys.stderr)
            return 2
        if args.task is None and not (Path(args.run) / CONFIG).exists():
            print("error: --task is needed for a run folder without config.json", file=sys.stderr)
            return 2
        judges = (transfer.load_judges(args.judges, args.weights_dir, args.standin)
                  if args.judges else None)
        rep = run_evaluate(args.task, args.run, args.out, images=args.images,
                           list_file=args.list, labels_file=args.labels, run_code=args.run_code,
                           standin=args.standin, weights_dir=args.weights_dir,
                           batch_size=args.batch_size, appeal_resize=args.appeal_resize,
                           progress=not args.no_progress, trust_files=args.trust_files)
        if judges:
            rep = transfer.add_judges_to_report(
                rep, args.out, judges, images=args.images, list_file=args.list,
                labels_file=args.labels, run_code=args.run_code, batch_size=args.batch_size)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tag = "STAND-IN " if rep["standin"] else ""
    prot = ", ".join(f"{k}={report.fmt_value(v)}" for k, v in rep["protection"].items())
    print(f"{tag}{rep['run_code'] or rep['run']}: {rep['n_images']} images, {rep['n_failed']} "
          f"failed; {prot}; report {Path(args.out) / 'report.md'}")
    if rep.get("judged_by", {}).get("note"):
        print(rep["judged_by"]["note"])
    for r in rep.get("judged_by", {}).get("judges", []):
        print(f"{tag}judged by {r['label']}: top-1 {report.fmt_value(r['top1_accuracy'])} (clean "
              f"{report.fmt_value(r['top1_accuracy_clean'])}), drop {report.fmt_value(r['accuracy_drop'])}")
    for e in rep["errors"]:
        print(f"{tag}error: {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if rep["n_failed"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run as the organisers did; or --compare runs",
                       formatter_class=HelpFormatter, description="Writes report.md, "
                       "report.html (open it in a browser), report.json and figures to --out.")
    p.add_argument("--task", type=task_arg, default=None,
                   metavar="|".join(str(t) for t in names.TASK_NAMES),
                   help="default: the task of the protect run")
    p.add_argument("--run", default=None, help="a `ppjax protect` output folder or a PNG folder")
    p.add_argument("--images", default=None, help="the original images (default: the run's)")
    p.add_argument("--list", default=None,
                   help="MEPP list (CSV) of the originals (default: the protect run's, when "
                        "--images is the run's)")
    p.add_argument("--labels", default=None,
                   help="Places365 labels file (places365_val.txt) when the list has no labels "
                        "(default: the protect run's, when --images is the run's)")
    p.add_argument("--run-code", default=None, help="strip this prefix to match originals")
    p.add_argument("--compare", nargs="+", default=None, metavar="RUN",
                   help="evaluated folders (with report.json) to put side by side")
    p.add_argument("--judges", default=None, metavar="A,B,C",
                   help="also score the run with these classifier judges (top-1 and drop per "
                        "judge; e.g. the Places365 zoo); --compare then builds the transfer "
                        f"matrix. Judges: {', '.join(names.JUDGE_NAMES)}")
    p.add_argument("--out", required=True,
                   help="folder for report.md, report.json and the figures")
    p.add_argument("--standin", action="store_true",
                   help="use random-weight STAND-IN judges (tests/demos only)")
    p.add_argument("--weights-dir", default=None,
                   help="converted weights (default: $PPJAX_WEIGHTS_DIR or ~/.cache/ppjax/weights)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images per judge call (does not change results; default: %(default)s)")
    p.add_argument("--appeal-resize", default="auto",
                   choices=("auto", "native", "nearest", "bilinear"),
                   help="how NIMA sees the images; auto = as its original (Keras NIMA: native "
                        "size; nima.pytorch: bilinear 224x224; default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-files", action="store_true",
                   help="skip checking a protect run's PNGs against its manifest's sha256 and "
                        "its zip against the PNGs (a file that fails is an error, not scored)")
    p.set_defaults(func=command)
