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

Transfer boosters and the Square attack (:mod:`ppjax.attacks.boosters`) enter :func:`step` at
places marked ``[boosters]``: the judges the gradient pass sees (DI, SGM), the VMI neighbours'
gradient passed to the step rule, and, for Square, a judged proposal instead of a gradient.

Randomness is per image: image b's keys derive from ``jax.random.key(seeds[b])`` by
``fold_in`` of a tag, the round and the iteration, so results never depend on the batch an image
is in.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ppjax.attacks import boosters
from ppjax.attacks.config import AttackConfig
from ppjax.attacks.objectives import make_objective
from ppjax.attacks.parameterisations import _per_image_norm, make_parameterisation
from ppjax.attacks.steps import cosine, make_step_rule
from ppjax.image.color import ciede2000_l2

#: Python-side trace counts per compiled function (a trace = a (re)compilation).
TRACES: collections.Counter = collections.Counter()

DRIVERS = ("auto", "python", "scan", "while")
_TAG_INIT, _TAG_STEP = 1, 2
_BIG = jnp.iinfo(jnp.int32).max


def auto_driver(backend: str | None = None) -> str:
    """The driver ``"auto"`` resolves to. On CPU a compiled loop body ran 55-65% slower per step
    than the same step jitted once and driven from Python; accelerators prefer one program."""
    backend = backend or jax.default_backend()
    return "python" if backend == "cpu" else "while"


class State(NamedTuple):
    """Loop state; arrays are per image ([B, ...]) unless noted."""

    params: Any  # parameterisation's parameters
    opt_state: Any  # step rule's state
    aux: dict  # labels [B] int32, targets [B] int32, group [C] bool
    t: jnp.ndarray  # int32: iteration within the image's current round (0..steps)
    r: jnp.ndarray  # int32: the image's current round
    active: jnp.ndarray  # bool
    steps_used: jnp.ndarray  # int32: updates applied (all rounds)
    success: jnp.ndarray  # bool: succeeded at least once
    success_step: jnp.ndarray  # int32: steps_used at the first success, -1 if none
    stop_at: jnp.ndarray  # int32: steps_used at which an early-stopped image freezes
    best_x: jnp.ndarray  # [B, H, W, 3] 8-bit: the kept image
    best_key: jnp.ndarray  # float32: its ranking key (smaller is better)
    round_success: jnp.ndarray  # bool: success within this round
    const: jnp.ndarray  # float32: per-image constant (C&W binary search)
    lo: jnp.ndarray  # float32: binary search lower bound
    hi: jnp.ndarray  # float32: binary search upper bound (1e10 = none yet)
    iterations: jnp.ndarray  # int32: iterations that judged this image (all rounds)
    plateau_loss: jnp.ndarray  # float32: loss at the last plateau check (cfg.plateau > 0)
    # Judge outputs kept for :func:`finish` (what a fresh forward pass would report): the clean
    # images' (judged once in :func:`init`) and the kept images' (taken in :func:`step` together
    # with ``best_x``, from the very forward pass that judged it). Appeal: None without one.
    clean_score: jnp.ndarray  # float32: score of judge_view(x0)
    clean_appeal: jnp.ndarray | None  # float32: appeal of judge_view(x0)
    kept_score: jnp.ndarray  # float32: score of judge_view(best_x)
    kept_success: jnp.ndarray  # bool: success of judge_view(best_x)
    kept_appeal: jnp.ndarray | None  # float32: appeal of judge_view(best_x)


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


def _bcast(v, like):
    return v.reshape(v.shape + (1,) * (like.ndim - v.ndim))


def _select(mask, new, old):
    """Per-image ``where`` over pytrees; leaves without the batch axis take ``new``."""
    b = mask.shape[0]

    def pick(n, o):
        if getattr(n, "ndim", 0) >= 1 and n.shape[0] == b:
            return jnp.where(_bcast(mask, n), n, o)
        return n

    return jax.tree.map(pick, new, old)


