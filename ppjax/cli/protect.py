"""``ppjax protect``: its arguments and its entry; the work is :func:`ppjax.runs.protect.run_protect`."""

from __future__ import annotations

import sys
from pathlib import Path

from ppjax import names
from ppjax.cli.help import HelpFormatter
from ppjax.errors import SetupError


def command(args) -> int:
    """Run ``ppjax protect`` with the parsed ``args``; the exit code."""
    from ppjax import parallel
    from ppjax.cli.overrides import parse_overrides
    from ppjax.runs import data
    from ppjax.runs.layout import ProtectConfig
    from ppjax.runs.protect import run_protect

    if args.workers is not None and args.workers < 1:
        raise SetupError(f"--workers must be >= 1, got {args.workers}")
    parallel.init_distributed()  # several processes: PPJAX_COORDINATOR_ADDRESS etc., or SLURM
    task = data.get_task(args.task)
    judge = args.judge or task.judge
    attack = args.attack or task.attack
    if attack is None:
        raise SetupError(f"--attack is needed for task {task.year} (it has no default attack)")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        raise SetupError(str(e)) from None
    cfg = ProtectConfig(
        task=task.year, attack=attack, run_code=args.run_code,
        images=str(Path(args.images).resolve()), judge=judge,
        list_file=str(Path(args.list).resolve()) if args.list else None,
        labels_file=str(Path(args.labels).resolve()) if args.labels else None,
        preset=args.preset, overrides=overrides, seed=int(args.seed),
        standin=bool(args.standin), resize=args.resize, appeal=args.appeal,
        dtype=args.dtype, png_level=args.png_level,
    )
    summary = run_protect(cfg, args.out, weights_dir=args.weights_dir,
                          batch_size=args.batch_size, progress=not args.no_progress,
                          workers=args.workers)
    if summary.get("zip") is None:  # a distributed run's process > 0: process 0 reports
        print(f"process {summary['process']}: {summary['protected']} protected, "
              f"{summary['failed']} failed")
        return 1 if summary["failed"] else 0
    tag = "STAND-IN " if summary["standin"] else ""
    print(f"{tag}{summary['run_code']}: {summary['protected']}/{summary['images']} protected, "
          f"{summary['failed']} failed -> {Path(args.out) / summary['zip']}")
    if summary.get("no_face"):  # task faces: photos in which MTCNN finds no face
        print(f"{summary['no_face']} photo(s) with no face found, written unchanged (not "
              f"protected): {', '.join(summary['no_face_images'][:10])}")
    for e in summary["errors"]:
        print(f"{tag}error: {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def task_arg(s: str):
    """``--task``: a task of :data:`ppjax.names.TASK_NAMES` (2019, 2020, faces; no JAX import)."""
    import argparse

    key = int(s) if str(s).strip().isdigit() else str(s).strip()
    if key not in names.TASK_NAMES:
        raise argparse.ArgumentTypeError(f"unknown task {s!r}; known tasks: "
                                         f"{', '.join(str(t) for t in names.TASK_NAMES)}")
    return key


def attack_catalogue() -> str:
    """``name: preset, preset, ...`` per attack, one per line (for ``--help``; from
    :mod:`ppjax.names`: no JAX import)."""
    lines = [f"  {name:13s} presets: {', '.join(presets)}"
             for name, presets in names.ATTACK_PRESETS.items()]
    return ("attacks (--attack NAME --preset PRESET; 'default' when --preset is not given; every "
            "setting of each: `ppjax attacks NAME`):\n"
            + "\n".join(lines) + "\n  aliases: "
            + ", ".join(f"{a}={n}" for a, n in sorted(names.ATTACK_ALIASES.items())))


def add_parser(sub) -> None:
    from ppjax import config

    p = sub.add_parser(
        "protect", help="protect a test set and write a submission run (resumable)",
        formatter_class=HelpFormatter, epilog=attack_catalogue() + "\n\nexit codes: 0 all done, 1 some "
        "files failed (each listed), 2 usage/setup error (nothing done), 3 unexpected error")
    p.add_argument("--task", type=task_arg, required=True, metavar="|".join(
                       str(t) for t in names.TASK_NAMES),
                   help="Pixel Privacy task: 2019 (ResNet50-Places365, 256x256), 2020 "
                        "(KonCept512, 512x384, JPEG-90) or faces (hide faces from MTCNN, every "
                        "photo at its own size; docs/faces.md)")
    p.add_argument("--attack", default=None, metavar="NAME",
                   help="attack name (listed below with its presets); required for 2019/2020; "
                        "faces: 'faces' (survives an upload)")
    p.add_argument("--preset", default=None,
                   help="named preset of the attack (default: the preset named 'default')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an attack setting (repeatable), e.g. --set steps=20 --set "
                        "eps=8/255; KEY is an AttackConfig field")
    p.add_argument("--images", required=True, help="folder of the images")
    p.add_argument("--list", default=None, help="MEPP list (CSV) naming the images to use")
    p.add_argument("--labels", default=None, help="Places365 places365_val.txt for labels "
                   "(default: labels from the list, else the judge's clean prediction)")
    p.add_argument("--out", required=True, help="output folder (created; resumable; one run at "
                   "a time)")
    p.add_argument("--run-code", required=True, help="TEAM_RUN: names the zip and each PNG")
    p.add_argument("--judge", default=None, choices=names.JUDGE_NAMES, metavar="JUDGE",
                   help=f"override the task's judge (default: the task's); one of: "
                        f"{', '.join(names.JUDGE_NAMES)}")
    p.add_argument("--standin", action="store_true",
                   help="use a random-weight STAND-IN judge (tests/demos only; outputs are "
                        "marked STAND-IN)")
    p.add_argument("--weights-dir", default=None,
                   help=f"converted weights (default: $PPJAX_WEIGHTS_DIR or {config.weights_dir()})")
    p.add_argument("--batch-size", type=int, default=8, help="slots of the streaming engine: "
                   "images attacked at once (does not change results)")
    p.add_argument("--workers", type=int, default=None, help="decode and write pools' size "
                   "(default: one per CPU, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-image seeds derive from it")
    p.add_argument("--resize", default="auto", choices=names.RESIZE_RULES,
                   help="rule for images not at the task's size (see ppjax.image.io; the report "
                        "says what was done to each photo); auto: 2020 centre-crops to 512x384 "
                        "without resizing when the image is large enough, as the organisers did; "
                        "otherwise crop: the shorter side resized, the longer centre-cropped "
                        "(aspect ratio kept); squash (older name: resize): resized to the task's "
                        "size, aspect ratio not kept (default: %(default)s)")
    p.add_argument("--appeal", default=None, metavar="JUDGE", choices=names.JUDGE_NAMES,
                   help="add an appeal term scored by this judge (e.g. nima_mobilenet; a stand-in "
                        "with --standin); its weight: --set appeal_weight=W")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="judge compute dtype; bfloat16 runs the convolutions through oneDNN on "
                        "AMX CPUs (ppjax.accel.onednn) and tensor cores on GPUs")
    p.add_argument("--png-level", type=int, default=None, choices=range(10), metavar="0-9",
                   help="zlib level of the PNGs written (lossless at every level; 9: smallest, "
                        "slowest). Default: a resumed run's own level, else 1 (~3.7x faster "
                        "to encode than 6 for ~7%% more bytes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=command)
