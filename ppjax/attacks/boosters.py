"""Transfer boosters and the gradient-free Square step: parts the one loop composes.

None of these is a loop of its own. :mod:`ppjax.attacks.loop` calls them at three places:

* where the gradient's judged input is built (:func:`gradient_models`): **DI** (input diversity)
  and **SGM** (skip-gradient decay) change the judges the gradient pass sees, never the judges
  that decide success (SGM leaves the forward pass bit for bit unchanged);
* where the gradient leaves the loss (:func:`neighbour_gradient`): **VMI**'s mean gradient over
  sampled neighbours, passed to the step rule's :func:`ppjax.attacks.steps.variance_tuning`;
  **TI** is a step-rule transform (:func:`ppjax.attacks.steps.translation_invariant`);
* instead of the gradient (:func:`square_propose` / :func:`square_accept`): the **Square**
  attack's random-search step, which queries the judge once per image and iteration.

Every random choice is per image, from the loop's per-image keys (``keys``: [B] PRNG keys), so
nothing depends on the batch an image is in or on the iteration counter being a scalar.

Defaults (:class:`~ppjax.attacks.config.AttackConfig` fields) are torchattacks 3.5.1's unless the
papers differ, which the field docs say.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ppjax.attacks.ensembles import ENSEMBLE_PREFIX
from ppjax.attacks.objectives import Terms
from ppjax.attacks.parameterisations import expand_to
from ppjax.models.resnet import scale_gradient  # noqa: F401  (SGM's custom_vjp, re-exported)

_TAG_DI, _TAG_VMI, _TAG_SQUARE = 101, 102, 103


def _fold(keys: jnp.ndarray, *tags) -> jnp.ndarray:
    def one(k):
        for tag in tags:
            k = jax.random.fold_in(k, tag)
        return k

    return jax.vmap(one)(keys)


def transforms_input(cfg) -> bool:
    """True when the gradient pass must not be the judging pass (``fused_eval`` off): DI shows
    the gradient a different image, VMI takes gradients at other points."""
    return bool(cfg.di) or cfg.vmi_samples > 0


def classifier_keys(models) -> list[str]:
    """The judges a booster acts on: the attacked judge and the ensemble members; an appeal
    judge (NIMA) is left alone (DI's black borders are not what an aesthetic judge should rate)."""
    return [k for k in models if k == "judge" or k.startswith(ENSEMBLE_PREFIX)]


# ----------------------------------------------------------------------------- DI


def resize_pad_matrix(n_in: int, n_out: int, size, offset) -> jnp.ndarray:
    """[n_out, n_in] matrix of a 1-D bilinear resize of ``n_in`` samples to ``size`` samples
    (torch ``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing: source
    coordinate ``(i + 0.5) n_in / size - 0.5`` clamped at 0) placed at ``offset`` in ``n_out``
    zeros. ``size`` and ``offset`` may be traced integers; the shape is static."""
    i = jnp.arange(n_out, dtype=jnp.int32)
    u = i - offset
    valid = (u >= 0) & (u < size)
    scale = jnp.float32(n_in) / jnp.asarray(size, jnp.float32)
    src = jnp.maximum(scale * (u.astype(jnp.float32) + 0.5) - 0.5, 0.0)
    i0 = jnp.floor(src).astype(jnp.int32)
    lam1 = jnp.clip(src - i0.astype(jnp.float32), 0.0, 1.0)
    i1 = jnp.where(i0 < n_in - 1, i0 + 1, i0)
    j = jnp.arange(n_in, dtype=jnp.int32)[None, :]
    m = ((1.0 - lam1)[:, None] * (j == i0[:, None]) + lam1[:, None] * (j == i1[:, None]))
    return jnp.where(valid[:, None], m, 0.0).astype(jnp.float32)


def diverse_input(x: jnp.ndarray, size, top, left, apply) -> jnp.ndarray:
    """DI's transform with the choices given, per image: resize ``x`` [B, H, W, 3] to
    ``size`` [B] rows (columns ``floor(size W / H)``, equal for square images) and place it at
    (``top``, ``left``) [B] in a zero image of the same H x W; ``apply`` [B] bool (else ``x``)."""
    _, h, w, _ = x.shape

    def one(img, s, t, lft, a):
        sw = jnp.maximum((s * w) // h, 1)
        mh = resize_pad_matrix(h, h, s, t)
        mw = resize_pad_matrix(w, w, sw, lft)
        out = jnp.einsum("ih,hwc,jw->ijc", mh, img, mw, precision=jax.lax.Precision.HIGHEST)
        return jnp.where(a, out, img)

    return jax.vmap(one)(x, size, top, left, apply)


def diversity_choices(keys: jnp.ndarray, hw: tuple[int, int], resize_rate, prob):
    """DI's random choices per image (torchattacks ``input_diversity``'s distribution): size
    uniform in ``[floor(rate H), H)``, top offset uniform in ``[0, H - size)``, left in
    ``[0, W - size_w)``, applied with probability ``prob``. Returns (size, top, left, apply)."""
    h, w = hw

    def one(k):
        ks, kt, kl, ka = jax.random.split(k, 4)
        lo = jnp.clip(jnp.floor(resize_rate * h).astype(jnp.int32), 1, h - 1)
        s = jax.random.randint(ks, (), lo, h)
        sw = jnp.maximum((s * w) // h, 1)
        top = jax.random.randint(kt, (), 0, jnp.maximum(h - s, 1))
        left = jax.random.randint(kl, (), 0, jnp.maximum(w - sw, 1))
        return s, top, left, jax.random.uniform(ka, ()) < prob

    return jax.vmap(one)(keys)


class _Diverse:
    """A judge that sees DI's transform of its input (per-image choices fixed at creation)."""

    def __init__(self, judge, keys, cfg):
        self._judge, self._keys, self._cfg = judge, keys, cfg

    def _t(self, x):
        c = diversity_choices(self._keys, x.shape[1:3], self._cfg.di_resize_rate,
                              self._cfg.di_prob)
        return diverse_input(x, *c)

    def __call__(self, x):
        return self._judge(self._t(x))

    def score(self, x):
        return self._judge.score(self._t(x))

    def __getattr__(self, name):
        return getattr(self._judge, name)


# ----------------------------------------------------------------------------- SGM


def _with_sgm(module, gamma: float):
    """``module`` with ``sgm_gamma=gamma``, through engine wrappers (folded BatchNorm, oneDNN
    convolutions: frozen dataclasses holding the model as ``inner``); None if no residual model."""
    if hasattr(module, "sgm_gamma") and hasattr(module, "clone"):
        return module.clone(sgm_gamma=float(gamma))
    inner = getattr(module, "inner", None)
    if inner is None or not dataclasses.is_dataclass(module):
        return None
    new_inner = _with_sgm(inner, gamma)
    return None if new_inner is None else dataclasses.replace(module, inner=new_inner)


def skip_gradient(judge, gamma: float):
    """``judge`` with SGM's skip-gradient decay (Wu et al., ICLR 2020): the gradient through
    every residual branch scaled by ``gamma``, the skip connections untouched, the forward pass
    unchanged. Only for judges built of residual blocks (the ResNet family); works through the
    folded / oneDNN engine wrappers."""
    module = getattr(judge, "module", None)
    new = None if module is None else _with_sgm(module, gamma)
    if new is None:
        name = getattr(getattr(judge, "spec", None), "name", type(judge).__name__)
        raise ValueError(f"SGM (sgm_gamma) needs a judge with residual blocks (the ResNet "
                         f"family: resnet18/resnet50/wideresnet18_places365); {name!r} has none")
    return judge.replace(module=new)


def changes_judges(cfg) -> bool:
    """True when the gradient pass sees other judges than the judging pass (SGM, DI)."""
    return cfg.sgm_gamma != 1.0 or bool(cfg.di)


def gradient_models(cfg, models: dict, keys: jnp.ndarray, sample: int = 0) -> dict:
    """The judges the gradient pass sees: with SGM, each classifier judge with its residual
    gradients decayed; with DI, each sees its input transformed with per-image choices from
    ``keys`` (and the EOT sample index ``sample``). Unchanged otherwise."""
    if not changes_judges(cfg):
        return models
    out = dict(models)
    for k in classifier_keys(models):
        j = out[k]
        if cfg.sgm_gamma != 1.0:
            j = skip_gradient(j, cfg.sgm_gamma)
        if cfg.di:  # the same choices for every member: one transformed image, K judges
            j = _Diverse(j, _fold(keys, _TAG_DI, sample), cfg)
        out[k] = j
    return out


# ----------------------------------------------------------------------------- VMI


def neighbour_noise(keys: jnp.ndarray, shape: tuple[int, ...], radius, n: int) -> jnp.ndarray:
    """VMI's neighbour offsets: [n, B, *shape] uniform in [-radius, radius], per image."""
    def one(i):
        return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0))(
            _fold(keys, _TAG_VMI, i)) * radius

    return jax.vmap(one)(jnp.arange(n))


def neighbour_gradient(grad_at, noise: jnp.ndarray):
    """VMI's mean gradient over the neighbours: ``mean_i grad_at(noise[i], i)`` where
    ``grad_at(shift, i)`` is the gradient (a params pytree) of the loss at the image shifted by
    ``shift`` [B, H, W, 3] (``i``, traced, lets DI / EOT draw afresh per neighbour). ``noise``:
    [N, B, H, W, 3] (see :func:`neighbour_noise`; pass your own to reproduce another
    implementation's samples). One gradient pass at a time."""
    n = noise.shape[0]

    def body(i, acc):
        g = grad_at(noise[i], i)
        return jax.tree.map(lambda a, b: a + b, acc, g)

    zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_at, noise[0], jnp.int32(0)))
    total = jax.lax.fori_loop(0, n, body, zero)
    return jax.tree.map(lambda a: a / n, total)