def distortion(cfg: AttackConfig, x, x0, params, par) -> jnp.ndarray:
    """Per-image distortion [B] of ``x`` from ``x0`` as ``cfg.distortion`` defines it."""
    d = x - x0
    if cfg.distortion == "linf":
        return jnp.max(jnp.abs(d).reshape(d.shape[0], -1), -1)
    if cfg.distortion == "l2":
        return _per_image_norm(d)
    if cfg.distortion == "l2sq":
        return jnp.sum(d.reshape(d.shape[0], -1) ** 2, -1)
    if cfg.distortion == "ciede2000":
        return ciede2000_l2(x, x0)
    return par.reg(params)


class _Parts(NamedTuple):
    obj: Any
    par: Any


@functools.cache
def _parts(cfg: AttackConfig) -> _Parts:
    return _Parts(make_objective(cfg), make_parameterisation(cfg))


def _judge_view(cfg: AttackConfig, x8, hp):
    """What the success test looks at: the 8-bit image, or its exact-forward JPEG."""
    if cfg.judge_jpeg:
        from ppjax.image.jpeg import jpeg

        return jpeg(x8, hp["judge_quality"], subsampling=cfg.subsampling, rounding="ste")
    return x8


def _eot_view(cfg: AttackConfig, x, hp, keys, sample: int):
    """EOT transform: differentiable JPEG (exact forward, straight-through rounding) at a random
    per-image quality in [eot_quality_lo, eot_quality_hi]."""
    from ppjax.image.jpeg import jpeg

    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, sample), ()))(keys)
    q = jnp.round(hp["eot_quality_lo"] + (hp["eot_quality_hi"] - hp["eot_quality_lo"]) * u)
    return jpeg(x, q, subsampling=cfg.subsampling, rounding=cfg.eot_rounding)


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
    return rule if cfg.step == "square" else per_image_rule(rule)


def begin_round(cfg: AttackConfig, x0, hp, seeds, state: State, r) -> State:
    """Fresh parameters and optimiser state for round ``r`` (a scalar, or one round per
    image); with early stop, images that already succeeded sit the round out."""
    par = _parts(cfg).par
    keys = _image_keys(seeds, _TAG_INIT, r)
    params = par.init(x0, keys, hp)
    opt_state = _rule(cfg, hp).init(params)
    b = x0.shape[0]
    active = ~state.success if cfg.early_stop else jnp.ones(b, bool)
    return state._replace(
        params=params, opt_state=opt_state, t=jnp.zeros(b, jnp.int32),
        r=jnp.broadcast_to(jnp.asarray(r, jnp.int32), (b,)),
        active=active, stop_at=jnp.full(b, _BIG, jnp.int32), round_success=jnp.zeros(b, bool),
        plateau_loss=jnp.full(b, jnp.inf, jnp.float32))


def end_round(cfg: AttackConfig, state: State) -> State:
    """C&W binary search of the constant: success -> lower it, failure -> raise it (x10 until
    an upper bound is known, then bisect)."""
    if cfg.search_steps <= 1:
        return state
    s = state.round_success
    hi = jnp.where(s, jnp.minimum(state.hi, state.const), state.hi)
    lo = jnp.where(s, state.lo, jnp.maximum(state.lo, state.const))
    const = jnp.where(hi < 1e9, (lo + hi) / 2.0, state.const * 10.0)
    return state._replace(const=const, lo=lo, hi=hi)


class _Known:
    """The judge, except that on the very array ``x`` it returns ``out``, already computed."""

    def __init__(self, judge, x, out):
        self._judge, self._x, self._out = judge, x, out

    def __call__(self, x):
        return self._out if x is self._x else self._judge(x)

    def __getattr__(self, name):
        return getattr(self._judge, name)


def more_rounds(cfg: AttackConfig, state: State) -> jnp.ndarray:
    """[B] bool: the image has a round left to run (with early stop, a protected image has
    none)."""
    more = state.r < cfg.rounds - 1
    return more & ~state.success if cfg.early_stop else more


def finished(cfg: AttackConfig, state: State) -> jnp.ndarray:
    """[B] bool: the image's attack is over: its round ended and it has no round left."""
    return ~state.active & ~more_rounds(cfg, state)


