"""Judges: the white-box models that ppjax protects photos from, loaded by name.

A judge is a pure function ``x01 -> output`` on ``x01: [B, H, W, 3] float32 in [0, 1]``; the
original model's preprocessing lives inside the Flax module. ``Judge`` is a pytree (its variables
are leaves, everything else is static), so it can be passed straight into ``jax.jit``.

Converted weights live in ``<weights_dir>/<name>/`` (see :mod:`ppjax.judges.checkpoint`). A random-weight
stand-in lives in ``<weights_dir>/<name>.standin/`` and is only ever used when asked for
explicitly (``standin=True`` / ``--standin``); every judge carries a ``standin`` flag that reports
and logs must print.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

from ppjax.errors import SetupError
from ppjax.judges import custom
from ppjax.judges.checkpoint import BrokenCheckpoint, load_converted
from ppjax.judges.spec import (
    JUDGES,
    JudgeSpec,
    broken_weights_message,
    get_spec,
    judge_dir,
    missing_weights_message,
    register,
)

__all__ = ["JUDGES", "STANDIN_WARNING", "Judge", "JudgeSpec", "as_judge", "get_spec", "judge_dir",
           "load_judge",
           "missing_weights_message", "register"]

log = logging.getLogger("ppjax")

STANDIN_WARNING = (
    "STAND-IN JUDGE: '{name}' runs on RANDOM weights, not the real checkpoint. "
    "Its predictions mean nothing; figures produced with it only exercise the pipeline."
)


@struct.dataclass
class Judge:
    """A loaded judge: ``judge(x01)`` returns its output (see ``spec.output``)."""

    variables: Any
    module: nn.Module = struct.field(pytree_node=False)
    spec: JudgeSpec = struct.field(pytree_node=False)
    standin: bool = struct.field(pytree_node=False, default=False)

    # Hashable by identity, so a judge can be a static argument of ``jax.jit`` or a dict key
    # (its arrays have no value hash). Passing it as an ordinary (pytree) argument is cheaper:
    # a static judge is embedded in the program as constants.
    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    @classmethod
    def from_fn(cls, fn, input_hw=None, output: str = "logits", name: str = "user_judge", *,
                variables=None, num_classes: int | None = None) -> Judge:
        """A user's own model as a judge, for :func:`ppjax.attack` and :func:`ppjax.stream`.

        Args:
          fn: a JAX callable ``fn(x01) -> output``, with ``x01: [B, H, W, 3] float32 in [0, 1]``
            (its preprocessing inside), or a Flax module (``module.apply(variables, x01)``).
          input_hw: ``(height, width)`` it takes; None: any size.
          output: "logits" ([B, C]: classifier objectives) or "score" ([B]: score objectives).
          name: shown in errors and results; not a registered judge's name.
          variables: the Flax module's variables (leaves of the judge's pytree, so they are
            program arguments, not constants). Not for a plain function.
          num_classes: C, when a plain function's logits are known to have C classes.
        Everything that needs a registered judge's knowledge (``backend="onednn"``, ``dtype=``
        for a module without a ``dtype`` attribute, fetching, conversion) refuses it by name.
        """
        module, variables = custom.as_module(fn, variables, num_classes)
        return cls(variables=variables, module=module, spec=custom.user_spec(name, input_hw, output))

    @property
    def registered(self) -> bool:
        """Whether this is a registered judge (not :meth:`from_fn`'s)."""
        return custom.is_registered(self.spec)

    def check_input(self, x01: jnp.ndarray) -> None:
        if x01.ndim != 4 or x01.shape[-1] != 3:
            raise ValueError(
                f"judge {self.spec.name!r} expects images [B, H, W, 3] in [0, 1], got shape "
                f"{tuple(x01.shape)}"
            )
        if self.spec.input_hw is None or self.spec.any_size:
            return
        h, w = self.spec.input_hw
        if tuple(x01.shape[1:3]) != (h, w):
            raise ValueError(
                f"judge {self.spec.name!r} expects {h}x{w} (HxW) images, got "
                f"{x01.shape[1]}x{x01.shape[2]}; bring them to the task's size first "
                f"(ppjax.image.io.to_task_size)"
            )

    def __call__(self, x01: jnp.ndarray) -> jnp.ndarray:
        self.check_input(x01)
        return self.module.apply(self.variables, x01)

    def score(self, x01: jnp.ndarray) -> jnp.ndarray:
        """Scalar score per image, ``[B]``: the MOS for score judges, the mean of the
        distribution (sum_i i * p_i, i = 1..K) for distribution judges."""
        out = self(x01)
        if self.spec.output == "score":
            return out.reshape(out.shape[0])
        if self.spec.output == "distribution":
            k = out.shape[-1]
            bins = jnp.arange(1, k + 1, dtype=out.dtype).reshape((1,) * (out.ndim - 1) + (k,))
            return jnp.sum(out * bins, axis=-1)
        raise TypeError(f"judge {self.spec.name!r} outputs logits; it has no scalar score")

    def with_dtype(self, dtype) -> Judge:
        """Same weights, compute in ``dtype`` (e.g. ``jnp.bfloat16``); outputs stay float32."""
        if not hasattr(self.module, "dtype"):
            custom.needs_registered(self.spec, "dtype=", "cast inside your function instead")
        return self.replace(module=self.module.clone(dtype=dtype))

    @property
    def label(self) -> str:
        return f"{self.spec.name} (STAND-IN, random weights)" if self.standin else self.spec.name


def as_judge(judge):
    """``judge`` as the attacks take it: a :class:`Judge` (or a wrapper of one) as it is, a plain
    callable through :meth:`Judge.from_fn` (logits, any size)."""
    if hasattr(judge, "check_input"):
        return judge
    if isinstance(judge, nn.Module):
        raise TypeError("a Flax module needs its variables: pass "
                        "Judge.from_fn(module, variables=variables, output=...) as the judge")
    if callable(judge):
        return Judge.from_fn(judge, name=getattr(judge, "__name__", "user_judge"))
    raise TypeError(f"judge: expected a ppjax Judge (load_judge, Judge.from_fn) or a callable "
                    f"x01 -> logits, got {type(judge).__name__}")


def _abstract_variables(spec: JudgeSpec, dtype: str):
    """``spec``'s variable shapes (an abstract trace of its init: ~0.4 s for ResNet-50), once
    per process for a hashable spec: a judge loaded again skips the trace."""
    try:
        hash(spec)
    except TypeError:  # e.g. a list among its model_kwargs: not cached
        return _abstract_cached.__wrapped__(spec, dtype)
    return _abstract_cached(spec, dtype)


@functools.lru_cache(maxsize=32)
def _abstract_cached(spec: JudgeSpec, dtype: str):
    return spec.abstract_variables(spec.make_module(dtype=jnp.dtype(dtype)))


def load_judge(name: str, weights_dir=None, standin: bool = False, dtype=jnp.float32) -> Judge:
    """Load a converted judge by name.

    Args:
      name: a key of :data:`JUDGES`.
      weights_dir: overrides ``$PPJAX_WEIGHTS_DIR`` / the user cache.
      standin: load (creating it on first use) the random-weight stand-in instead of the real
        weights. Never happens implicitly.
    Raises:
      FileNotFoundError: with instructions, when the judge has not been converted yet.
      SetupError: the converted weights are broken (a file truncated or changed, metadata.json
        unreadable, another judge's weights), naming the judge and the command that rebuilds them.
    """
    spec = get_spec(name)
    path = judge_dir(name, weights_dir, standin)
    if standin and not (path / "metadata.json").exists():
        spec.converter_module().make_standin(weights_dir=weights_dir)
    if not (path / "metadata.json").exists():
        raise FileNotFoundError(missing_weights_message(spec, weights_dir, python=True))
    module = spec.make_module(dtype=dtype)
    try:
        variables, meta = load_converted(path, _abstract_variables(spec, jnp.dtype(dtype).name),
                                         name)
    except BrokenCheckpoint as e:
        raise SetupError(broken_weights_message(spec, str(e), weights_dir, standin)) from None
    judge = Judge(variables=variables, module=module, spec=spec, standin=bool(meta.get("standin")))
    if judge.standin:
        log.warning(STANDIN_WARNING.format(name=name))
    return judge
