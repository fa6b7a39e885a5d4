"""Probes: how an iterate is judged and how the next one is made, a part with its own state.

The loop (:mod:`ppjax.attacks.loop`) judges every image's iterate through its config's probe
and lets the probe make the next iterate; it knows no probe by name. A :class:`Probe` is
chosen by the config's ``step``: a name of :data:`PROBES` (a score-based search) or, for every
step rule of :data:`~ppjax.attacks.steps.STEP_RULES`, the gradient probe.

* ``"gradient"``: the formulation's loss and its gradient (through the EOT view and the
  boosters' judges), then the step rule (an optax transformation per image, the per-image step
  size applied through optax), ``optax.apply_updates`` and the projection.
* ``"square"``: the Square attack's score-based search (Andriushchenko et al., ECCV 2020): each
  iteration judges one random square proposal per image and keeps it if the loss improves; no
  gradient (:mod:`ppjax.attacks.boosters`).

Adding a probe is registering one here; the config accepts its name as ``step`` at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ppjax.attacks import boosters
from ppjax.attacks.iterate import Iterate, Judged, State, fused, judge_view, parts, select
from ppjax.attacks.objectives import Terms
from ppjax.attacks.rules import EOT_VIEWS, FORMULATIONS, distortion
from ppjax.attacks.steps import SCHEDULES, make_step_rule, per_image_rule, scale_by_step_size
from ppjax.registry import Registry


class Probe(NamedTuple):
    """A way to judge an iterate and make the next one (all pure; per-image state).

    init(cfg, params) -> state: the probe's state for a round's fresh parameters.
    judge(cfg, models, x0, state, it) -> Judged: the iterate ``it`` judged (and what the update
      needs: a gradient, or the probe's new state).
    update(cfg, x0, state, judged) -> (params, probe state): the next iterate of every image
      (the loop keeps it only for the images still running).
    extras(cfg, state) -> dict: per-image figures the result reports (e.g. ``queries``).
    judges_iterate: its judgement of iterate 0 is the plain judgement of ``x0``, so the clean
      judgement may be taken there (``ppjax.attacks.loop.clean_in_first_step``).
    judge_only(cfg, models, x0, state, it) -> Judged, or None: the same judgement as ``judge``
      without what only the update needs (no gradient). A round's last iteration makes no
      next iterate, so the drivers that run whole batches run it through this
      (``ppjax.attacks.loop.judge_step``): one forward pass instead of a forward and a
      backward pass. None: the last iteration runs ``judge`` like the others.
    """

    init: Callable
    judge: Callable
    update: Callable
    extras: Callable = lambda cfg, state: {}
    judges_iterate: bool = True
    judge_only: Callable | None = None


#: Score-based probes by name (``AttackConfig.step``); every other step is a step rule of the
#: gradient probe (:func:`make_probe`).
PROBES: Registry[Probe] = Registry("probe")


def make_probe(cfg) -> Probe:
    """The probe ``cfg.step`` names: a registered probe, else the gradient probe."""
    return PROBES[cfg.step] if cfg.step in PROBES else GRADIENT


def step_names() -> tuple[str, ...]:
    """The names ``AttackConfig.step`` accepts: the step rules and the probes."""
    from ppjax.attacks.steps import STEP_RULES

    return (*STEP_RULES, *PROBES)


# ----------------------------------------------------------------------------- gradient


def fill_pending(obj, z, aux: dict, pending) -> dict:
    """``aux`` with the ``prepare`` of the pending images' logits ``z`` (their clean judgement,
    taken by this iteration); the other images keep theirs."""
    if obj.output != "logits" or obj.prepare is None:
        return aux
    filled = obj.prepare(jax.lax.stop_gradient(z).astype(jnp.float32), aux)
    return select(pending, {k: filled[k] for k in aux}, aux)


def _fused_terms(cfg, obj, g_models, view, state: State):
    """The judgement of the gradient pass when it also judges: with a pending clean judgement
    (its iterate 0 is ``x0``), the attacked judge's output labels the pending images first and
    is passed to the objective explicitly (``Objective.terms``)."""
    aux = state.aux
    if state.clean.pending is None or obj.terms is None:
        return obj.evaluate(g_models, view, aux, cfg), aux
    z = g_models["judge"](view)
    aux = fill_pending(obj, z, aux, state.clean.pending)
    return obj.terms(z, g_models, view, aux, cfg), aux


def _loss_fn(cfg, models, x0, state: State, it: Iterate, judged):
    """The summed formulation loss of the live images, ``(params, shift, keys) -> (loss, (terms,
    per-image loss, aux))``; ``judged`` is None when the gradient pass also judges (fused)."""
    obj, par = parts(cfg)
    formulation = FORMULATIONS[cfg.formulation]

    def eot_losses(x, keys, aux):
        # [boosters] DI / SGM: the judges the gradient sees (per-image keys, EOT sample i)
        return [obj.evaluate(boosters.gradient_models(cfg, models, keys, i),
                             EOT_VIEWS[cfg.eot](cfg, x, keys, i), aux, cfg).loss
                for i in range(cfg.eot_samples)]

    def loss_fn(params, shift=None, keys=it.keys):
        x = par.render(params, x0)
        if shift is not None:  # [boosters] a VMI neighbour
            x = x + shift
        aux = state.aux
        if judged is None:
            # The judge sees exactly x8 (forward: x8 + 0, bit for bit, so finish can reuse this
            # judgement); the gradient passes straight through.
            on_grid = it.x8 + (x - jax.lax.stop_gradient(x))
            g_models = boosters.gradient_models(cfg, models, keys)  # [boosters] SGM
            terms, aux = _fused_terms(cfg, obj, g_models, judge_view(cfg, on_grid), state)
            adv = terms.success
            if cfg.eot != "none":  # eot_clean: the iterate and eot_samples EOT draws, averaged
                terms = terms._replace(loss=(terms.loss + sum(eot_losses(x, keys, aux)))
                                       / (1 + cfg.eot_samples))
        else:
            terms = judged._replace(loss=sum(eot_losses(x, keys, state.aux)) / cfg.eot_samples)
            adv = judged.success
        per = formulation.loss(terms.loss, lambda: distortion(cfg, x, x0, params, par),
                               state.search.const, jax.lax.stop_gradient(adv))
        per = per + cfg.lam * par.reg(params)
        return jnp.sum(jnp.where(it.live, per, 0.0)), (terms, per, aux)

    return loss_fn


def judges_between(cfg) -> bool:
    """True when the judgement of an iterate before a round's last can change the result:
    early stop, a best-rule other than the final iterate, the plateau stop, the binary search
    of C&W's constant (it reads each round's successes), or a formulation that reads the
    judgement (PerC-AL's alternation). Otherwise only the last iteration's judgement counts,
    and a gradient probe whose judging is a pass of its own (not fused: EOT, DI, a judging
    JPEG, ``fused_eval`` off) skips it before the last iteration (:func:`gradient_judge`):
    ``success_step`` and ``tracked_success`` then see the last iterate only, as torchattacks,
    Foolbox and the organisers' I-FGSM, which judge no iterate, would."""
    return (cfg.early_stop or cfg.best != "final" or cfg.plateau > 0 or cfg.search_steps > 1
            or FORMULATIONS[cfg.formulation].reads_success)


def _unjudged(evaluate) -> Terms:
    """Placeholder terms of an iterate not judged (zeros of ``evaluate``'s shapes: no
    success), for the bookkeeping of an iteration whose judgement cannot count."""
    shapes = jax.eval_shape(evaluate)
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


def gradient_judge(cfg, models, x0, state: State, it: Iterate) -> Judged:
    """Judge the iterate and take the formulation's gradient (one pass when fused; without
    :func:`judges_between`, a separate judging pass runs only when an image is at its round's
    last iteration, which the drivers that run whole batches give to :func:`gradient_judge_only`
    anyway)."""
    judged = None
    if not fused(cfg):
        def evaluate():
            return parts(cfg).obj.evaluate(models, judge_view(cfg, it.x8), state.aux, cfg)

        if judges_between(cfg):
            judged = evaluate()
        else:
            # per image, so that a stream slot's result does not depend on its neighbours'
            last = it.live & (state.progress.t >= cfg.steps)
            none = _unjudged(evaluate)
            judged = select(last, jax.lax.cond(jnp.any(last), evaluate, lambda: none), none)
    loss_fn = _loss_fn(cfg, models, x0, state, it, judged)
    grads, (terms, per, aux) = jax.grad(loss_fn, has_aux=True)(state.params)
    extra = {}
    if cfg.vmi_samples > 0:  # [boosters] VMI: the neighbours' mean gradient (variance term)
        noise = boosters.neighbour_noise(it.keys, x0.shape[1:], cfg.vmi_beta * cfg.eps,
                                         cfg.vmi_samples)
        extra["neighbour_grad"] = boosters.neighbour_gradient(
            lambda u, i: jax.grad(loss_fn, has_aux=True)(
                state.params, u, boosters.neighbour_keys(it.keys, i))[0], noise)
    return Judged(it.x8, terms if judged is None else judged, per, grads, extra, aux=aux)


def step_rule(cfg) -> optax.GradientTransformationExtraArgs:
    """The gradient probe's optax transformation: the step rule per image
    (:func:`~ppjax.attacks.steps.per_image_rule`), then the per-image step size
    (:func:`~ppjax.attacks.steps.scale_by_step_size`, extra argument ``step_size``)."""
    return optax.chain(per_image_rule(make_step_rule(cfg)), scale_by_step_size())


def step_size(cfg, state: State, success) -> jnp.ndarray:
    """[B] float32: each image's step size at its iteration (schedule, formulation)."""
    t, schedule = state.progress.t, SCHEDULES[cfg.schedule]
    lr = FORMULATIONS[cfg.formulation].step_size(
        schedule(t, cfg.steps, cfg.step_size, cfg.step_size_min),
        schedule(t, cfg.steps, cfg.step_size2, cfg.step_size2_min), success)
    return jnp.broadcast_to(jnp.asarray(lr, jnp.float32), success.shape)


def gradient_update(cfg, x0, state: State, j: Judged):
    """``update``, ``apply_updates``, ``project``: the next parameters and rule state."""
    updates, rule_state = step_rule(cfg).update(
        j.grads, state.probe_state, state.params, step_size=step_size(cfg, state,
                                                                      j.terms.success),
        **j.extra)
    params = optax.apply_updates(state.params, updates)
    return parts(cfg).par.project(params, x0, cfg), rule_state


def gradient_judge_only(cfg, models, x0, state: State, it: Iterate) -> Judged:
    """The gradient probe's judgement of the iterate without the gradient: the objective on
    the judged view of ``it.x8`` (the value the fused pass computes, whose forward is ``x8``
    bit for bit), a pending clean judgement filled as there. ``loss`` is the objective's (no
    step follows, so the formulation's loss is not needed)."""
    terms, aux = _fused_terms(cfg, parts(cfg).obj, models, judge_view(cfg, it.x8), state)
    return Judged(it.x8, terms, terms.loss, aux=aux)


GRADIENT = Probe(init=lambda cfg, params: step_rule(cfg).init(params), judge=gradient_judge,
                 update=gradient_update, judge_only=gradient_judge_only)


# ----------------------------------------------------------------------------- score-based


def square_judge(cfg, models, x0, state: State, it: Iterate) -> Judged:
    """Square: one judged proposal per image, kept if its loss improves; no gradient."""
    obj, par = parts(cfg)
    t = state.progress.t
    prop = par.quantize(boosters.square_propose(it.x, x0, cfg, it.keys, t, cfg.steps), x0, cfg)
    terms_p = obj.evaluate(models, judge_view(cfg, prop), state.aux, cfg)
    x8, terms, square_state, _ = boosters.square_accept(state.probe_state, terms_p, prop, it.x8,
                                                        t)
    return Judged(x8, terms, terms.loss, probe_state=square_state)


PROBES.register("square", Probe(
    init=lambda cfg, params: boosters.square_init(jax.tree.leaves(params)[0].shape[0]),
    judge=square_judge,
    update=lambda cfg, x0, state, j: (j.x8 - x0, j.probe_state),  # the kept image is next
    extras=lambda cfg, state: {"queries": state.progress.steps_used + 1},  # start + proposals
    judges_iterate=False))