def advance(cfg: AttackConfig, x0, hp, seeds, state: State) -> State:
    """Per image: an image whose round ended and that has a round left starts its next round
    (after the C&W update of its constant); every other image is left as it is."""
    go = ~state.active & more_rounds(cfg, state)
    nxt = begin_round(cfg, x0, hp, seeds, end_round(cfg, state), state.r + 1)
    return _select_state(go, nxt, state)


def _select_state(mask, new: State, old: State) -> State:
    """Per-image choice between two states of the same batch (``aux`` is taken from ``new``)."""
    picked = _select(mask, new._replace(aux=None), old._replace(aux=None))
    return picked._replace(aux=new.aux)


def init(cfg: AttackConfig, models, x0, aux, hp, seeds) -> State:
    """Initial state. Missing labels (< 0) become the judge's clean top-1; the least-likely
    objective's targets become the clean bottom-1. The clean images are judged here once, and
    that judgement is reused for :func:`finish` (and, for a judge that sees ``x0`` itself, it is
    the labelling forward pass: no second forward)."""
    obj = _parts(cfg).obj
    aux = dict(aux)
    view = _judge_view(cfg, x0, hp)
    if obj.output == "logits" and cfg.objective != "group":
        z = models["judge"](x0)
        aux["labels"] = jnp.where(aux["labels"] < 0, jnp.argmax(z.astype(jnp.float32), -1),
                                  aux["labels"]).astype(jnp.int32)
        if cfg.objective == "least_likely":
            aux["targets"] = jnp.argmin(z.astype(jnp.float32), -1).astype(jnp.int32)
        if view is x0:  # the judge sees x0 itself: reuse these logits
            models = {**models, "judge": _Known(models["judge"], x0, z)}
    clean = obj.evaluate(models, view, aux, hp)
    b = x0.shape[0]
    zero = jnp.zeros(b, jnp.int32)
    base = State(
        params=None, opt_state=None, aux=aux, t=zero, r=zero,
        active=jnp.ones(b, bool), steps_used=zero,
        success=jnp.zeros(b, bool), success_step=jnp.full(b, -1, jnp.int32),
        stop_at=jnp.full(b, _BIG, jnp.int32), best_x=x0, best_key=jnp.full(b, jnp.inf, jnp.float32),
        round_success=jnp.zeros(b, bool), const=jnp.full(b, hp["const"], jnp.float32),
        lo=jnp.zeros(b, jnp.float32), hi=jnp.full(b, 1e10, jnp.float32),
        iterations=zero, plateau_loss=jnp.full(b, jnp.inf, jnp.float32),
        clean_score=clean.score, clean_appeal=clean.appeal,
        kept_score=clean.score, kept_success=clean.success, kept_appeal=clean.appeal)
    return begin_round(cfg, x0, hp, seeds, base, 0)


# ----------------------------------------------------------------------------- the step


