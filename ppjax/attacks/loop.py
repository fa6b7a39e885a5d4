"""The one generic attack loop.

Every attack is a composition (objective, parameterisation, probe and step rule, projection,
optional EOT transform, success test; see :class:`~ppjax.attacks.config.AttackConfig`) run by
the SAME pure step function ``step(state) -> state``:

1. render the current parameters into an image ``x`` and its 8-bit version ``x8``;
2. the config's probe (:mod:`ppjax.attacks.probes`) judges the iterate (optionally after the
   exact-forward JPEG) -> per-image success, with what the next iterate needs: the gradient
   probe takes the formulation's gradient (with ``fused_eval`` and no EOT the very forward
   pass that judges, through a straight-through 8-bit rounding: one forward and one backward
   pass per step), a score-based probe judges a proposal;
3. bookkeeping for the images still active: best-so-far (smallest distortion among successes,
   highest appeal, or the last success), first success iteration, early stop (after
   ``extra_steps`` margin updates);
4. the probe makes the next iterate (the gradient probe: the step rule and the per-image step
   size through optax, ``optax.apply_updates``, the projection); only the images still
   running take it.

An attack of ``steps`` updates runs ``steps + 1`` such iterations per round (the last one only
judges: in the drivers that run whole batches it is :func:`judge_step`, the judgement without
the gradient). Rounds are restarts (images already protected sit out) or the binary search of the
penalty formulation's per-image constant.

Drivers (the same step code for all): ``"scan"`` (``lax.scan``, fixed length) or ``"while"``
(``lax.while_loop`` that exits when no image is active): the whole attack is one compiled
program; ``"python"``: the step is jitted once and driven from Python, which stops as soon as no
image is active. ``"auto"`` is :func:`auto_driver`.

The step only calls parts, looked up by the config's names: the objective
(:data:`~ppjax.attacks.objectives.OBJECTIVES`), the parameterisation
(:data:`~ppjax.attacks.parameterisations.PARAMETERISATIONS`), the probe and step rule and
schedule (:data:`~ppjax.attacks.probes.PROBES`, :data:`~ppjax.attacks.steps.STEP_RULES`,
:data:`~ppjax.attacks.steps.SCHEDULES`), and the formulation, best-rule, distortion and EOT view
(:mod:`ppjax.attacks.rules`). The config itself is the programs' argument (a pytree: its
static fields choose the program, its traced values are arrays). The programs are compiled by
:func:`compile_attack`; :func:`count_traces` counts their compilations.

Randomness is per image: image b's keys derive from ``jax.random.key(seeds[b])`` by
``fold_in`` of a tag, the round and the iteration, so results never depend on the batch an image
is in.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ppjax.attacks import boosters
from ppjax.attacks.config import AttackConfig
from ppjax.attacks.iterate import (
    Best,
    Clean,
    Iterate,
    Judged,
    Progress,
    Search,
    State,
    fused,
    image_keys,
    judge_view,
    parts,
    select,
    select_state,
)
from ppjax.attacks.parameterisations import expand_to, per_image_norm
from ppjax.attacks.probes import make_probe
from ppjax.attacks.rules import BEST_RULES, Candidate, distortion

DRIVERS = ("auto", "python", "scan", "while")
_TAG_INIT, _TAG_STEP = 1, 2
_BIG = jnp.iinfo(jnp.int32).max


def auto_driver(backend: str | None = None) -> str:
    """The driver ``"auto"`` resolves to: on CPU the step jitted once and driven from Python
    (measured faster per step than a compiled loop body, see ``benchmarks/RESULTS.md``);
    accelerators prefer one program."""
    backend = backend or jax.default_backend()
    return "python" if backend == "cpu" else "while"


# ----------------------------------------------------------------------------- rounds


def begin_round(cfg: AttackConfig, x0, seeds, state: State, r) -> State:
    """Fresh parameters and optimiser state for round ``r`` (a scalar, or one round per
    image); with early stop, images that already succeeded sit the round out."""
    params = parts(cfg).par.init(x0, image_keys(seeds, _TAG_INIT, r), cfg)
    b = x0.shape[0]
    progress = state.progress._replace(
        t=jnp.zeros(b, jnp.int32), round=jnp.broadcast_to(jnp.asarray(r, jnp.int32), (b,)),
        active=~state.progress.success if cfg.early_stop else jnp.ones(b, bool),
        stop_at=jnp.full(b, _BIG, jnp.int32), round_success=jnp.zeros(b, bool),
        plateau_loss=jnp.full(b, jnp.inf, jnp.float32))
    return state._replace(params=params, probe_state=make_probe(cfg).init(cfg, params),
                          progress=progress)


def end_round(cfg: AttackConfig, state: State) -> State:
    """The binary search of the penalty formulation's per-image constant: success -> lower it,
    failure -> raise it (x10 until an upper bound is known, then bisect)."""
    if cfg.search_steps <= 1:
        return state
    s, old = state.progress.round_success, state.search
    hi = jnp.where(s, jnp.minimum(old.hi, old.const), old.hi)
    lo = jnp.where(s, old.lo, jnp.maximum(old.lo, old.const))
    const = jnp.where(hi < 1e9, (lo + hi) / 2.0, old.const * 10.0)
    return state._replace(search=Search(const, lo, hi))


def more_rounds(cfg: AttackConfig, state: State) -> jnp.ndarray:
    """[B] bool: the image has a round left to run (with early stop, a protected image has
    none)."""
    more = state.progress.round < cfg.rounds - 1
    return more & ~state.progress.success if cfg.early_stop else more


def finished(cfg: AttackConfig, state: State) -> jnp.ndarray:
    """[B] bool: the image's attack is over: its round ended and it has no round left."""
    return ~state.progress.active & ~more_rounds(cfg, state)


