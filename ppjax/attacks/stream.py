"""Continuous batching: the driver that feeds a stream of images through a fixed set of slots.

The device holds ``S`` slots; each holds one image's complete attack state (parameters,
probe state, best-so-far, counters, round, search bounds: :class:`ppjax.attacks.loop.State`,
whose arrays are all per image). The host loop drives the programs of
:func:`~ppjax.attacks.loop.compile_attack`:

1. fills free slots from the queue (one :func:`~ppjax.attacks.loop.init` of the slot batch,
   merged into the state for the new slots only);
2. runs ``chunk`` iterations of the one step (:func:`~ppjax.attacks.loop.step_chunk`), or,
   when every running slot is at its round's last iteration (which only judges), that
   iteration without the gradient (:func:`~ppjax.attacks.loop.judge_step`; e.g. FGSM, or a
   batch of attacks without early stop that started together);
3. polls two [S] flags: slots whose round ended with another to run start it
   (:func:`~ppjax.attacks.loop.advance`); slots whose attack is over are finished
   (:func:`~ppjax.attacks.loop.finish`) and freed. Free slots are refilled before the next
   chunk when the attack takes its clean judgement in its first iteration
   (:func:`~ppjax.attacks.loop.clean_in_first_step`: PGD-family attacks without random
   start; a refill then runs no forward pass), else in groups (:data:`REFILL_AFTER`), since a
   refill's :func:`~ppjax.attacks.loop.init` judges all slots.

Every program has fixed shapes, so refilling never recompiles: the slot count, the image size
and ``chunk`` are the only static choices. Results are fetched after the next chunk has been
dispatched, so the consumer (e.g. a writer pool) works while the device computes.

An image's result depends only on the image, its seed and label: keys are per image, its round
and iteration are its own, and the step rule runs per image. At a given slot count it is
byte-identical whatever its slot, its neighbours or when it arrived, and equal to
``ppjax.attack`` on that image alone, which runs in 2 slots (``tests/test_stream.py``: 2 slots,
refills, several orders). Across slot counts (4, 8 tested) the 8-bit image, success and step
counts stay identical, while float diagnostics computed by a per-image reduction (distortion,
scores, the continuous iterate) can differ in the last bit: XLA orders some fused reductions
by batch shape. A batch of ONE image takes other convolution kernels, so it runs in two slots.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.attacks import loop
from ppjax.attacks.config import AttackConfig
from ppjax.attacks.iterate import parts

#: Fewest slots a batch runs in (see the module docstring).
MIN_SLOTS = 2

#: Where a refill judges the whole slot batch once (:func:`~ppjax.attacks.loop.init`: one
#: forward pass, unless :func:`~ppjax.attacks.loop.clean_in_first_step`), free slots are
#: refilled once the slot-iterations they have idled while images waited reach this fraction
#: of the slot count (or at once when every slot is free), so one refill serves several
#: finished images instead of costing a forward pass per finished image. Results do not
#: depend on it.
REFILL_AFTER = 1 / 3


class StreamItem(NamedTuple):
    """One image for :func:`ppjax.attacks.stream`.

    key: anything hashable, returned with the result. image: [H, W, 3] uint8, or float in
    [0, 1] (snapped to the 8-bit grid). seed: the image's own seed (e.g.
    ``ppjax.runs.protect.image_seed(name)``). label: true class (-1 = the judge's clean top-1).
    target: target class (objective "targeted"). inputs: more per-image inputs by name, for an
    objective that declares them (``Objective.inputs``).
    """

    key: Hashable
    image: Any
    seed: int
    label: int = -1
    target: int = -1
    inputs: dict | None = None


def to_grid(image) -> np.ndarray:
    """[..., 3] uint8 or float in [0, 1] -> float32 on the 8-bit grid (k / 255)."""
    a = np.asarray(image)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {a.dtype}")
    return np.clip(np.round(a.astype(np.float32) * 255.0), 0, 255) / np.float32(255.0)


class _Slots:
    """The host's copy of the slots' inputs (the image, its seed and the per-image inputs the
    objective declares) and who sits where."""

    def __init__(self, n: int, first: StreamItem, declared):
        hw = np.asarray(first.image).shape
        self.x = np.zeros((n,) + tuple(hw), np.float32)
        self.seeds = np.zeros(n, np.uint32)
        self.declared = tuple(declared)
        self.inputs = {i.name: np.full((n, *i.shape), i.fill, i.dtype) for i in self.declared}
        self.keys: list[Hashable] = [None] * n
        self.busy = np.zeros(n, bool)

    def place(self, s: int, item: StreamItem) -> None:
        x = to_grid(item.image)
        if x.shape != self.x.shape[1:]:
            raise ValueError(f"stream: image {item.key!r} has shape {x.shape}; every image of a "
                             f"stream must have the shape of the first, {self.x.shape[1:]}")
        self.x[s], self.seeds[s] = x, np.uint32(int(item.seed) & 0xFFFFFFFF)
        given = {"labels": item.label, "targets": item.target, **(item.inputs or {})}
        for i in self.declared:
            v = given.get(i.name)
            self.inputs[i.name][s] = i.fill if v is None else np.asarray(v, i.dtype)
        self.keys[s], self.busy[s] = item.key, True


def _row(res: dict, s: int) -> dict:
    return {k: ({n: v[s] for n, v in val.items()} if isinstance(val, dict) else val[s])
            for k, val in res.items()}


def run_slots(cfg: AttackConfig, models: dict, items: Iterable[StreamItem], *, slots: int,
              chunk: int = 1, group=None, put: Callable | None = None,
              on_chunk: Callable[[], None] | None = None) -> Iterator[tuple[Hashable, dict]]:
    """Attack every image of ``items`` through ``slots`` slots; yields ``(key, result)`` per
    image in completion order, ``result`` a dict of numpy values for one image (the fields
    of :class:`ppjax.attacks.api.AttackResult`). ``items`` is consumed lazily: besides the
    ``slots`` images in the slots, at most ``slots`` more are held (the next refill's, taken
    from ``items`` while the device computes). ``put`` places a host array on the device(s) (default
    ``jnp.asarray``; a sharded placement for several devices). ``on_chunk()`` is called after
    each chunk is dispatched, while the device computes: the consumer's host work (e.g.
    recording the writes that finished) then runs every chunk, not only when an image ends."""
    put = put or jnp.asarray
    programs = loop.compile_attack(cfg, chunk=chunk)
    queue = iter(items)
    first = next(queue, None)
    if first is None:
        return
    n = max(int(slots), MIN_SLOTS)
    host = _Slots(n, first, parts(cfg).obj.inputs)
    pending = collections.deque([first])  # taken from the queue, not yet in a slot
    state, dev, done, idle = None, None, None, 0.0
    wait = 0.0 if loop.clean_in_first_step(cfg) else REFILL_AFTER * n  # a refill's cost
    apart, last = loop.last_apart(cfg), False
    while True:
        free = np.flatnonzero(~host.busy)
        _top_up(pending, queue, free.size)  # (already topped up during the last chunk)
        if pending and free.size and (free.size == n or idle >= wait):
            take = np.zeros(n, bool)
            for s in free[:len(pending)]:
                host.place(s, pending.popleft())
                take[s] = True
            state, dev = _load(programs, models, host, state, take, group, put)
            idle, last = 0.0, False
        if not host.busy.any():
            yield from done or ()
            return
        if apart and last:  # every running slot only judges: no gradient (loop.judge_step)
            state = programs.judge(models, dev["x"], dev["seeds"], state)
        else:
            state = programs.step(models, dev["x"], dev["seeds"], state)
        if done is not None:  # the previous chunk's finished images, while this one computes
            yield from done
            done = None
        if on_chunk is not None:
            on_chunk()
        _top_up(pending, queue, n)  # the next refill's images, taken while the device computes
        if pending:  # slots left empty while images wait: the refill's cost accumulates
            idle += chunk * float((~host.busy).sum())
        go, over, last = jax.device_get(programs.poll(state))
        if go.any():  # new rounds start at t = 0
            state, last = programs.advance(dev["x"], dev["seeds"], state), False
        over = np.flatnonzero(over & host.busy)
        if over.size:
            res = programs.finish(models, dev["x"], state)
            done = _Fetch(res, [(int(s), host.keys[s]) for s in over])
            host.busy[over] = False


def _top_up(pending: collections.deque, queue: Iterator, n: int) -> None:
    """Take items from ``queue`` until ``pending`` holds ``n`` or the queue is empty."""
    while len(pending) < n:
        nxt = next(queue, None)
        if nxt is None:
            return
        pending.append(nxt)


class _Fetch:
    """Finished slots' results, fetched from the device only when iterated (after the next
    chunk was dispatched)."""

    def __init__(self, res: dict, slots: list[tuple[int, Hashable]]):
        self.res, self.slots = res, slots

    def __iter__(self):
        res = jax.device_get(self.res)
        for s, key in self.slots:
            yield key, _row(res, s)


def _load(programs: loop.Programs, models, host: _Slots, state, take, group, put):
    dev = {"x": put(host.x), "seeds": put(host.seeds)}
    aux = {k: put(v) for k, v in host.inputs.items()}
    if group is not None:
        aux["group"] = group
    fresh = programs.init(models, dev["x"], aux, dev["seeds"])
    empty = jnp.asarray(~host.busy)
    base = fresh if state is None else state
    return programs.merge(fresh, base, jnp.asarray(take), empty), dev