def step(cfg: AttackConfig, models, x0, hp, seeds, state: State) -> State:
    """One iteration for the whole batch (see the module docstring). Pure: ``state -> state``."""
    obj, par = _parts(cfg)
    rule = _rule(cfg, hp)
    t = state.t
    keys = _image_keys(seeds, _TAG_STEP, state.r, t)
    live = state.active & (t <= cfg.steps)
    aux = state.aux

    x_now = par.render(state.params, x0)
    x8 = par.quantize(x_now, x0, hp)
    if not _fused(cfg) and not boosters.gradient_free(cfg):
        eval_terms = obj.evaluate(models, _judge_view(cfg, x8, hp), aux, hp)

    def loss_fn(params, shift=None, keys=keys):
        x = par.render(params, x0)
        if shift is not None:  # [boosters] a VMI neighbour
            x = x + shift
        if _fused(cfg):
            # The judge sees exactly x8 (forward: x8 + 0, bit for bit, so finish can reuse this
            # judgement); the gradient passes straight through.
            on_grid = x8 + (x - jax.lax.stop_gradient(x))
            g_models = boosters.gradient_models(cfg, models, hp, keys)  # [boosters] SGM
            terms = obj.evaluate(g_models, _judge_view(cfg, on_grid, hp), aux, hp)
            adv = terms.success
        else:
            view = (lambda i: _eot_view(cfg, x, hp, keys, i)) if cfg.eot == "jpeg" else (
                lambda i: x)
            # [boosters] DI / SGM: the judges the gradient sees (per-image keys, EOT sample i)
            losses = [obj.evaluate(boosters.gradient_models(cfg, models, hp, keys, i), view(i),
                                   aux, hp).loss for i in range(cfg.eot_samples)]
            terms = eval_terms._replace(loss=sum(losses) / cfg.eot_samples)
            adv = eval_terms.success
        adv = jax.lax.stop_gradient(adv)
        reg = par.reg(params)
        if cfg.formulation == "attack":
            per = terms.loss
        elif cfg.formulation == "penalty":
            per = distortion(cfg, x, x0, params, par) + state.const * terms.loss
        else:  # alternate (PerC-AL)
            per = jnp.where(adv, distortion(cfg, x, x0, params, par), terms.loss)
        per = per + hp["lam"] * reg
        return jnp.sum(jnp.where(live, per, 0.0)), (terms, per)

    # ---- [boosters] hook 1: the gradient (or, for Square, the judged proposal)
    rule_extra = {}
    if boosters.gradient_free(cfg):  # Square: one query of a proposal, no gradient
        prop = boosters.square_propose(x_now, x0, hp, keys, t, cfg.steps)
        x8_prop = par.quantize(prop, x0, hp)
        terms_p = obj.evaluate(models, _judge_view(cfg, x8_prop, hp), aux, hp)
        x8, terms, square_state, _ = boosters.square_accept(state.opt_state, terms_p, x8_prop,
                                                            x8, t)
        per_loss = terms.loss
    else:
        grads, (terms, per_loss) = jax.grad(loss_fn, has_aux=True)(state.params)
        if not _fused(cfg):
            terms = eval_terms
        if cfg.vmi_samples > 0:  # VMI: the neighbours' mean gradient for the variance term
            noise = boosters.neighbour_noise(keys, x0.shape[1:], hp["vmi_beta"] * hp["eps"],
                                             cfg.vmi_samples)
            rule_extra["neighbour_grad"] = boosters.neighbour_gradient(
                lambda u, i: jax.grad(loss_fn, has_aux=True)(
                    state.params, u, boosters.neighbour_keys(keys, i))[0], noise)
    # ---- end of hook 1
    succ = terms.success & live

    # ---- bookkeeping on the judged iterate x8
    if cfg.best == "appeal":
        if terms.appeal is None:
            raise ValueError(f"attack {cfg.objective!r}: best='appeal' needs an objective with "
                             "an appeal term (see objectives.with_appeal)")
        key = -terms.appeal
    elif cfg.best == "distortion":
        key = distortion(cfg, x8, x0, state.params, par)
    else:  # last / final: the newest wins
        key = jnp.full(succ.shape, -jnp.inf, jnp.float32)
    if cfg.best == "final":
        take = live
    else:
        take = succ & (key <= state.best_key)
        if cfg.unfooled == "last":
            take = take | (live & ~state.success & ~succ)
        take = take | (succ & ~state.success)
    best_x = jnp.where(_bcast(take, x8), x8, state.best_x)
    best_key = jnp.where(take & succ, key, jnp.where(take, jnp.inf, state.best_key))

    def keep(new, old):
        return None if old is None else jnp.where(take, new.astype(old.dtype), old)
    first = succ & (state.success_step < 0)
    success_step = jnp.where(first, state.steps_used, state.success_step)
    new_in_round = succ & ~state.round_success
    stop_at = jnp.where(new_in_round, state.steps_used + cfg.extra_steps, state.stop_at)
    stopped = cfg.early_stop & (state.steps_used >= stop_at)
    plateau_loss = state.plateau_loss
    if cfg.plateau > 0:
        # ACE's abort_early, per image: every `plateau` iterations, stop unless the loss fell.
        check = live & (t > 0) & (t % cfg.plateau == 0)
        loss = jax.lax.stop_gradient(per_loss).astype(jnp.float32)
        stopped = stopped | (check & ~(loss < state.plateau_loss))
        plateau_loss = jnp.where(check | (t == 0), loss, state.plateau_loss)
    update = live & (t < cfg.steps) & ~stopped

    # ---- the update
    if boosters.gradient_free(cfg):  # [boosters] Square: the kept image is the next iterate
        params, opt_state = x8 - x0, square_state
    else:
        direction, opt_state = rule.update(grads, state.opt_state, state.params, **rule_extra)
        if cfg.schedule == "cosine":
            lr = cosine(t, cfg.steps, hp["step_size"], hp["step_size_min"])
            lr2 = cosine(t, cfg.steps, hp["step_size2"], hp["step_size2_min"])
        else:
            lr, lr2 = hp["step_size"], hp["step_size2"]
        lr_img = jnp.broadcast_to(jnp.asarray(lr, jnp.float32), succ.shape)
        if cfg.formulation == "alternate":
            lr_img = jnp.where(terms.success, lr2, lr)
        params = jax.tree.map(lambda p, d: p - _bcast(lr_img, d) * d, state.params, direction)
        params = par.project(params, x0, hp)

    return state._replace(
        params=_select(update, params, state.params),
        opt_state=_select(update, opt_state, state.opt_state),
        t=t + 1,
        active=live & (t < cfg.steps) & ~stopped,
        steps_used=state.steps_used + update.astype(jnp.int32),
        success=state.success | succ,
        success_step=success_step,
        stop_at=stop_at,
        best_x=best_x,
        best_key=best_key,
        kept_score=keep(terms.score, state.kept_score),
        kept_success=keep(terms.success, state.kept_success),
        kept_appeal=keep(terms.appeal, state.kept_appeal),
        round_success=state.round_success | succ,
        iterations=state.iterations + live.astype(jnp.int32),
        plateau_loss=plateau_loss,
    )