def advance(cfg: AttackConfig, x0, seeds, state: State) -> State:
    """Per image: an image whose round ended and that has a round left starts its next round
    (after the search's update of its constant); every other image is left as it is."""
    go = ~state.progress.active & more_rounds(cfg, state)
    nxt = begin_round(cfg, x0, seeds, end_round(cfg, state), state.progress.round + 1)
    return select_state(go, nxt, state)


def clean_in_first_step(cfg: AttackConfig) -> bool:
    """True when the first iteration judges ``x0`` itself with the very forward pass whose
    gradient it takes, so the clean judgement is taken there and :func:`init` runs no forward
    pass: a probe whose judgement of iterate 0 is a plain one (``Probe.judges_iterate``), a
    fused step (no EOT, DI, VMI or SGM: the gradient pass is the judging pass), no judging JPEG,
    an additive parameterisation without random start (iterate 0 is ``clip(x0 + 0) = x0``,
    already on the 8-bit grid, bit for bit), and an objective that takes the judge's output
    explicitly (``Objective.terms``) where it labels from the clean logits. Refilling a slot of
    :mod:`ppjax.attacks.stream` then costs no forward pass either."""
    obj = parts(cfg).obj
    labels = obj.output == "logits" and obj.prepare is not None
    return (fused(cfg) and not cfg.judge_jpeg and cfg.param == "delta" and not cfg.random_start
            and not boosters.changes_judges(cfg) and make_probe(cfg).judges_iterate
            and (obj.terms is not None or not labels))


def _pending_clean(cfg: AttackConfig, models, x0, aux) -> Clean:
    """A clean judgement left to the first iteration: every image pending, the terms zeros of
    the objective's shapes (nothing is computed: :func:`jax.eval_shape`)."""
    obj = parts(cfg).obj
    shapes = jax.eval_shape(lambda: obj.evaluate(models, judge_view(cfg, x0), aux, cfg))
    terms = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return Clean(dict(aux), terms, jnp.ones(x0.shape[0], bool))


