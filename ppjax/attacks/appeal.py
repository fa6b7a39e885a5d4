"""The appeal judge's view of an image: how an aesthetics judge (NIMA) is fed an image as its
original does (Pillow-exact nearest or antialiased bilinear resizing, or the native size), and
the appeal score the attack's appeal term, ``ppjax evaluate`` and ``ppjax sweep`` all compute
through :func:`appeal_input` (the single owner of that rule). A judge's own rule is
``JudgeSpec.appeal_resize``."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.registry import Registry


def pil_nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Source indices [n_out] int32 of Pillow's ``Image.resize(..., NEAREST)`` along one axis.

    Pillow (``ImagingScaleAffine``) starts at ``a / 2`` with ``a = n_in / n_out``, adds ``a`` in
    double precision for every output pixel and truncates; the accumulated rounding makes some
    indices differ from ``floor((i + 0.5) * a)`` (256 -> 224: 3 of every 7 rows), so the loop is
    copied as is."""
    a = n_in / n_out
    v, out = a * 0.5, []
    for _ in range(n_out):
        out.append(int(v))
        v += a
    return np.minimum(np.asarray(out, np.int32), n_in - 1)


def resize_nearest(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Nearest-neighbour resize ``x`` [B, H, W, C] -> [B, h, w, C] with Pillow's sampling grid
    (what Keras ``load_img(target_size=...)`` and :func:`ppjax.image.io.resize_plain` do). A plain
    gather: differentiable in ``x`` (each output pixel's gradient lands on its source pixel)."""
    h, w = hw
    if tuple(x.shape[1:3]) == (h, w):
        return x
    rows = pil_nearest_indices(x.shape[1], h)
    cols = pil_nearest_indices(x.shape[2], w)
    return jnp.take(jnp.take(x, rows, axis=1), cols, axis=2)




def resize_bilinear(x: jnp.ndarray, hw: tuple[int, int]) -> jnp.ndarray:
    """Bilinear resize ``x`` [B, H, W, C] -> [B, h, w, C] with a triangle filter widened when
    shrinking (antialiased, as Pillow's ``BILINEAR``, which torchvision's ``Resize`` calls on PIL
    images); differentiable."""
    h, w = hw
    if tuple(x.shape[1:3]) == (h, w):
        return x
    return jax.image.resize(x, (x.shape[0], h, w, x.shape[3]), "linear", antialias=True)


def _native(judge, x):
    """The judge takes ``x`` at its own size (a judge with global pooling)."""
    hw = tuple(x.shape[1:3])
    if hw != tuple(judge.spec.input_hw):
        judge = judge.replace(spec=dataclasses.replace(judge.spec, input_hw=hw))
    return judge, x


#: How an appeal judge is shown an image, by rule name: ``fn(judge, x) -> (judge', x')``.
APPEAL_RESIZERS: Registry = Registry("appeal resize rule")
APPEAL_RESIZERS.register("native", _native)
APPEAL_RESIZERS.register("nearest", lambda judge, x: (
    judge, resize_nearest(x, tuple(judge.spec.input_hw))))
APPEAL_RESIZERS.register("bilinear", lambda judge, x: (
    judge, resize_bilinear(x, tuple(judge.spec.input_hw))))


def appeal_resize_rules() -> tuple[str, ...]:
    """The accepted ``appeal_resize`` values: ``"auto"`` and every registered rule."""
    return ("auto", *APPEAL_RESIZERS)


def appeal_resize_rule(judge, rule: str = "auto") -> str:
    """The resize rule used for ``judge``: ``rule``, or for "auto" the judge's own
    (``JudgeSpec.appeal_resize``; "nearest" for a judge without a spec)."""
    if rule not in appeal_resize_rules():
        raise ValueError(f"appeal resize rule {rule!r}; choose one of "
                         f"{', '.join(appeal_resize_rules())}")
    if rule != "auto":
        return rule
    spec = getattr(judge, "spec", None)
    return getattr(spec, "appeal_resize", "nearest")


def appeal_input(judge, x: jnp.ndarray, rule: str = "auto"):
    """``(judge', x')``: the image ``x`` [B, H, W, 3] in [0, 1] as the appeal judge's original
    feeds it to the network (the single owner of that rule: the attack's appeal term, ``ppjax
    evaluate`` and ``ppjax sweep`` all call it). With ``"native"``, ``judge'`` accepts ``x`` at
    its own size."""
    rule = appeal_resize_rule(judge, rule)
    if getattr(judge, "spec", None) is None or judge.spec.input_hw is None:  # any size
        return judge, x
    return APPEAL_RESIZERS[rule](judge, x)


def appeal_score(judge, x: jnp.ndarray, rule: str = "auto") -> jnp.ndarray:
    """Appeal [B] float32 of ``x`` [B, H, W, 3] in [0, 1]: ``judge.score`` (the NIMA mean for a
    distribution judge) of the image brought to the judge as its original does
    (:func:`appeal_input`), so the attack optimises exactly the figure that is reported."""
    judge, x = appeal_input(judge, x, rule)
    return judge.score(x).astype(jnp.float32)


_appeal_score_jit = jax.jit(appeal_score, static_argnums=2)


def appeal_scores(judge, images, batch: int, rule: str = "auto") -> np.ndarray:
    """:func:`appeal_score` of every image of ``images`` [N, H, W, 3] in [0, 1] (numpy [N]),
    compiled once and run in batches of ``batch`` (the last padded by
    :func:`ppjax.parallel.pad_batch`, so every call has one shape): how ``ppjax evaluate`` and
    ``ppjax sweep`` score appeal."""
    from ppjax.parallel import pad_batch

    images = np.asarray(images, np.float32)
    return np.concatenate([
        np.asarray(_appeal_score_jit(judge, jnp.asarray(pad_batch(images[i:i + batch], batch)),
                                     rule))[:len(images[i:i + batch])]
        for i in range(0, len(images), batch)])