def step_chunk(cfg: AttackConfig, chunk: int, models, x0, hp, seeds, state: State) -> State:
    """``chunk`` iterations of :func:`step` in one compiled call (Python driver)."""
    for _ in range(chunk):
        state = step(cfg, models, x0, hp, seeds, state)
    return state


# ----------------------------------------------------------------------------- the end


def finish(cfg: AttackConfig, models, x0, hp, state: State) -> dict:
    """Final judgement of the kept images and of the clean ones.

    Clean and kept images are judged the same way (through the judging JPEG when
    ``judge_jpeg``), so ``*_before`` and ``*_after`` extras are comparable: for the 2020 task both
    the BIQA score and the appeal are those of the JPEG-90 image, as the organisers judged.
    No forward pass runs here: the judgements are those :func:`init` made of ``x0`` and
    :func:`step` made of each kept image when it was taken (the same function of the same
    image; ``tests/test_attacks.py`` checks them against a fresh forward pass)."""
    obj = _parts(cfg).obj
    b = x0.shape[0]
    x8 = state.best_x
    d = x8 - x0
    extras = {
        "score_before": state.clean_score, "score_after": state.kept_score,
        "tracked_success": state.success, "best_key": state.best_key,
        "iterations": state.iterations,
    }
    if obj.output == "logits":
        extras["labels"] = state.aux["labels"]
    if state.clean_appeal is not None:
        extras["appeal_before"], extras["appeal_after"] = state.clean_appeal, state.kept_appeal
    if cfg.search_steps > 1:
        extras["const"] = state.const
    if boosters.gradient_free(cfg):  # [boosters] Square: judge queries (start + proposals)
        extras["queries"] = state.steps_used + 1
    # the continuous iterate the loop ended with (last round; frozen where an image stopped),
    # before 8-bit rounding: for users who keep refining it or round it their own way
    extras["final_iterate"] = _parts(cfg).par.render(state.params, x0)
    return {
        "images": x8,
        "success": state.kept_success,
        "steps": state.steps_used,
        "success_step": state.success_step,
        "linf": jnp.max(jnp.abs(d).reshape(b, -1), -1),
        "l2": _per_image_norm(d),
        "extras": extras,
    }


# ----------------------------------------------------------------------------- drivers