def _take_clean(state: State, j: Judged) -> State:
    """The pending images take this iteration's judgement of their iterate 0, which is ``x0``
    (:func:`clean_in_first_step`): as their clean judgement, as the judgement of their kept
    image (``x0`` until the best-rule takes another) and the labels it filled."""
    pend, b = state.clean.pending, state.best
    terms = select(pend, j.terms, state.clean.terms)
    best = b._replace(**{k: select(pend, getattr(j.terms, k), getattr(b, k))
                         for k in ("score", "success", "appeal")})
    return state._replace(aux=j.aux, best=best,
                          clean=state.clean._replace(terms=terms, pending=jnp.zeros_like(pend)))


def judge_clean(cfg: AttackConfig, models, x0, aux) -> Clean:
    """The clean judgement :func:`start` takes. A classifier objective's ``prepare`` fills
    ``aux`` from the judge's clean logits (missing labels become the clean top-1, ...). When the
    judge sees ``x0`` itself (no judging JPEG), that labelling forward pass is also the
    judgement. When :func:`clean_in_first_step`, no forward pass runs here: the first
    iteration takes it (:func:`_pending_clean`)."""
    if clean_in_first_step(cfg):
        return _pending_clean(cfg, models, x0, aux)
    obj = parts(cfg).obj
    aux = dict(aux)
    if obj.output == "logits" and obj.prepare is not None:
        z = models["judge"](x0)
        aux = obj.prepare(z.astype(jnp.float32), aux)
        if not cfg.judge_jpeg and obj.terms is not None:  # the judge saw x0 itself: pass z on
            return Clean(aux, obj.terms(z, models, x0, aux, cfg))
    return Clean(aux, obj.evaluate(models, judge_view(cfg, x0), aux, cfg))


def start(cfg: AttackConfig, x0, seeds, clean: Clean) -> State:
    """The state before the first iteration, given the clean judgement (:func:`judge_clean`),
    which :func:`finish` reports as the ``*_before`` values."""
    b = x0.shape[0]
    zero = jnp.zeros(b, jnp.int32)
    progress = Progress(
        t=zero, round=zero, active=jnp.ones(b, bool), steps_used=zero, iterations=zero,
        success=jnp.zeros(b, bool), success_step=jnp.full(b, -1, jnp.int32),
        round_success=jnp.zeros(b, bool), stop_at=jnp.full(b, _BIG, jnp.int32),
        plateau_loss=jnp.full(b, jnp.inf, jnp.float32))
    t = clean.terms
    best = Best(x=x0, key=jnp.full(b, jnp.inf, jnp.float32), score=t.score, success=t.success,
                appeal=t.appeal)
    search = Search(const=jnp.full(b, cfg.const, jnp.float32), lo=jnp.zeros(b, jnp.float32),
                    hi=jnp.full(b, 1e10, jnp.float32))
    base = State(params=None, probe_state=None, aux=clean.aux, progress=progress, best=best,
                 search=search, clean=clean._replace(aux=None))
    return begin_round(cfg, x0, seeds, base, 0)


def init(cfg: AttackConfig, models, x0, aux, seeds) -> State:
    """Initial state: :func:`start` from :func:`judge_clean` (the clean images are judged here
    once, or by the first iteration when :func:`clean_in_first_step`; :func:`finish` reuses
    that judgement)."""
    return start(cfg, x0, seeds, judge_clean(cfg, models, x0, aux))


# ----------------------------------------------------------------------------- the step


def _iterate(cfg: AttackConfig, x0, seeds, state: State) -> Iterate:
    par, p = parts(cfg).par, state.progress
    x = par.render(state.params, x0)
    return Iterate(image_keys(seeds, _TAG_STEP, p.round, p.t), p.active & (p.t <= cfg.steps),
                   x, par.quantize(x, x0, cfg))


