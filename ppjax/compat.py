"""What differs between the JAX releases ppjax supports, in one place.

ppjax is tested on jax 0.10.2 (Python 3.11, ``make test``) and jax 0.11.2 (Python 3.12, the GPU
machine's stack, ``make test-jax-next``). Code that has to behave differently on the two goes
through a function here, chosen once by capability (never by scattered version checks), so the
rest of the package reads the same on both.
"""

from __future__ import annotations

from typing import Any

import jax

#: (major, minor, patch) of the running jax, for the record (benchmarks, reports)
JAX_VERSION: tuple[int, ...] = tuple(int(p) for p in jax.__version__.split(".")[:3]
                                     if p.isdigit())


def compiled_flops(compiled: Any) -> float | None:
    """Floating-point operations of one call of a compiled computation
    (``jax.jit(f).lower(...).compile()``) by XLA's cost analysis, or None where the backend
    gives none. ``cost_analysis()`` returns one dict on jax 0.10 and 0.11 (a list holding one
    dict per program on older releases)."""
    try:
        cost = compiled.cost_analysis()
    except (NotImplementedError, RuntimeError):
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None
