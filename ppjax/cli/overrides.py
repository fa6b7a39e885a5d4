"""``--set KEY=VALUE`` of the command line (``ppjax protect``, ``make demo``) as attack settings."""

from __future__ import annotations

import json
import re


def parse_overrides(pairs) -> tuple[tuple[str, object], ...]:
    """``["eps=0.03", "steps=10", "loss=ce"]`` -> sorted ``(("eps", 0.03), ...)``; values are
    parsed as JSON when possible (numbers, booleans), ``a/b`` as a fraction (``eps=8/255``), else
    kept as strings."""
    out = {}
    for s in pairs or ():
        if "=" not in s:
            raise ValueError(f"--set expects key=value, got {s!r}")
        k, v = s.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise ValueError(f"--set key {k!r} is not a valid name")
        frac = re.fullmatch(r"\s*(-?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*", v)
        if frac and float(frac.group(2)) != 0:  # eps=8/255
            out[k] = float(frac.group(1)) / float(frac.group(2))
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return tuple(sorted(out.items()))
