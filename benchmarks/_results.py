"""Benchmark output helpers: JSON files and named sections of ``benchmarks/RESULTS.md``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
from pathlib import Path

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> dict:
    import jax

    return {
        "date": datetime.date.today().isoformat(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu": cpu(),
    }


def cpu() -> dict:
    """The CPU model, its ISA flags, and what oneDNN runs natively on it (``ppjax.accel.onednn``)."""
    from ppjax.accel import onednn

    info = dict(onednn.cpu_info())
    caps = onednn.capabilities()
    info.update(onednn_isa=caps.isa, cpu_class=caps.cpu_class, native_dtypes=list(caps.native_dtypes),
                onednn_max_cpu_isa=os.environ.get("ONEDNN_MAX_CPU_ISA"),
                onednn_unavailable=caps.reason)
    return info


def load_results(paths) -> list[dict]:
    """The JSON results at ``paths``, each with ``"source"``: its path (for ``--merge``)."""
    out = []
    for f in paths:
        with open(f) as fh:
            out.append({**json.load(fh), "source": str(f)})
    return out


def merged_sources(results: list[dict]) -> list[str]:
    """The runs a merge of ``results`` (:func:`load_results`) came from: each result's own
    ``merged_from`` where it is itself a merge (the runs, not the intermediate file), else its
    ``source``."""
    return [s for r in results for s in (r.get("merged_from") or [r.get("source", "?")])]


def write_json(path: str | os.PathLike | None, payload: dict) -> None:
    if not path:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float))
    tmp.replace(path)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def update_section(name: str, body: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) the section between ``<!-- begin:name -->`` and ``<!-- end:name -->``."""
    begin, end = f"<!-- begin:{name} -->", f"<!-- end:{name} -->"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def shared_photo_paths() -> list[Path]:
    """The real photos of the shared data directory (``../shared/data/images`` or
    ``$PPJAX_TEST_DATA/images``), never committed to the repository."""
    from tests.conftest import SHARED

    d = SHARED / "images"
    if not d.is_dir():
        raise FileNotFoundError(f"real photos not found at {d}; set PPJAX_TEST_DATA to the shared "
                                "data directory (it holds images/)")
    return sorted(p for p in d.iterdir() if p.is_file())


def shared_photos(n: int, hw=(256, 256)):
    """``n`` distinct real images [n, H, W, 3] float32 in [0, 1] (see ``tests.conftest.photos_at``)."""
    from tests.conftest import photos_at

    return photos_at(shared_photo_paths(), hw, n)


def add_smoke(parser) -> None:
    """``--smoke``: a tiny run of the benchmark (smallest sizes, one round, no torch.compile,
    nothing written to RESULTS.md), so that a test can check every benchmark still works. Its
    numbers mean nothing."""
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run that only checks the benchmark works (numbers mean "
                             "nothing; RESULTS.md untouched)")


def apply_smoke(args, **tiny) -> None:
    """With ``--smoke``, set ``tiny`` on ``args``; stand-ins go to ``$PPJAX_WEIGHTS_DIR`` when
    set (``benchmarks.run_all --smoke`` shares one folder between the benchmarks) and the
    module has a ``weights_dir`` argument left unset."""
    if not getattr(args, "smoke", False):
        return
    for k, v in tiny.items():
        setattr(args, k, v)
    if getattr(args, "weights_dir", "absent") is None and os.environ.get("PPJAX_WEIGHTS_DIR"):
        args.weights_dir = os.environ["PPJAX_WEIGHTS_DIR"]