def _keep_best(cfg: AttackConfig, x0, state: State, it: Iterate, j: Judged, succ) -> Best:
    """The best-rule's choice between the kept image and the judged iterate."""
    par, old = parts(cfg).par, state.best
    cand = Candidate(j.terms, succ, it.live,
                     lambda: distortion(cfg, j.x8, x0, state.params, par))
    take, key = BEST_RULES[cfg.best](cfg, cand, old.key, state.progress.success)

    def keep(new, prev):
        return None if prev is None else jnp.where(take, new.astype(prev.dtype), prev)

    return Best(x=jnp.where(expand_to(take, j.x8), j.x8, old.x),
                key=jnp.where(take & succ, key, jnp.where(take, jnp.inf, old.key)),
                score=keep(j.terms.score, old.score), success=keep(j.terms.success, old.success),
                appeal=keep(j.terms.appeal, old.appeal))


def _count(cfg: AttackConfig, p: Progress, live, succ, loss) -> Progress:
    """Counters, first success, early stop (after ``extra_steps``) and the plateau stop; the
    new ``active`` is also the mask of the images updated by this iteration."""
    t = p.t
    stop_at = jnp.where(succ & ~p.round_success, p.steps_used + cfg.extra_steps, p.stop_at)
    stopped = cfg.early_stop & (p.steps_used >= stop_at)
    plateau_loss = p.plateau_loss
    if cfg.plateau > 0:
        # per image: every `plateau` iterations, stop unless the loss fell
        check = live & (t > 0) & (t % cfg.plateau == 0)
        loss = jax.lax.stop_gradient(loss).astype(jnp.float32)
        stopped = stopped | (check & ~(loss < p.plateau_loss))
        plateau_loss = jnp.where(check | (t == 0), loss, p.plateau_loss)
    update = live & (t < cfg.steps) & ~stopped
    return p._replace(
        t=t + 1, active=update, steps_used=p.steps_used + update.astype(jnp.int32),
        iterations=p.iterations + live.astype(jnp.int32), success=p.success | succ,
        success_step=jnp.where(succ & (p.success_step < 0), p.steps_used, p.success_step),
        round_success=p.round_success | succ, stop_at=stop_at, plateau_loss=plateau_loss)


def _judged(cfg: AttackConfig, x0, state: State, it: Iterate, j: Judged) -> tuple[State, State]:
    """What every iteration does with its judgement ``j`` of iterate ``it``: ``(state, new)``,
    ``state`` with a pending clean judgement taken (:func:`clean_in_first_step`: iterate 0 of
    new images is x0), ``new`` also with the counters and stops advanced and the best-rule's
    image kept (making the next iterate is left to the caller)."""
    if state.clean.pending is not None:
        state = _take_clean(state, j)
    succ = j.terms.success & it.live
    return state, state._replace(progress=_count(cfg, state.progress, it.live, succ, j.loss),
                                 best=_keep_best(cfg, x0, state, it, j, succ))


def step(cfg: AttackConfig, models, x0, seeds, state: State) -> State:
    """One iteration for the whole batch (see the module docstring). Pure: ``state -> state``.
    The config's probe judges the iterate, the best-rule keeps an image, the counters and stops
    advance, and the probe makes the next iterate of the images still running."""
    probe = make_probe(cfg)
    it = _iterate(cfg, x0, seeds, state)
    j = probe.judge(cfg, models, x0, state, it)
    state, new = _judged(cfg, x0, state, it, j)
    params, probe_state = probe.update(cfg, x0, state, j)
    active = new.progress.active
    return new._replace(params=select(active, params, state.params),
                        probe_state=select(active, probe_state, state.probe_state))


def last_apart(cfg: AttackConfig) -> bool:
    """True when a round's last iteration (``t == steps``: it only judges) runs as
    :func:`judge_step` (the probe has a ``judge_only``): always in the drivers that run whole
    batches; in :mod:`ppjax.attacks.stream` when every running slot is at that iteration
    (slots run at different iterations, e.g. after an early stop)."""
    return make_probe(cfg).judge_only is not None


