"""A user's own model as a judge: the pieces :meth:`ppjax.judges.Judge.from_fn` assembles.

A plain JAX callable ``fn(x01) -> logits [B, C] | score [B]`` becomes a Flax module without
variables (:class:`FnModule`); a Flax module comes with its variables as they are. Either gets a
:class:`~ppjax.judges.spec.JudgeSpec` that says it is the user's (``converter == ""``): nothing
in it can be fetched, converted, folded or accelerated, and whatever needs that knowledge says so
by name (:func:`needs_registered`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn

from ppjax.judges.spec import JUDGES, JudgeSpec

#: Outputs a user's judge may have (a registered one may also be a "distribution").
OUTPUTS = ("logits", "score")
USER_ARCHITECTURE = "the user's own model (Judge.from_fn)"


class FnModule(nn.Module):
    """``fn(x01)`` as a Flax module without variables (``apply({}, x01)``).

    ``num_classes``: the number of logits, when known (objective "group" with indices, label
    checks); None leaves it to the output's shape.
    """

    fn: Callable[[Any], Any]
    num_classes: int | None = None

    def __call__(self, x01):
        return self.fn(x01)


def user_spec(name: str, input_hw, output: str) -> JudgeSpec:
    """The spec of a user's judge: ``input_hw`` None = any size."""
    if output not in OUTPUTS:
        raise ValueError(f"Judge.from_fn: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    if name in JUDGES:
        raise ValueError(f"Judge.from_fn: name {name!r} is a registered judge's; choose another "
                         f"(a registered judge's knowledge must not apply to your model)")
    hw = None if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
    return JudgeSpec(name=name, model="", input_hw=hw, output=output, filename="", url="",
                     converter="", architecture=USER_ARCHITECTURE,
                     preprocessing="the user's own, inside the model (input RGB in [0, 1])")


def as_module(fn, variables, num_classes: int | None):
    """``(module, variables)`` of ``fn``: a Flax module with its variables, or a plain callable
    wrapped in :class:`FnModule`."""
    if isinstance(fn, nn.Module):
        if variables is None:
            raise ValueError("Judge.from_fn: a Flax module needs its variables "
                             "(Judge.from_fn(module, variables=params, ...))")
        return fn, variables
    if not callable(fn):
        raise TypeError(f"Judge.from_fn: expected a callable x01 -> output or a Flax module, got "
                        f"{type(fn).__name__}")
    if variables is not None:
        raise ValueError("Judge.from_fn: variables= is for a Flax module; a plain function "
                         "closes over its own parameters")
    return FnModule(fn=fn, num_classes=num_classes), {}


def is_registered(spec: JudgeSpec) -> bool:
    """Whether ``spec`` is a registered judge's (converted weights, known model), not a user's."""
    return bool(spec.converter)


def needs_registered(spec: JudgeSpec, what: str, instead: str) -> None:
    """Raise a ``ValueError`` naming ``what`` when ``spec`` is a user's judge."""
    if not is_registered(spec):
        raise ValueError(f"{what} needs a registered judge's model knowledge; judge {spec.name!r} "
                         f"is the user's own (Judge.from_fn): {instead}")
