"""What the GPU check needs from the Python it runs under (benchmarks/gpu_check.sh; docs/gpu.md).

The GPU machine reaches no package index: it runs its own ``python3`` (which holds a CUDA jax),
ppjax from the source tree (``PYTHONPATH``), and installs only the packages that are missing there,
or outside ppjax's declared ranges, from wheels carried from here (benchmarks/gpu_wheels.sh). This
module decides which; it imports nothing outside the standard library (and ``packaging``, which pip
vendors) until it is asked about jax, so it runs before anything is installed.

    python3 -m benchmarks.gpu_env backend          # "<jax version> <backend> <device kind>"
    python3 -m benchmarks.gpu_env missing .whl     # the carried wheels to install, one per line
    python3 -m benchmarks.gpu_env report           # every requirement: installed version, in range
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _packaging():
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:  # pip vendors it
        from pip._vendor.packaging.requirements import Requirement
        from pip._vendor.packaging.version import Version
    return Requirement, Version


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path = REPO / "pyproject.toml") -> dict[str, str]:
    """ppjax's runtime requirements: canonical name -> specifier (e.g. ``">=0.12.8,<0.13"``)."""
    requirement, _ = _packaging()
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {canonical(r.name): str(r.specifier) for r in map(requirement, deps)}


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied(name: str, spec: str) -> bool:
    """True when ``name`` is installed at a version inside ``spec``."""
    requirement, version = _packaging()
    have = installed(name)
    return have is not None and requirement(f"{name}{spec}").specifier.contains(
        version(have), prereleases=True)


def wheel_name(path: Path) -> str:
    """The canonical distribution name of a wheel file (``name-version-tags.whl``)."""
    return canonical(path.name.split("-")[0])


def wheels_to_install(whl_dir: Path, reqs: dict[str, str] | None = None) -> list[Path]:
    """The wheels in ``whl_dir`` whose distribution is missing here, or is one of ppjax's
    requirements at a version outside its range. A carried wheel that is neither (the machine
    already has a fitting version) stays out, so the machine's own builds are used."""
    reqs = requirements() if reqs is None else reqs
    out = []
    for w in sorted(Path(whl_dir).glob("*.whl")):
        name = wheel_name(w)
        if installed(name) is None or (name in reqs and not satisfied(name, reqs[name])):
            out.append(w)
    return out


def report(reqs: dict[str, str] | None = None) -> dict[str, dict]:
    reqs = requirements() if reqs is None else reqs
    return {n: {"wanted": s, "installed": installed(n), "ok": satisfied(n, s)}
            for n, s in sorted(reqs.items())}


def backend() -> str:
    """``"<jax version> <backend> <device kind>"`` (imports jax: initialises its backend)."""
    import jax

    d = jax.devices()[0]
    return f"{jax.__version__} {jax.default_backend()} {d.device_kind.replace(' ', '_')}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("backend")
    m = sub.add_parser("missing")
    m.add_argument("whl_dir", type=Path)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.cmd == "backend":
        print(backend())
    elif args.cmd == "missing":
        for w in wheels_to_install(args.whl_dir):
            print(w)
    else:
        print(json.dumps(report(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