def judge_step(cfg: AttackConfig, models, x0, seeds, state: State) -> State:
    """A round's last iteration for a batch whose live images are all at ``t == steps``: the
    same judgement, bookkeeping and counters as :func:`step`, without the gradient (that
    iteration makes no next iterate: the parameters and the probe's state stay)."""
    it = _iterate(cfg, x0, seeds, state)
    return _judged(cfg, x0, state, it, make_probe(cfg).judge_only(cfg, models, x0, state, it))[1]


def step_chunk(cfg: AttackConfig, chunk: int, models, x0, seeds, state: State) -> State:
    """``chunk`` iterations of :func:`step` in one compiled call (Python driver)."""
    for _ in range(chunk):
        state = step(cfg, models, x0, seeds, state)
    return state


# ----------------------------------------------------------------------------- the end


def finish(cfg: AttackConfig, models, x0, state: State) -> dict:
    """Final judgement of the kept images and of the clean ones (after the last round's
    update of the searched constant).

    Clean and kept images are judged the same way (through the judging JPEG when
    ``judge_jpeg``), so ``*_before`` and ``*_after`` extras are comparable: for the 2020 task both
    the BIQA score and the appeal are those of the JPEG-90 image, as the organisers judged.
    No forward pass runs here: the judgements are those :func:`init` (or the first iteration,
    :func:`clean_in_first_step`) made of ``x0`` and
    :func:`step` made of each kept image when it was taken (the same function of the same
    image; ``tests/test_attacks.py`` checks them against a fresh forward pass)."""
    state = end_round(cfg, state)
    b, best, clean = x0.shape[0], state.best, state.clean.terms
    d = best.x - x0
    extras = {
        "score_before": clean.score, "score_after": best.score,
        "tracked_success": state.progress.success, "best_key": best.key,
        "iterations": state.progress.iterations,
    }
    if parts(cfg).obj.output == "logits" and "labels" in state.aux:
        extras["labels"] = state.aux["labels"]
    if clean.appeal is not None:
        extras["appeal_before"], extras["appeal_after"] = clean.appeal, best.appeal
    if cfg.search_steps > 1:
        extras["const"] = state.search.const
    extras.update(make_probe(cfg).extras(cfg, state))
    # the continuous iterate the loop ended with (last round; frozen where an image stopped),
    # before 8-bit rounding: for users who keep refining it or round it their own way
    extras["final_iterate"] = parts(cfg).par.render(state.params, x0)
    return {
        "images": best.x, "success": best.success, "steps": state.progress.steps_used,
        "success_step": state.progress.success_step,
        "linf": jnp.max(jnp.abs(d).reshape(b, -1), -1), "l2": per_image_norm(d),
        "extras": extras,
    }


def merge(cfg: AttackConfig, fresh: State, state: State, take, empty) -> State:
    """Continuous batching's refill: slots ``take`` take ``fresh`` (an :func:`init` of the
    batch that now holds their new images), the other slots keep ``state``. ``empty`` slots
    hold no image: they are made finished, so they never run."""
    state = select_state(take, fresh, state)._replace(aux=select(take, fresh.aux, state.aux))
    p = state.progress
    return state._replace(progress=p._replace(
        active=p.active & ~empty, round=jnp.where(empty, cfg.rounds - 1, p.round)))


def poll(cfg: AttackConfig, state: State) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """What the host needs between chunks: per image, (round over with another to run,
    attack over), and a scalar: some image is running and every running image is at its
    round's last iteration (``t == steps``: the next call can be :func:`judge_step`)."""
    p = state.progress
    last = jnp.any(p.active) & jnp.all(~p.active | (p.t >= cfg.steps))
    return ~p.active & more_rounds(cfg, state), finished(cfg, state), last


# ----------------------------------------------------------------------------- drivers


