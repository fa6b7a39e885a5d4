"""The one generic attack loop.

Every attack is a composition (objective, parameterisation, step rule, projection, optional EOT
transform, success test; see :class:`~ppjax.attacks.config.AttackConfig`) run by the SAME pure
step function ``step(state) -> state``:

1. render the current parameters into an image ``x`` and its 8-bit version ``x8``;
2. judge ``x8`` (optionally after the exact-forward JPEG) -> per-image success; with
   ``fused_eval`` and no EOT this is the very forward pass whose gradient is taken (through a
   straight-through 8-bit rounding), so a step costs one forward and one backward pass;
3. bookkeeping for the images still active: best-so-far (smallest distortion among successes,
   highest appeal, or the last success), first success iteration, early stop (after
   ``extra_steps`` margin updates);
4. the gradient of the formulation's loss (through the EOT transform if any), the step rule
   (optax), the per-image step size (schedule), the masked update and the projection.

An attack of ``steps`` updates runs ``steps + 1`` such iterations per round (the last one only
judges). Rounds are PGD restarts (images already protected sit out) or the C&W binary search of
the per-image constant.

Drivers (the same step code for all): ``"scan"`` (``lax.scan``, fixed length) or ``"while"``
(``lax.while_loop`` that exits when no image is active): the whole attack is one compiled
program; ``"python"``: the step is jitted once and driven from Python, which stops as soon as no
image is active. ``"auto"`` is :func:`auto_driver`.

The step only calls parts, looked up by the config's names: the objective
(:data:`~ppjax.attacks.objectives.OBJECTIVES`), the parameterisation
(:data:`~ppjax.attacks.parameterisations.PARAMETERISATIONS`), the step rule and schedule
(:data:`~ppjax.attacks.steps.STEP_RULES`, :data:`~ppjax.attacks.steps.SCHEDULES`), and the
formulation, best-rule, distortion and EOT view (:mod:`ppjax.attacks.rules`). The programs are
compiled by :func:`compile_attack`; :func:`count_traces` counts their compilations.

Transfer boosters and the Square attack (:mod:`ppjax.attacks.boosters`) enter :func:`step` at
places marked ``[boosters]``: the judges the gradient pass sees (DI, SGM), the VMI neighbours'
gradient passed to the step rule, and, for Square, a judged proposal instead of a gradient.

Randomness is per image: image b's keys derive from ``jax.random.key(seeds[b])`` by
``fold_in`` of a tag, the round and the iteration, so results never depend on the batch an image
is in.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ppjax.attacks import boosters
from ppjax.attacks.config import AttackConfig
from ppjax.attacks.objectives import Terms, make_objective
from ppjax.attacks.parameterisations import expand_to, make_parameterisation, per_image_norm
from ppjax.attacks.rules import BEST_RULES, EOT_VIEWS, FORMULATIONS, Candidate, distortion
from ppjax.attacks.steps import SCHEDULES, make_step_rule
from ppjax.image.jpeg import jpeg

DRIVERS = ("auto", "python", "scan", "while")
_TAG_INIT, _TAG_STEP = 1, 2
_BIG = jnp.iinfo(jnp.int32).max


def auto_driver(backend: str | None = None) -> str:
    """The driver ``"auto"`` resolves to: on CPU the step jitted once and driven from Python
    (measured faster per step than a compiled loop body, see ``benchmarks/RESULTS.md``);
    accelerators prefer one program."""
    backend = backend or jax.default_backend()
    return "python" if backend == "cpu" else "while"


# ----------------------------------------------------------------------------- the state


class Progress(NamedTuple):
    """Where each image is ([B] arrays)."""

    t: jnp.ndarray  # int32: iteration within the image's current round (0..steps)
    round: jnp.ndarray  # int32: the image's current round
    active: jnp.ndarray  # bool: the image runs the next iteration
    steps_used: jnp.ndarray  # int32: updates applied (all rounds)
    iterations: jnp.ndarray  # int32: iterations that judged this image (all rounds)
    success: jnp.ndarray  # bool: succeeded at least once
    success_step: jnp.ndarray  # int32: steps_used at the first success, -1 if none
    round_success: jnp.ndarray  # bool: success within this round
    stop_at: jnp.ndarray  # int32: steps_used at which an early-stopped image freezes
    plateau_loss: jnp.ndarray  # float32: loss at the last plateau check (cfg.plateau > 0)


class Best(NamedTuple):
    """The kept image per image and its judgement, taken in :func:`step` from the very forward
    pass that judged it (what a fresh forward pass of it would report; appeal None without an
    appeal term)."""

    x: jnp.ndarray  # [B, H, W, 3] 8-bit
    key: jnp.ndarray  # float32: its ranking key (smaller is better)
    score: jnp.ndarray  # float32
    success: jnp.ndarray  # bool
    appeal: jnp.ndarray | None  # float32


class Search(NamedTuple):
    """The C&W binary search of the per-image constant ([B] float32)."""

    const: jnp.ndarray
    lo: jnp.ndarray
    hi: jnp.ndarray  # 1e10 = no upper bound yet


class Clean(NamedTuple):
    """The clean images' judgement (of ``judge_view(x0)``), made once by :func:`judge_clean`,
    or, when :func:`clean_in_first_step`, by the first iteration's own forward pass.

    aux: the batch's aux with missing labels filled (the judge's clean top-1) and, for the
      least-likely objective, the clean bottom-1 as targets.
    terms: the objective's :class:`~ppjax.attacks.objectives.Terms` of the clean images.
    pending: [B] bool, the images whose clean judgement the next iteration takes (None when
      :func:`judge_clean` judged them all).
    """

    aux: dict
    terms: Terms
    pending: jnp.ndarray | None = None


class State(NamedTuple):
    """Loop state; every array is per image ([B, ...]) except ``aux["group"]``."""

    params: Any  # the parameterisation's parameters
    opt_state: Any  # the step rule's state
    aux: dict  # labels [B] int32, targets [B] int32, group [C] bool
    progress: Progress
    best: Best
    search: Search
    clean: Clean  # terms.score / terms.appeal are reported as *_before


def _image_keys(seeds: jnp.ndarray, *tags) -> jnp.ndarray:
    """One PRNG key per image from its own seed: ``fold_in(key(seed), tag)...``; a tag is a
    scalar or one value per image (e.g. the image's own round and iteration)."""

    def one(seed, *tags):
        k = jax.random.key(seed)
        for tag in tags:
            k = jax.random.fold_in(k, tag)
        return k

    tags = [jnp.broadcast_to(jnp.asarray(tag, jnp.int32), seeds.shape) for tag in tags]
    return jax.vmap(one)(seeds, *tags)


def _select(mask, new, old):
    """Per-image ``where`` over pytrees; leaves without the batch axis take ``new``."""
    b = mask.shape[0]

    def pick(n, o):
        if getattr(n, "ndim", 0) >= 1 and n.shape[0] == b:
            return jnp.where(expand_to(mask, n), n, o)
        return n

    return jax.tree.map(pick, new, old)


def _select_state(mask, new: State, old: State) -> State:
    """Per-image choice between two states of the same batch (``aux`` is taken from ``new``)."""
    picked = _select(mask, new._replace(aux=None), old._replace(aux=None))
    return picked._replace(aux=new.aux)


class _Parts(NamedTuple):
    obj: Any
    par: Any


@functools.cache
def _parts(cfg: AttackConfig) -> _Parts:
    return _Parts(make_objective(cfg), make_parameterisation(cfg))


def judge_view(cfg: AttackConfig, x8, hp):
    """What the success test looks at: the 8-bit image, or its exact-forward JPEG."""
    if cfg.judge_jpeg:
        return jpeg(x8, hp["judge_quality"], subsampling=cfg.subsampling, rounding="ste")
    return x8


def _fused(cfg: AttackConfig) -> bool:
    return cfg.fused_eval and cfg.eot == "none" and not boosters.transforms_input(cfg)


# ----------------------------------------------------------------------------- rounds


def per_image_rule(rule: optax.GradientTransformation) -> optax.GradientTransformation:
    """``rule`` applied to each image on its own (``vmap`` over the leading axis; each call
    sees a batch of one), so every leaf of its state, counters included (Adam's step count),
    belongs to one image: an image's steps do not depend on when it entered the batch or who
    shares it. Extra per-image arguments of the update (e.g. VMI's ``neighbour_grad``) are
    split the same way."""

    def one(tree):
        return jax.tree.map(lambda a: a[None], tree)

    def init(params):
        return jax.vmap(lambda p: rule.init(one(p)))(params)

    def update(updates, state, params=None, **extra):
        def u(g, s, p, extra):
            d, s = rule.update(one(g), s, one(p), **one(extra))
            return jax.tree.map(lambda a: a[0], d), s
        return jax.vmap(u)(updates, state, params, extra)

    return optax.GradientTransformationExtraArgs(init, update)


def _rule(cfg: AttackConfig, hp) -> optax.GradientTransformation:
    rule = make_step_rule(cfg, hp)
    # Square's state is per image already and the loop updates it itself (boosters)
    return rule if boosters.gradient_free(cfg) else per_image_rule(rule)


def begin_round(cfg: AttackConfig, x0, hp, seeds, state: State, r) -> State:
    """Fresh parameters and optimiser state for round ``r`` (a scalar, or one round per
    image); with early stop, images that already succeeded sit the round out."""
    params = _parts(cfg).par.init(x0, _image_keys(seeds, _TAG_INIT, r), hp)
    b = x0.shape[0]
    progress = state.progress._replace(
        t=jnp.zeros(b, jnp.int32), round=jnp.broadcast_to(jnp.asarray(r, jnp.int32), (b,)),
        active=~state.progress.success if cfg.early_stop else jnp.ones(b, bool),
        stop_at=jnp.full(b, _BIG, jnp.int32), round_success=jnp.zeros(b, bool),
        plateau_loss=jnp.full(b, jnp.inf, jnp.float32))
    return state._replace(params=params, opt_state=_rule(cfg, hp).init(params),
                          progress=progress)


def end_round(cfg: AttackConfig, state: State) -> State:
    """C&W binary search of the constant: success -> lower it, failure -> raise it (x10 until
    an upper bound is known, then bisect)."""
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


def advance(cfg: AttackConfig, x0, hp, seeds, state: State) -> State:
    """Per image: an image whose round ended and that has a round left starts its next round
    (after the C&W update of its constant); every other image is left as it is."""
    go = ~state.progress.active & more_rounds(cfg, state)
    nxt = begin_round(cfg, x0, hp, seeds, end_round(cfg, state), state.progress.round + 1)
    return _select_state(go, nxt, state)


class _Answered:
    """A judge whose output on the clean batch is already known (``out``): it answers that
    for an input of the clean batch's shape (the one evaluation :func:`judge_clean` makes of
    ``x0``) and asks the judge otherwise (an ensemble member's resized copy)."""

    def __init__(self, judge, shape, out):
        self._judge, self._shape, self._out = judge, shape, out

    def __call__(self, x):
        return self._out if x.shape == self._shape else self._judge(x)

    def __getattr__(self, name):
        return getattr(self._judge, name)


def clean_in_first_step(cfg: AttackConfig) -> bool:
    """True when the first iteration judges ``x0`` itself with the very forward pass whose
    gradient it takes, so the clean judgement is taken there and :func:`init` runs no forward
    pass: a fused step (no EOT, DI, VMI or SGM: the gradient pass is the judging pass), no
    judging JPEG, and an additive parameterisation without random start (iterate 0 is
    ``clip(x0 + 0) = x0``, already on the 8-bit grid, bit for bit). Refilling a slot of
    :mod:`ppjax.attacks.stream` then costs no forward pass either."""
    return (_fused(cfg) and not cfg.judge_jpeg and cfg.param == "delta" and not cfg.random_start
            and not boosters.changes_judges(cfg) and not boosters.gradient_free(cfg))


def _pending_clean(cfg: AttackConfig, models, x0, aux, hp) -> Clean:
    """A clean judgement left to the first iteration: every image pending, the terms zeros of
    the objective's shapes (nothing is computed: :func:`jax.eval_shape`)."""
    obj = _parts(cfg).obj
    shapes = jax.eval_shape(lambda: obj.evaluate(models, judge_view(cfg, x0, hp), aux, hp))
    terms = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
    return Clean(dict(aux), terms, jnp.ones(x0.shape[0], bool))


def _fill_pending(obj, z, aux: dict, pending) -> dict:
    """``aux`` with the ``prepare`` of the pending images' logits ``z`` (their clean judgement,
    taken by this iteration); the other images keep theirs."""
    if obj.output != "logits" or obj.prepare is None:
        return aux
    filled = obj.prepare(jax.lax.stop_gradient(z).astype(jnp.float32), aux)
    return {**aux, **{k: jnp.where(pending, filled[k], aux[k])
                      for k in ("labels", "targets") if k in aux}}


def _take_clean(state: State, j: Judged) -> State:
    """The pending images take this iteration's judgement of their iterate 0, which is ``x0``
    (:func:`clean_in_first_step`): as their clean judgement, as the judgement of their kept
    image (``x0`` until the best-rule takes another) and the labels it filled."""
    pend, b = state.clean.pending, state.best
    terms = _select(pend, j.terms, state.clean.terms)
    best = b._replace(**{k: _select(pend, getattr(j.terms, k), getattr(b, k))
                         for k in ("score", "success", "appeal")})
    return state._replace(aux=j.aux, best=best,
                          clean=state.clean._replace(terms=terms, pending=jnp.zeros_like(pend)))


def judge_clean(cfg: AttackConfig, models, x0, aux, hp) -> Clean:
    """The clean judgement :func:`start` takes. A classifier objective's ``prepare`` fills
    ``aux`` from the judge's clean logits (missing labels become the clean top-1, ...). When the
    judge sees ``x0`` itself (no judging JPEG), that labelling forward pass is also the
    judgement. When :func:`clean_in_first_step`, no forward pass runs here: the first
    iteration takes it (:func:`_pending_clean`)."""
    if clean_in_first_step(cfg):
        return _pending_clean(cfg, models, x0, aux, hp)
    obj = _parts(cfg).obj
    aux = dict(aux)
    if obj.output == "logits" and obj.prepare is not None:
        z = models["judge"](x0)
        aux = obj.prepare(z.astype(jnp.float32), aux)
        if not cfg.judge_jpeg:
            models = {**models, "judge": _Answered(models["judge"], x0.shape, z)}
    return Clean(aux, obj.evaluate(models, judge_view(cfg, x0, hp), aux, hp))


def start(cfg: AttackConfig, x0, hp, seeds, clean: Clean) -> State:
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
    search = Search(const=jnp.full(b, hp["const"], jnp.float32), lo=jnp.zeros(b, jnp.float32),
                    hi=jnp.full(b, 1e10, jnp.float32))
    base = State(params=None, opt_state=None, aux=clean.aux, progress=progress, best=best,
                 search=search, clean=clean._replace(aux=None))
    return begin_round(cfg, x0, hp, seeds, base, 0)


def init(cfg: AttackConfig, models, x0, aux, hp, seeds) -> State:
    """Initial state: :func:`start` from :func:`judge_clean` (the clean images are judged here
    once, or by the first iteration when :func:`clean_in_first_step`; :func:`finish` reuses
    that judgement)."""
    return start(cfg, x0, hp, seeds, judge_clean(cfg, models, x0, aux, hp))


# ----------------------------------------------------------------------------- the step


class Iterate(NamedTuple):
    """The current iterate of every image (see :func:`step`)."""

    keys: jnp.ndarray  # [B] PRNG keys of this iteration
    live: jnp.ndarray  # [B] bool: the image runs this iteration
    x: jnp.ndarray  # [B, H, W, 3] the continuous image
    x8: jnp.ndarray  # [B, H, W, 3] its 8-bit version (judged)


class Judged(NamedTuple):
    """What an iteration learnt: the judged 8-bit image, its judgement, the formulation's
    per-image loss, and the step rule's input (gradient and extra arguments; for Square, its
    updated state instead); ``aux`` with the labels a pending clean judgement filled."""

    x8: jnp.ndarray
    terms: Terms
    loss: jnp.ndarray
    grads: Any = None
    extra: dict = {}
    square_state: Any = None
    aux: dict | None = None


def _iterate(cfg: AttackConfig, x0, hp, seeds, state: State) -> Iterate:
    par, p = _parts(cfg).par, state.progress
    x = par.render(state.params, x0)
    return Iterate(_image_keys(seeds, _TAG_STEP, p.round, p.t), p.active & (p.t <= cfg.steps),
                   x, par.quantize(x, x0, hp))


def _loss_fn(cfg: AttackConfig, models, x0, hp, state: State, it: Iterate, judged):
    """The summed formulation loss of the live images, ``(params, shift, keys) -> (loss, (terms,
    per-image loss))``; ``judged`` is None when the gradient pass also judges (fused)."""
    obj, par = _parts(cfg)
    formulation = FORMULATIONS[cfg.formulation]

    def loss_fn(params, shift=None, keys=it.keys):
        x = par.render(params, x0)
        if shift is not None:  # [boosters] a VMI neighbour
            x = x + shift
        aux = state.aux
        if judged is None:
            # The judge sees exactly x8 (forward: x8 + 0, bit for bit, so finish can reuse this
            # judgement); the gradient passes straight through.
            on_grid = it.x8 + (x - jax.lax.stop_gradient(x))
            g_models = boosters.gradient_models(cfg, models, hp, keys)  # [boosters] SGM
            view = judge_view(cfg, on_grid, hp)
            if state.clean.pending is not None:  # clean_in_first_step: label from this pass
                z = g_models["judge"](view)
                aux = _fill_pending(obj, z, aux, state.clean.pending)
                g_models = {**g_models, "judge": _Answered(g_models["judge"], view.shape, z)}
            terms = obj.evaluate(g_models, view, aux, hp)
            adv = terms.success
        else:
            # [boosters] DI / SGM: the judges the gradient sees (per-image keys, EOT sample i)
            losses = [obj.evaluate(boosters.gradient_models(cfg, models, hp, keys, i),
                                   EOT_VIEWS[cfg.eot](cfg, x, hp, keys, i), state.aux, hp).loss
                      for i in range(cfg.eot_samples)]
            terms = judged._replace(loss=sum(losses) / cfg.eot_samples)
            adv = judged.success
        per = formulation.loss(terms.loss, lambda: distortion(cfg, x, x0, params, par),
                               state.search.const, jax.lax.stop_gradient(adv))
        per = per + hp["lam"] * par.reg(params)
        return jnp.sum(jnp.where(it.live, per, 0.0)), (terms, per, aux)

    return loss_fn


def _gradient_probe(cfg: AttackConfig, models, x0, hp, state: State, it: Iterate) -> Judged:
    """Judge the iterate and take the formulation's gradient (one pass when fused)."""
    judged = None
    if not _fused(cfg):
        judged = _parts(cfg).obj.evaluate(models, judge_view(cfg, it.x8, hp), state.aux, hp)
    loss_fn = _loss_fn(cfg, models, x0, hp, state, it, judged)
    grads, (terms, per, aux) = jax.grad(loss_fn, has_aux=True)(state.params)
    extra = {}
    if cfg.vmi_samples > 0:  # [boosters] VMI: the neighbours' mean gradient (variance term)
        noise = boosters.neighbour_noise(it.keys, x0.shape[1:], hp["vmi_beta"] * hp["eps"],
                                         cfg.vmi_samples)
        extra["neighbour_grad"] = boosters.neighbour_gradient(
            lambda u, i: jax.grad(loss_fn, has_aux=True)(
                state.params, u, boosters.neighbour_keys(it.keys, i))[0], noise)
    return Judged(it.x8, terms if judged is None else judged, per, grads, extra, aux=aux)


def _square_probe(cfg: AttackConfig, models, x0, hp, state: State, it: Iterate) -> Judged:
    """[boosters] Square: one judged proposal, kept if its loss improves; no gradient."""
    obj, par = _parts(cfg)
    t = state.progress.t
    prop = par.quantize(boosters.square_propose(it.x, x0, hp, it.keys, t, cfg.steps), x0, hp)
    terms_p = obj.evaluate(models, judge_view(cfg, prop, hp), state.aux, hp)
    x8, terms, square_state, _ = boosters.square_accept(state.opt_state, terms_p, prop, it.x8, t)
    return Judged(x8, terms, terms.loss, square_state=square_state)


def _keep_best(cfg: AttackConfig, x0, state: State, it: Iterate, j: Judged, succ) -> Best:
    """The best-rule's choice between the kept image and the judged iterate."""
    par, old = _parts(cfg).par, state.best
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
        # ACE's abort_early, per image: every `plateau` iterations, stop unless the loss fell.
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


def _update(cfg: AttackConfig, x0, hp, state: State, j: Judged):
    """The next parameters and step-rule state of every image (the caller masks them)."""
    if boosters.gradient_free(cfg):  # [boosters] Square: the kept image is the next iterate
        return j.x8 - x0, j.square_state
    direction, opt_state = _rule(cfg, hp).update(j.grads, state.opt_state, state.params,
                                                 **j.extra)
    t, schedule = state.progress.t, SCHEDULES[cfg.schedule]
    lr = FORMULATIONS[cfg.formulation].step_size(
        schedule(t, cfg.steps, hp["step_size"], hp["step_size_min"]),
        schedule(t, cfg.steps, hp["step_size2"], hp["step_size2_min"]), j.terms.success)
    lr = jnp.broadcast_to(jnp.asarray(lr, jnp.float32), j.terms.success.shape)
    params = jax.tree.map(lambda p, d: p - expand_to(lr, d) * d, state.params, direction)
    return _parts(cfg).par.project(params, x0, hp), opt_state


def step(cfg: AttackConfig, models, x0, hp, seeds, state: State) -> State:
    """One iteration for the whole batch (see the module docstring). Pure: ``state -> state``.
    The iterate is judged (with the gradient, or, for Square, a proposal), the best-rule keeps
    an image, the counters and stops advance, and the images still running take a step."""
    it = _iterate(cfg, x0, hp, seeds, state)
    probe = _square_probe if boosters.gradient_free(cfg) else _gradient_probe
    j = probe(cfg, models, x0, hp, state, it)
    if state.clean.pending is not None:  # clean_in_first_step: iterate 0 of new images is x0
        state = _take_clean(state, j)
    succ = j.terms.success & it.live
    progress = _count(cfg, state.progress, it.live, succ, j.loss)
    params, opt_state = _update(cfg, x0, hp, state, j)
    return state._replace(params=_select(progress.active, params, state.params),
                          opt_state=_select(progress.active, opt_state, state.opt_state),
                          progress=progress, best=_keep_best(cfg, x0, state, it, j, succ))


def step_chunk(cfg: AttackConfig, chunk: int, models, x0, hp, seeds, state: State) -> State:
    """``chunk`` iterations of :func:`step` in one compiled call (Python driver)."""
    for _ in range(chunk):
        state = step(cfg, models, x0, hp, seeds, state)
    return state


# ----------------------------------------------------------------------------- the end


def finish(cfg: AttackConfig, models, x0, hp, state: State) -> dict:
    """Final judgement of the kept images and of the clean ones (after the last round's C&W
    update).

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
    if _parts(cfg).obj.output == "logits":
        extras["labels"] = state.aux["labels"]
    if clean.appeal is not None:
        extras["appeal_before"], extras["appeal_after"] = clean.appeal, best.appeal
    if cfg.search_steps > 1:
        extras["const"] = state.search.const
    if boosters.gradient_free(cfg):  # [boosters] Square: judge queries (start + proposals)
        extras["queries"] = state.progress.steps_used + 1
    # the continuous iterate the loop ended with (last round; frozen where an image stopped),
    # before 8-bit rounding: for users who keep refining it or round it their own way
    extras["final_iterate"] = _parts(cfg).par.render(state.params, x0)
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
    kept = {k: jnp.where(take, fresh.aux[k], state.aux[k]) for k in ("labels", "targets")}
    state = _select_state(take, fresh, state)._replace(aux={**fresh.aux, **kept})
    p = state.progress
    return state._replace(progress=p._replace(
        active=p.active & ~empty, round=jnp.where(empty, cfg.rounds - 1, p.round)))


def poll(cfg: AttackConfig, state: State) -> tuple[jnp.ndarray, jnp.ndarray]:
    """What the host needs between chunks: per image, (round over with another to run,
    attack over)."""
    return ~state.progress.active & more_rounds(cfg, state), finished(cfg, state)


# ----------------------------------------------------------------------------- drivers


def whole(cfg: AttackConfig, driver: str, models, x0, aux, hp, seeds) -> dict:
    """The whole attack as one program (``driver`` "scan" or "while")."""
    state = init(cfg, models, x0, aux, hp, seeds)

    def inner(state):
        if driver == "scan":
            return jax.lax.scan(lambda s, _: (step(cfg, models, x0, hp, seeds, s), None), state,
                                None, length=cfg.steps + 1)[0]
        return jax.lax.while_loop(lambda s: jnp.any(s.progress.active),
                                  lambda s: step(cfg, models, x0, hp, seeds, s), state)

    state = inner(state)
    if cfg.rounds > 1:
        state = jax.lax.fori_loop(
            1, cfg.rounds, lambda r, s: inner(advance(cfg, x0, hp, seeds, s)), state)
    return finish(cfg, models, x0, hp, state)


_TRACE_COUNTERS: list[collections.Counter] = []


@contextlib.contextmanager
def count_traces() -> Iterator[collections.Counter]:
    """Count the traces (= compilations) of the attack's programs made inside the block, per
    program name ("init", "step", "advance", "finish", "merge", "poll", "whole"), like chex's
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


_whole_j = _jit("whole", whole, (0, 1))
_init_j = _jit("init", init, (0,))
_step_j = _jit("step", step_chunk, (0, 1))
_advance_j = _jit("advance", advance, (0,))
_finish_j = _jit("finish", finish, (0,))
_merge_j = _jit("merge", merge, (0,))
_poll_j = _jit("poll", poll, (0,))


def traced_values(cfg: AttackConfig) -> dict:
    """``cfg``'s traced values as f32 scalars: the ``hp`` argument of the programs."""
    return {k: jnp.float32(v) for k, v in cfg.hyperparameters().items()}


class Programs(NamedTuple):
    """The compiled programs of one attack (:func:`compile_attack`); the config's static part
    and traced values are bound, the rest are arguments. Each compiles on its first call (per
    input shapes) and is cached by the static part, so the programs of a config that differs
    only in traced values are the same executables.

    init(models, x0, aux, seeds) -> State; step(models, x0, seeds, state) -> State (``chunk``
    iterations); advance(x0, seeds, state) -> State; finish(models, x0, state) -> dict;
    merge(fresh, state, take, empty) -> State; poll(state) -> (go [B], over [B]);
    whole(models, x0, aux, seeds) -> dict (the whole attack as one program, ``driver``).
    """

    init: Callable
    step: Callable
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
    s, hp = cfg.static(), traced_values(cfg)
    return Programs(
        init=lambda models, x0, aux, seeds: _init_j(s, models, x0, aux, hp, seeds),
        step=lambda models, x0, seeds, state: _step_j(s, chunk, models, x0, hp, seeds, state),
        advance=lambda x0, seeds, state: _advance_j(s, x0, hp, seeds, state),
        finish=lambda models, x0, state: _finish_j(s, models, x0, hp, state),
        merge=lambda fresh, state, take, empty: _merge_j(s, fresh, state, take, empty),
        poll=lambda state: _poll_j(s, state),
        whole=lambda models, x0, aux, seeds: _whole_j(s, driver, models, x0, aux, hp, seeds))


def run(cfg: AttackConfig, models: dict, x0, aux: dict, seeds, *, driver: str = "auto",
        chunk: int = 1) -> dict:
    """Run the attack ``cfg`` over a batch: the one entry point.

    Args:
      cfg: the attack; its static part keys compilation, its traced values are arguments.
      models: ``{"judge": Judge, ...}`` (pytrees).
      x0: [B, H, W, 3] float32 on the 8-bit grid.
      aux: ``labels`` [B] int32 (-1 = use the clean top-1), ``targets`` [B] int32,
        ``group`` [C] bool.
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
        per = {k: two(v) for k, v in aux.items() if k != "group"}
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
    state = programs.init(models, x0, aux, seeds)
    for r in range(cfg.rounds):
        if r:
            state = programs.advance(x0, seeds, state)
        for _ in range(-(-(cfg.steps + 1) // chunk)):
            state = programs.step(models, x0, seeds, state)
            yield state
            if not bool(jnp.any(state.progress.active)):
                break
