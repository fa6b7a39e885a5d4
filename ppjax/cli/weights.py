"""Weights and data commands: ``fetch``, ``fetch-data``, ``convert``, ``standin``, ``judges``.

Judges come from :data:`ppjax.judges.JUDGES`, their converters from
:data:`ppjax.convert.CONVERTERS` (each imported only when its command runs)."""

from __future__ import annotations

import sys

from ppjax import config


def _fetch(args) -> int:
    from ppjax.judges.fetch import FetchError, fetch_judge

    rc = 0
    for name in args.judges:
        try:
            print(f"{name}: converted to {fetch_judge(name, args.weights_dir, args.force)}")
        except FetchError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            rc = 1
    return rc


def _fetch_data(args) -> int:
    if args.dataset == "faces":
        return _fetch_faces(args)
    from ppjax.judges.fetch import FetchError, fetch_data

    try:
        for path in fetch_data(args.data_dir, args.force, args.source):
            print(path)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _fetch_faces(args) -> int:
    from pathlib import Path

    from ppjax.errors import SetupError
    from ppjax.faces.dataset import MANIFEST, write_face_set

    out = Path(args.out) if args.out else config.data_dir(args.data_dir) / "faces"
    try:
        fs = write_face_set(out, seed=args.seed)
    except OSError as e:
        raise SetupError(f"cannot write the face set to {out}: {e}") from None
    print(f"{fs.n_faces} faces in {len(fs.images)} images written to {out} "
          f"(manifest {out / MANIFEST}, seed {fs.seed})")
    return 0


def _convert(args) -> int:
    from ppjax.convert import get_converter
    from ppjax.convert.common import ConversionError
    from ppjax.errors import SetupError
    from ppjax.judges import get_spec

    try:
        out = get_converter(get_spec(args.judge).converter).convert(args.src, args.weights_dir)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:  # a torch/Keras checkpoint needs its reader installed
        if e.name not in ("torch", "h5py"):
            raise
        raise SetupError(f"converting {args.src} needs {e.name}, which is not installed here: "
                         f"pip install 'ppjax[convert]'") from None
    print(f"{args.judge}: converted to {out}")
    return 0


def _standin(args) -> int:
    from ppjax.convert import get_converter
    from ppjax.judges import get_spec

    for name in args.judges:
        out = get_converter(get_spec(name).converter).make_standin(args.weights_dir)
        print(f"{name}: STAND-IN (random weights) written to {out}")
    return 0


def _judges(args) -> int:
    from ppjax.judges import JUDGES, judge_dir

    for name, spec in sorted(JUDGES.items()):
        real = (judge_dir(name, args.weights_dir) / "metadata.json").exists()
        stand = (judge_dir(name, args.weights_dir, standin=True) / "metadata.json").exists()
        state = "converted" if real else ("stand-in only" if stand else "not converted")
        size = "any" if spec.any_size else f"{spec.input_hw[0]}x{spec.input_hw[1]}"
        print(f"{name:28s} {size:7s}  {state:14s} {spec.url}")
    return 0


def add_parser(sub) -> None:
    from ppjax.cli.help import HelpFormatter
    from ppjax.names import JUDGE_NAMES

    names = sorted(JUDGE_NAMES)
    fmt = {"formatter_class": HelpFormatter}

    def common(p):
        p.add_argument("--weights-dir", default=None,
                       help=f"converted weights (default: $PPJAX_WEIGHTS_DIR or "
                            f"{config.weights_dir()})")

    p = sub.add_parser("fetch", **fmt, help="download official checkpoints and convert them")
    p.add_argument("judges", nargs="+", choices=names, metavar="JUDGE",
                   help=f"one or more of: {', '.join(names)}")
    p.add_argument("--force", action="store_true", help="download again even if present")
    common(p)
    p.set_defaults(func=_fetch)

    p = sub.add_parser("fetch-data", **fmt,
                       help="download label files and MEPP lists, or build the face set",
                       description="labels: download label files and MEPP lists. faces: build "
                       "the face set (offline, from photos that installed packages ship).")
    p.add_argument("dataset", nargs="?", default="labels", choices=("labels", "faces"),
                   help="what to get")
    p.add_argument("--out", default=None,
                   help="faces: output folder (default: DATA_DIR/faces)")
    p.add_argument("--seed", type=int, default=0, help="faces: seed of the composites' layout")
    p.add_argument("--data-dir", default=None,
                   help=f"label files and lists (default: $PPJAX_DATA_DIR or {config.data_dir()})")
    p.add_argument("--from", dest="source", default=None,
                   help="copy from a local directory with the same layout instead of downloading")
    p.add_argument("--force", action="store_true", help="download again even if present")
    p.set_defaults(func=_fetch_data)

    p = sub.add_parser("convert", **fmt, help="convert a checkpoint file you downloaded by hand")
    p.add_argument("judge", choices=names, metavar="JUDGE", help=f"one of: {', '.join(names)}")
    p.add_argument("src", help="the checkpoint file as published")
    common(p)
    p.set_defaults(func=_convert)

    p = sub.add_parser("standin", **fmt, help="create random-weight STAND-IN judges (tests/demos only)")
    p.add_argument("judges", nargs="+", choices=names, metavar="JUDGE",
                   help=f"one or more of: {', '.join(names)}")
    common(p)
    p.set_defaults(func=_standin)

    p = sub.add_parser("judges", **fmt, help="list judges and whether they are converted")
    common(p)
    p.set_defaults(func=_judges)