def neighbour_keys(keys: jnp.ndarray, i) -> jnp.ndarray:
    """Per-image keys of VMI neighbour ``i`` (traced) for the random views (DI, EOT JPEG)."""
    return _fold(keys, _TAG_VMI + 1000, i)


# ----------------------------------------------------------------------------- Square


#: Square's schedule: the square's area fraction p halves after these iterations (of 10000,
#: rescaled to the budget), as in the paper's code and torchattacks' ``p_selection``.
SQUARE_BREAKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(i, budget: int, p_init) -> jnp.ndarray:
    """p at proposal ``i`` (0-based, [B] or scalar) of a ``budget``-proposal run:
    ``p_init / 2^k``, k = breaks passed by ``floor(i / budget * 10000)``."""
    it = jnp.floor(jnp.asarray(i, jnp.float32) / budget * 10000.0)
    k = sum((it > b).astype(jnp.float32) for b in SQUARE_BREAKS)
    return p_init / jnp.exp2(k)


def square_side(p, hw: tuple[int, int]) -> jnp.ndarray:
    """Side of the square: ``max(round(sqrt(p H W)), 1)`` (round half to even, as Python's
    ``round``), at most the shorter image side."""
    h, w = hw
    s = jnp.round(jnp.sqrt(p * (h * w)))
    return jnp.clip(s, 1, min(h, w)).astype(jnp.int32)


