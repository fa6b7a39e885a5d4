"""The base of the judge rewrites in :mod:`ppjax.accel`: a stand-in for a linen module that runs
the unchanged model under a flax method interceptor.

A rewrite (BatchNorm folding, oneDNN convolutions) never edits a model file: it wraps the judge's
module in a subclass of :class:`InterceptingModule`, which :class:`~ppjax.judges.Judge` calls like
any linen module (``apply``, ``clone``, attribute reads). Subclasses say what they change with
:meth:`~InterceptingModule.interceptor` (and, when needed, :meth:`~InterceptingModule.inner_variables`
and :meth:`~InterceptingModule.environment`). Wrappers nest: the ``inner`` of one may be another.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn

#: ``(next_fun, args, kwargs, context) -> output``, as ``flax.linen.intercept_methods`` takes it.
Interceptor = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class InterceptingModule:
    """Stands in for the linen module ``inner`` inside a judge: ``apply`` runs ``inner.apply``
    under :meth:`interceptor`. Frozen (hashable, static), so a jitted function keyed on the judge
    caches as usual."""

    inner: Any

    def interceptor(self, variables) -> Interceptor:
        """The interceptor for one ``apply`` with ``variables`` (the wrapper's own tree)."""
        raise NotImplementedError

    def inner_variables(self, variables):
        """The variables ``inner`` is applied to (default: all of them)."""
        return variables

    def environment(self) -> contextlib.AbstractContextManager:
        """A context entered around ``inner.apply`` besides the interceptor (default: none)."""
        return contextlib.nullcontext()

    def apply(self, variables, *args, **kwargs):
        with nn.intercept_methods(self.interceptor(variables)), self.environment():
            return self.inner.apply(self.inner_variables(variables), *args, **kwargs)

    def clone(self, **overrides) -> InterceptingModule:
        """The same rewrite of ``inner.clone(**overrides)`` (e.g. another compute ``dtype``)."""
        return dataclasses.replace(self, inner=self.inner.clone(**overrides))

    def __getattr__(self, name: str) -> Any:
        # Read-only view of the model's attributes (dtype, num_classes, ...).
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def wrappers(module) -> Iterator[InterceptingModule]:
    """Every :class:`InterceptingModule` around the model in ``module``, outermost first."""
    while isinstance(module, InterceptingModule):
        yield module
        module = module.inner


def is_call(context, module_types: type | tuple[type, ...]) -> bool:
    """Whether an intercepted call is ``__call__`` of a module of ``module_types``."""
    return context.method_name == "__call__" and isinstance(context.module, module_types)