def whole(cfg: AttackConfig, driver: str, models, x0, aux, seeds) -> dict:
    """The whole attack as one program (``driver`` "scan" or "while")."""
    state = init(cfg, models, x0, aux, seeds)

    apart = last_apart(cfg)

    def inner(state):
        if driver == "scan":
            state = jax.lax.scan(lambda s, _: (step(cfg, models, x0, seeds, s), None), state,
                                 None, length=cfg.steps + (0 if apart else 1))[0]
        else:  # every image of the batch is at the same t (rounds start together)
            go = ((lambda s: jnp.any(s.progress.active & (s.progress.t < cfg.steps))) if apart
                  else (lambda s: jnp.any(s.progress.active)))
            state = jax.lax.while_loop(go, lambda s: step(cfg, models, x0, seeds, s), state)
        if not apart:
            return state
        return jax.lax.cond(jnp.any(state.progress.active),
                            lambda s: judge_step(cfg, models, x0, seeds, s), lambda s: s, state)

    state = inner(state)
    if cfg.rounds > 1:
        state = jax.lax.fori_loop(
            1, cfg.rounds, lambda r, s: inner(advance(cfg, x0, seeds, s)), state)
    return finish(cfg, models, x0, state)


_TRACE_COUNTERS: list[collections.Counter] = []


@contextlib.contextmanager
def count_traces() -> Iterator[collections.Counter]:
    """Count the traces (= compilations) of the attack's programs made inside the block, per
    program name ("init", "step", "judge", "advance", "finish", "merge", "poll", "whole"), like chex's
    ``assert_max_traces``: ``with count_traces() as n: ...; assert n == {}`` proves that
    nothing recompiled. Opt-in: outside such a block nothing is counted."""
    counter: collections.Counter = collections.Counter()
    _TRACE_COUNTERS.append(counter)
    try:
        yield counter
    finally:
        _TRACE_COUNTERS.remove(counter)


def _jit(name: str, fn, static_argnums):
    """The single place where the attack's programs are compiled (add shardings here); a
    trace bumps every open :func:`count_traces` counter."""

    @functools.wraps(fn)
    def counted(*args):
        for counter in _TRACE_COUNTERS:
            counter[name] += 1
        return fn(*args)

    return jax.jit(counted, static_argnums=static_argnums)


_whole_j = _jit("whole", whole, (1,))
_init_j = _jit("init", init, ())
_step_j = _jit("step", step_chunk, (1,))
_judge_j = _jit("judge", judge_step, ())
_advance_j = _jit("advance", advance, ())
_finish_j = _jit("finish", finish, ())
_merge_j = _jit("merge", merge, ())
_poll_j = _jit("poll", poll, ())


class Programs(NamedTuple):
    """The compiled programs of one attack (:func:`compile_attack`); the config is bound (its
    static fields are the programs' static structure, its traced values their f32 array
    arguments), the rest are arguments. Each compiles on its first call (per input shapes) and
    is cached by the config's static part, so the programs of a config that differs only in
    traced values are the same executables.

    init(models, x0, aux, seeds) -> State; step(models, x0, seeds, state) -> State (``chunk``
    iterations); judge(models, x0, seeds, state) -> State (a round's last iteration,
    :func:`judge_step`); advance(x0, seeds, state) -> State; finish(models, x0, state) -> dict;
    merge(fresh, state, take, empty) -> State; poll(state) -> (go [B], over [B], last []);
    whole(models, x0, aux, seeds) -> dict (the whole attack as one program, ``driver``).
    """

    init: Callable
    step: Callable
    judge: Callable
    advance: Callable
    finish: Callable
    merge: Callable
    poll: Callable
    whole: Callable