def square_propose(x_cur, x0, cfg, keys, t, budget: int):
    """The candidate per image: at ``t == 0`` Square's start (``x0`` plus ``eps`` times a random
    sign per column and channel: vertical stripes); later the current image plus a square of
    side :func:`square_side` at a random position, of ``+-2 eps`` per channel (a random sign
    each), projected back into the eps ball and [0, 1]. ``t``: [B] or scalar iteration."""
    b, h, w, _ = x0.shape
    eps = cfg.eps
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
    s = square_side(square_fraction(t - 1, budget, cfg.square_p_init), (h, w))

    def one(k, xc, xo, si):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        stripes = jnp.sign(jax.random.uniform(k1, (1, w, 3), jnp.float32, -1.0, 1.0))
        start = jnp.clip(xo + eps * stripes, 0.0, 1.0)
        vh = jnp.floor((h - si) * jax.random.uniform(k2, ())).astype(jnp.int32)
        vw = jnp.floor((w - si) * jax.random.uniform(k3, ())).astype(jnp.int32)
        ch = jnp.sign(jax.random.uniform(k4, (1, 1, 3), jnp.float32, -1.0, 1.0))
        r = jnp.arange(h)[:, None, None]
        c = jnp.arange(w)[None, :, None]
        m = (r >= vh) & (r < vh + si) & (c >= vw) & (c < vw + si)
        new = jnp.where(m, xc + 2.0 * eps * ch, xc)
        new = jnp.clip(jnp.clip(new, xo - eps, xo + eps), 0.0, 1.0)
        return start, new

    start, new = jax.vmap(one)(_fold(keys, _TAG_SQUARE), x_cur, x0, s)
    return jnp.where(expand_to(t == 0, x0), start, new)


def square_init(b: int) -> dict:
    """Square's state (a dict of [B] arrays): ``loss_min`` (the best loss so far, +inf at the
    start of a round) and the current image's ``success``, ``score``, ``appeal`` (what the loop's
    bookkeeping reports for an image whose proposal was rejected)."""
    return {"loss_min": jnp.full((b,), jnp.inf, jnp.float32),
            "success": jnp.zeros((b,), bool),
            "score": jnp.zeros((b,), jnp.float32),
            "appeal": jnp.zeros((b,), jnp.float32)}


def square_accept(state: dict, terms: Terms, x8_prop, x8_cur, t):
    """Square's acceptance (per image): take the proposal when its loss is below the best so far,
    when it fools the judge, or at the start (``t == 0``). Returns (the image kept now [B, H, W,
    3], its :class:`Terms`, the new state, accepted [B] bool). ``loss_min`` only moves on an
    improvement (as the original and torchattacks)."""
    b = x8_prop.shape[0]
    first = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,)) == 0
    improved = terms.loss < state["loss_min"]
    take = first | improved | terms.success
    keep = expand_to(take, x8_prop)
    appeal = state["appeal"] if terms.appeal is None else jnp.where(take, terms.appeal,
                                                                    state["appeal"])
    cur = Terms(loss=jnp.where(take, terms.loss, state["loss_min"]),
                success=jnp.where(take, terms.success, state["success"]),
                score=jnp.where(take, terms.score, state["score"]),
                appeal=None if terms.appeal is None else appeal)
    new_state = {"loss_min": jnp.where(improved | first, terms.loss, state["loss_min"]),
                 "success": cur.success, "score": cur.score, "appeal": appeal}
    return jnp.where(keep, x8_prop, x8_cur), cur, new_state, take