def whole(cfg: AttackConfig, driver: str, models, x0, aux, hp, seeds) -> dict:
    """The whole attack as one program (``driver`` "scan" or "while")."""
    state = init(cfg, models, x0, aux, hp, seeds)

    def inner(state):
        if driver == "scan":
            return jax.lax.scan(lambda s, _: (step(cfg, models, x0, hp, seeds, s), None), state,
                                None, length=cfg.steps + 1)[0]
        return jax.lax.while_loop(lambda s: jnp.any(s.active),
                                  lambda s: step(cfg, models, x0, hp, seeds, s), state)

    state = inner(state)
    if cfg.rounds > 1:
        state = jax.lax.fori_loop(
            1, cfg.rounds, lambda r, s: inner(advance(cfg, x0, hp, seeds, s)), state)
    return finish(cfg, models, x0, hp, end_round(cfg, state))


def _counted(name: str, fn):
    """``fn`` that bumps ``TRACES[name]`` whenever it is traced (i.e. compiled)."""

    @functools.wraps(fn)
    def wrapper(*args):
        TRACES[name] += 1
        return fn(*args)

    return wrapper


def _finish_round(cfg, models, x0, hp, state):
    return finish(cfg, models, x0, hp, end_round(cfg, state))


def _jit(name: str, fn, static_argnums):
    """The single place where the attack's programs are compiled (add shardings here)."""
    return jax.jit(_counted(name, fn), static_argnums=static_argnums)


_whole_j = _jit("whole", whole, (0, 1))
_init_j = _jit("init", init, (0,))
_step_j = _jit("step", step_chunk, (0, 1))
_advance_j = _jit("advance", advance, (0,))
_finish_j = _jit("finish", _finish_round, (0,))


def merge(cfg: AttackConfig, fresh: State, state: State, take, empty) -> State:
    """Continuous batching's refill: slots ``take`` take ``fresh`` (an :func:`init` of the
    batch that now holds their new images), the other slots keep ``state``. ``empty`` slots
    hold no image: they are made finished, so they never run."""
    kept = {k: jnp.where(take, fresh.aux[k], state.aux[k]) for k in ("labels", "targets")}
    state = _select_state(take, fresh, state)._replace(aux={**fresh.aux, **kept})
    return state._replace(active=state.active & ~empty,
                          r=jnp.where(empty, cfg.rounds - 1, state.r))


def poll(cfg: AttackConfig, state: State) -> tuple[jnp.ndarray, jnp.ndarray]:
    """What the host needs between chunks: per image, (round over with another to run,
    attack over)."""
    return ~state.active & more_rounds(cfg, state), finished(cfg, state)


_merge_j = _jit("merge", merge, (0,))
_poll_j = _jit("poll", poll, (0,))


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
        two = lambda a: jnp.concatenate([a, a])  # noqa: E731
        per = {k: two(v) for k, v in aux.items() if k != "group"}
        res = run(cfg, models, two(x0), {**aux, **per}, two(seeds), driver=driver, chunk=chunk)
        return jax.tree.map(lambda a: a[:1] if getattr(a, "ndim", 0) else a, res)
    static, hp = cfg.static(), _traced(cfg)
    if driver in ("scan", "while"):
        return _whole_j(static, driver, models, x0, aux, hp, seeds)
    state = None
    for s in python_states(cfg, models, x0, aux, seeds, chunk=chunk):
        state = s
    return _finish_j(static, models, x0, hp, state)


def _traced(cfg: AttackConfig) -> dict:
    return {k: jnp.float32(v) for k, v in cfg.hyperparameters().items()}


def python_states(cfg: AttackConfig, models: dict, x0, aux: dict, seeds, *, chunk: int = 1):
    """The Python driver as a generator: yields the :class:`State` after every compiled call
    of ``chunk`` iterations, and stops early once no image is active. With ``best="final"``,
    ``state.best_x`` after call ``t`` (chunk 1, one round) is the judged iterate ``t``: a way to
    inspect trajectories."""
    static, hp = cfg.static(), _traced(cfg)
    state = _init_j(static, models, x0, aux, hp, seeds)
    for r in range(cfg.rounds):
        if r:
            state = _advance_j(static, x0, hp, seeds, state)
        for _ in range(-(-(cfg.steps + 1) // chunk)):
            state = _step_j(static, chunk, models, x0, hp, seeds, state)
            yield state
            if not bool(jnp.any(state.active)):
                break
