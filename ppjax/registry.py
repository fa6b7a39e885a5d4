"""One small registry type for every plug-in point of ppjax (the big_vision pattern).

Judges, objectives, parameterisations, step rules, best-rules, formulations, attacks, CLI commands
and converters are each a :class:`Registry`: a named mapping from a key to a value (a spec, a
factory, a function), filled at import time with :meth:`Registry.register`, read with
``registry[name]`` (or :meth:`Registry.get`), which names the known keys when a key is unknown.

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("margin")
    def margin(cfg): ...

    OBJECTIVES["margin"]          # -> margin
    OBJECTIVES["nope"]            # KeyError: unknown objective 'nope'; known: margin

A registry is a read-only :class:`~collections.abc.Mapping` to its readers (``in``, ``sorted``,
``items()``); only ``register`` adds to it, and registering a key twice is an error unless
``replace=True`` says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name that is not in a registry. It is both a ``KeyError`` (a mapping lookup failed) and a
    ``ValueError`` (a bad setting), so callers may catch either."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Mapping[str, T], Generic[T]):
    """A named, append-only mapping from a key to a registered value."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, value: T | None = None, *, replace: bool = False):
        """``register(name, value)`` adds ``value``; ``@register(name)`` adds the decorated object.
        Either returns the value."""
        def add(v: T) -> T:
            if name in self._items and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = v
            return v

        return add if value is None else add(value)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(sorted(self._items))})"


def lazy(target: str) -> Callable[[], object]:
    """A value that is imported on first use: ``"package.module:attr"`` or ``"package.module"``.
    Used where importing the value would load heavy dependencies (torch, JAX) too early."""
    def load():
        import importlib

        module, _, attr = target.partition(":")
        m = importlib.import_module(module)
        return getattr(m, attr) if attr else m

    load.target = target
    return load
