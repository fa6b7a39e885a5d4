"""What a run did, written down: the complete resolved attack, ppjax's version and commit, and
one line naming the attack and its main settings for reports.

The attack's fields are read generically (:func:`dataclasses.fields` of the resolved config), so
a field added to (or removed from) :class:`ppjax.attacks.AttackConfig` is recorded without a
change here. Pure functions of their arguments except :func:`ppjax_version` (reads git once).
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
from fractions import Fraction
from pathlib import Path

#: The settings a report names beside the attack (when the config has them).
MAIN_SETTINGS = ("eps", "steps", "step_size")


def attack_record(acfg, attack: str, preset: str | None, overrides=()) -> dict:
    """``{"name", "preset", "overrides", "resolved": {every field: value}}`` of a resolved
    attack config (a dataclass; ``hyper`` pairs become a dict); JSON-ready."""
    resolved = {}
    for f in dataclasses.fields(acfg):
        v = getattr(acfg, f.name)
        if f.name == "hyper":
            v = {k: x for k, x in v}
        resolved[f.name] = list(v) if isinstance(v, tuple) else v
    return {"name": attack, "preset": preset or "default",
            "overrides": {k: v for k, v in overrides}, "resolved": resolved}


def fmt_setting(key: str, v) -> str:
    """A value as a person reads it: pixel-scale fractions as k/255 (``8/255``)."""
    if isinstance(v, float) and key in ("eps", "step_size", "step_size2") and 0 < v < 1:
        k = v * 255
        if abs(k - round(k)) < 1e-6:
            return f"{round(k)}/255"
        frac = Fraction(v).limit_denominator(255 * 8)
        if abs(float(frac) - v) < 1e-9 and frac.denominator % 255 == 0:
            return f"{frac.numerator}/{frac.denominator}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def attack_line(record: dict | None) -> str:
    """``pgd (preset default): eps=8/255, steps=10, step_size=2/255, norm=linf`` from an
    :func:`attack_record`; "attack: not recorded" for runs that predate the record."""
    if not record:
        return "attack: not recorded (a run made before ppjax recorded it, or not a protect run)"
    r = record.get("resolved", {})
    parts = [f"{k}={fmt_setting(k, r[k])}" for k in (*MAIN_SETTINGS, "norm") if k in r]
    over = record.get("overrides") or {}
    tail = (f"; overrides: {', '.join(f'{k}={fmt_setting(k, v)}' for k, v in over.items())}"
            if over else "")
    return f"{record['name']} (preset {record['preset']}): {', '.join(parts)}{tail}"


@functools.lru_cache(maxsize=1)
def ppjax_version() -> dict:
    """``{"version": ppjax.__version__, "commit": <git HEAD> or None}``: the commit only when
    ppjax runs from a git checkout (with uncommitted changes marked ``+dirty``)."""
    import ppjax

    root = Path(ppjax.__file__).resolve().parents[1]
    commit = None
    if (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], check=True,
                                    capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                    "--untracked-files=no"], capture_output=True, text=True,
                                   timeout=10).stdout.strip()
            commit += "+dirty" if dirty else ""
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"version": ppjax.__version__, "commit": commit or None}