def compile_attack(cfg: AttackConfig, *, chunk: int = 1, driver: str = "scan") -> Programs:
    """The programs that run ``cfg`` (see :class:`Programs`): ``chunk`` iterations per
    ``step`` call, ``driver`` ("scan" or "while") for ``whole``."""
    if driver not in ("scan", "while"):
        raise ValueError(f"compile_attack: driver must be 'scan' or 'while', got {driver!r}")
    c = jax.tree.map(jnp.float32, cfg)  # the traced values as f32 arrays
    return Programs(
        init=lambda models, x0, aux, seeds: _init_j(c, models, x0, aux, seeds),
        step=lambda models, x0, seeds, state: _step_j(c, chunk, models, x0, seeds, state),
        judge=lambda models, x0, seeds, state: _judge_j(c, models, x0, seeds, state),
        advance=lambda x0, seeds, state: _advance_j(c, x0, seeds, state),
        finish=lambda models, x0, state: _finish_j(c, models, x0, state),
        merge=lambda fresh, state, take, empty: _merge_j(c, fresh, state, take, empty),
        poll=lambda state: _poll_j(c, state),
        whole=lambda models, x0, aux, seeds: _whole_j(c, driver, models, x0, aux, seeds))


def run(cfg: AttackConfig, models: dict, x0, aux: dict, seeds, *, driver: str = "auto",
        chunk: int = 1) -> dict:
    """Run the attack ``cfg`` over a batch: the one entry point.

    Args:
      cfg: the attack; its static part keys compilation, its traced values are arguments.
      models: ``{"judge": Judge, ...}`` (pytrees).
      x0: [B, H, W, 3] float32 on the 8-bit grid.
      aux: the per-image inputs the objective declares (``Objective.inputs``; a classifier's:
        ``labels`` [B] int32, -1 = use the clean top-1, and ``targets`` [B] int32) and shared
        ones (``group`` [C] bool).
      seeds: [B] uint32, one per image.
      driver: "auto" | "python" | "scan" | "while".
      chunk: iterations per compiled call with the Python driver.
    Returns:
      dict of arrays (see :class:`ppjax.attacks.api.AttackResult`).
    """
    if driver not in DRIVERS:
        raise ValueError(f"driver must be one of {', '.join(DRIVERS)}, got {driver!r}")
    if driver == "auto":
        driver = auto_driver()
    if x0.shape[0] == 1:  # one image runs in two slots (see ppjax.attacks.stream)
        from ppjax.parallel import pad_batch

        two = lambda a: jnp.asarray(pad_batch(a, 2))  # noqa: E731
        names = {i.name for i in parts(cfg).obj.inputs}  # the per-image inputs; others shared
        per = {k: two(v) for k, v in aux.items() if k in names}
        res = run(cfg, models, two(x0), {**aux, **per}, two(seeds), driver=driver, chunk=chunk)
        return jax.tree.map(lambda a: a[:1] if getattr(a, "ndim", 0) else a, res)
    if driver in ("scan", "while"):
        return compile_attack(cfg, driver=driver).whole(models, x0, aux, seeds)
    state = None
    for s in python_states(cfg, models, x0, aux, seeds, chunk=chunk):
        state = s
    return compile_attack(cfg).finish(models, x0, state)


def python_states(cfg: AttackConfig, models: dict, x0, aux: dict, seeds, *, chunk: int = 1):
    """The Python driver as a generator: yields the :class:`State` after every compiled call
    of ``chunk`` iterations, and stops early once no image is active. With ``best="final"``,
    ``state.best.x`` after call ``t`` (chunk 1, one round) is the judged iterate ``t``: a way
    to inspect trajectories."""
    programs = compile_attack(cfg, chunk=chunk)
    apart = last_apart(cfg)
    calls = -(-(cfg.steps + (0 if apart else 1)) // chunk)
    state = programs.init(models, x0, aux, seeds)
    for r in range(cfg.rounds):
        if r:
            state = programs.advance(x0, seeds, state)
        for _ in range(calls):
            state = programs.step(models, x0, seeds, state)
            yield state
            if not bool(jnp.any(state.progress.active)):
                break
        else:
            if apart and calls * chunk <= cfg.steps:  # the last iteration: judged, no gradient
                state = programs.judge(models, x0, seeds, state)
                yield state
