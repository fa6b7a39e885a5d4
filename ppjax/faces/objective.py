"""Objective ``"faces"``: hide every face from MTCNN (differentiable, static shapes).

The whole cascade runs inside the attack's program on the judged image ``x`` [B, H, W, 3]:

1. **P-Net at every pyramid scale** (:meth:`ppjax.models.mtcnn.MTCNN.pyramid`: area resampling,
   differentiable, the level sizes fixed by the image size at trace time). Every window's face
   log-odds ``l`` gets the hinge ``relu(l - (logit(0.6) - kappa))``, summed over all windows of
   all scales.
2. **The proposals.** The windows at or above ``logit(0.6) - kappa`` (at most ``m`` of them, by
   score) go through facenet-pytorch's stage-1 NMS (0.5 within a scale, then 0.7), in the
   graph; the first ``k`` survivors (a fixed number, with a validity mask) are calibrated and
   squared as the original does (box coordinates under ``stop_gradient``).
3. **R-Net and O-Net on those proposals.** Each proposal is cropped (clipped to the image like
   the original) and area-resized to 24x24, differentiably in the pixels (summed-area tables,
   exact: the 8-bit levels in int32, the remainder in float32); R-Net gives its hinge ``h_R = relu(l_R -
   (logit(0.7) - kappa))``. The ``k_onet`` with the highest R-Net log-odds are calibrated by
   R-Net, cropped at 48x48, and O-Net gives ``h_O = relu(l_O - (logit(0.7) - kappa))``.
   Objective ``"faces"`` sums both hinges (each stage pushed to reject every proposal).
   Objective ``"faces_chain"`` counts a proposal once, as the chain it is: R-Net OR O-Net
   rejecting it is enough, so one that reaches O-Net adds ``min(h_R, h_O)`` and any other
   ``h_R`` (:func:`chain_hinges`). The chain hides more faces on the PNG and after JPEG-90
   but fewer after an upload (figures: benchmarks/RESULTS.md).
   Objective ``"faces_jitter"`` (the task's default attack) takes each R-Net and O-Net hinge as
   the mean over the proposal's crop and four crops around it (:data:`JITTERS`: scaled 0.85x
   and 1/0.85x, moved 8% of the side along both diagonals): after an upload's resize the
   detector's proposals, so its crops, fall a few pixels away from those of the attacked image.

``kappa`` (``AttackConfig.kappa``, traced, in log-odds units; 0 = stop exactly at the thresholds)
is the safety margin. The proposals are those of the image being judged (the objective does not
see the clean image; a proposal of the clean image that P-Net no longer makes is already hidden).

**Success** = the in-graph cascade certifies that facenet-pytorch's detector finds no face:
no window reaches P-Net's 0.6, or every stage-1 survivor is rejected by R-Net (0.7) or by O-Net
(0.7) on its own crop, and nothing overflowed (the passing windows fit in ``m``, their survivors
in ``k``, those R-Net passes in ``k_onet``; an overflow is never certified). Skipping
R-Net's NMS and the final NMS can only keep more boxes, so success implies that
:func:`ppjax.faces.cascade` finds nothing (up to float rounding at a threshold).
**Score** = the highest P-Net window probability (``Judge.score`` of the ``mtcnn`` judge).

Register: importing :mod:`ppjax.faces` (or this module) adds ``"faces"``, ``"faces_chain"`` and
``"faces_jitter"`` to
:data:`ppjax.attacks.objectives.OBJECTIVES`; each declares the per-image input ``faces``
(:data:`FACES_INPUT`, the clean boxes; unused rows -1: no regions).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.attacks.objectives import Input, Objective, Terms, register
from ppjax.faces.cascade import THRESHOLDS
from ppjax.models.mtcnn import ONET_HW, RNET_HW, pyramid_scales, pyramid_sizes

#: per image: windows that enter the stage-1 NMS (m), survivors that reach R-Net (k), and of
#: those, the best by R-Net's log-odds that reach O-Net (k_onet).
M_CANDIDATES = 512
K_PROPOSALS = 64
K_ONET = 16
#: Face regions per image (the per-image input ``faces``): the clean image's detections. A
#: photo with more faces than this is attacked over every window (no regions).
FACE_SLOTS = 16
#: A P-Net window counts for the hinge when at least ``NEAR_FRACTION`` of its area lies inside a
#: face region grown ``REGION_GROW`` times about its centre.
REGION_GROW = 1.5
NEAR_FRACTION = 0.8
#: The weight of P-Net's hinge (summed over thousands of windows) against R-Net's and O-Net's
#: (a few proposals each): at 1 the dense P-Net term takes the whole step and the attack stalls
#: with R-Net and O-Net still accepting the face; at 0 P-Net fires everywhere and the
#: proposals overflow (measured on astronaut, docs/faces.md).
PNET_WEIGHT = 0.02
#: The per-image input: face boxes ``x1, y1, x2, y2`` in the image's pixels, rows of -1 unused.
FACES_INPUT = Input("faces", (FACE_SLOTS, 4), "float32", -1.0)

_sg = jax.lax.stop_gradient


def log_odds(p: float) -> float:
    return math.log(p / (1.0 - p))


def pnet_map_hw(n: int) -> int:
    """P-Net's output length for an input length ``n`` (conv3, ceil pool 2/2, conv3, conv3)."""
    return -(-(n - 4) // 2) + 1 - 4


def window_geometry(h: int, w: int, min_face: int, factor: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every P-Net window of the pyramid of an ``h`` x ``w`` image, in the order the levels are
    flattened (scale, then row-major): (boxes [N, 4] float32 ``x1, y1, x2, y2`` as
    ``generateBoundingBox`` computes them, scale index [N] int32)."""
    boxes, sid = [], []
    for i, (s, (lh, lw)) in enumerate(zip(pyramid_scales(h, w, min_face, factor),
                                          pyramid_sizes(h, w, min_face, factor), strict=True)):
        ys, xs = np.meshgrid(np.arange(pnet_map_hw(lh)), np.arange(pnet_map_hw(lw)),
                             indexing="ij")
        bb = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)
        q1 = np.floor((np.float32(2) * bb + np.float32(1)) / np.float32(s))
        q2 = np.floor((np.float32(2) * bb + np.float32(12)) / np.float32(s))
        boxes.append(np.concatenate([q1, q2], axis=1))
        sid.append(np.full(len(bb), i, np.int32))
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    return np.concatenate(boxes).astype(np.float32), np.concatenate(sid)


def _iou(b: jnp.ndarray) -> jnp.ndarray:
    """torchvision IoU [M, M] of boxes [M, 4] (areas without the +1)."""
    x1, y1, x2, y2 = (b[:, i] for i in range(4))
    area = (x2 - x1) * (y2 - y1)
    w = jnp.maximum(jnp.minimum(x2[:, None], x2[None, :]) - jnp.maximum(x1[:, None], x1[None, :]),
                    0.0)
    h = jnp.maximum(jnp.minimum(y2[:, None], y2[None, :]) - jnp.maximum(y1[:, None], y1[None, :]),
                    0.0)
    inter = w * h
    return inter / (area[:, None] + area[None, :] - inter)


def greedy_nms(over: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Greedy NMS of boxes already sorted by decreasing score: ``over`` [M, M] bool (box j is
    suppressed by a kept box i when ``over[i, j]``), ``valid`` [M] bool (absent boxes neither
    count nor suppress). Returns keep [M] bool."""

    def body(i, carry):
        keep, dropped = carry
        k = valid[i] & ~dropped[i]
        return keep.at[i].set(k), dropped | (k & over[i])

    m = valid.shape[0]
    keep, _ = jax.lax.fori_loop(0, m, body, (jnp.zeros(m, bool), jnp.zeros(m, bool)))
    return keep


def stage1_nms(boxes: jnp.ndarray, sid: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """facenet-pytorch's stage-1 NMS on score-sorted windows: 0.5 within each scale, then 0.7
    over the survivors of all scales. keep [M] bool."""
    iou = _iou(boxes)
    keep = greedy_nms((iou > 0.5) & (sid[:, None] == sid[None, :]), valid)
    return greedy_nms(iou > 0.7, keep)


def calibrate(boxes: jnp.ndarray, reg: jnp.ndarray, plus_one: bool) -> jnp.ndarray:
    """Box offsets applied (stage 1: width ``x2 - x1``; ``bbreg``: ``x2 - x1 + 1``), then squared
    (``rerec``); [..., 4]."""
    one = 1.0 if plus_one else 0.0
    w = boxes[..., 2] - boxes[..., 0] + one
    h = boxes[..., 3] - boxes[..., 1] + one
    b = boxes + reg * jnp.stack([w, h, w, h], axis=-1)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    side = jnp.maximum(w, h)
    x1 = b[..., 0] + w * 0.5 - side * 0.5
    y1 = b[..., 1] + h * 0.5 - side * 0.5
    return jnp.stack([x1, y1, x1 + side, y1 + side], axis=-1)


class Proposals(NamedTuple):
    """Stage 1 of one image, in the graph (all under ``stop_gradient``)."""

    boxes: jnp.ndarray  # [K, 4] float32 calibrated, squared
    valid: jnp.ndarray  # [K] bool: a stage-1 survivor at or above the hinge's threshold
    passing: jnp.ndarray  # [K] bool: ... and P-Net's own test (prob >= 0.6)
    n_passing: jnp.ndarray  # int32: windows with prob >= 0.6 (all of them)
    overflow: jnp.ndarray  # bool: passing windows beyond m, or passing survivors beyond k


def proposals(geom, sid, prob, logit, reg, kappa, k: int, m: int) -> Proposals:
    """Stage 1 of one image from its windows (``prob``, ``logit`` [N], ``reg`` [N, 4])."""
    passing = prob >= THRESHOLDS[0]
    cand = passing | (logit >= log_odds(THRESHOLDS[0]) - kappa)
    m = min(m, prob.shape[0])
    kk = min(k, m)
    top, idx = jax.lax.top_k(jnp.where(cand, logit, -jnp.inf), m)
    keep = stage1_nms(jnp.asarray(geom)[idx], jnp.asarray(sid)[idx], top > -jnp.inf)
    order = jnp.argsort(~keep, stable=True)[:kk]  # the survivors first, by score
    sel = idx[order]
    boxes = calibrate(jnp.asarray(geom)[sel], reg[sel], plus_one=False)
    valid = keep[order]
    n_pass = jnp.sum(passing).astype(jnp.int32)
    overflow = (n_pass > m) | (jnp.sum(keep & passing[idx]) > kk)
    pad = k - kk
    return Proposals(_sg(jnp.pad(boxes, ((0, pad), (0, 0)))), jnp.pad(valid, (0, pad)),
                     jnp.pad(valid & passing[sel], (0, pad)), n_pass, overflow)


def crop_weights(box: jnp.ndarray, n_img: int, size: int, axis: int):
    """The crop of facenet-pytorch (``pad``: truncate, clip to 1..n, take ``[a-1, b)``) along one
    axis, area-resized to ``size``: (start [size] int32, end [size] int32, ok bool) of each
    output's window in image coordinates."""
    a = jnp.maximum(jnp.trunc(box[axis]).astype(jnp.int32), 1)
    b = jnp.minimum(jnp.trunc(box[axis + 2]).astype(jnp.int32), n_img)
    n = b - a + 1
    ok = n > 0
    n = jnp.maximum(n, 1)
    i = jnp.arange(size, dtype=jnp.int32)
    start = (i * n) // size
    end = -((-(i + 1) * n) // size)
    return a - 1 + start, a - 1 + end, ok


class Integral(NamedTuple):
    """Summed-area tables of a batch [B, H+1, W+1, 3] (a zero first row and column) that give
    every rectangle's sum of ``x``: ``whole`` of the 8-bit levels ``round(255 x)`` in int32
    (exact), ``rest`` of the remainder ``x - whole / 255`` (|.| <= 1/510, so its float32 sums stay
    small), which carries the gradient."""

    whole: jnp.ndarray
    rest: jnp.ndarray


def _tables(vs: tuple) -> tuple:
    """Summed-area tables [B, H+1, W+1, C] of the arrays ``vs`` (each [B, H, W, C]), in one
    sequential scan over the rows and one over the columns (XLA's cumsum, a reduce-window, and
    ``associative_scan``'s strided slices are several times slower on CPU)."""
    b, h, w, c = vs[0].shape

    def body(carry, rows):
        carry = tuple(a + r for a, r in zip(carry, rows, strict=True))
        return carry, carry

    def scan(vs, n, m):  # prefix sums along axis 1 of [B, n, m, C]
        xs = tuple(jnp.moveaxis(v.reshape(b, n, m * c), 1, 0) for v in vs)
        _, out = jax.lax.scan(body, tuple(jnp.zeros((b, m * c), v.dtype) for v in vs), xs)
        return tuple(jnp.moveaxis(o, 0, 1).reshape(b, n, m, c) for o in out)

    vs = scan(vs, h, w)
    vs = scan(tuple(jnp.transpose(v, (0, 2, 1, 3)) for v in vs), w, h)
    return tuple(jnp.pad(jnp.transpose(v, (0, 2, 1, 3)), ((0, 0), (1, 0), (1, 0), (0, 0)))
                 for v in vs)


def integral(x: jnp.ndarray) -> Integral:
    """The :class:`Integral` of ``x`` [B, H, W, 3] (in [0, 1]; the 8-bit part is exact for
    images up to 8.4 M pixels)."""
    if x.shape[1] * x.shape[2] > (2**31 - 1) // 255:
        raise ValueError(f"integral: {x.shape[1]}x{x.shape[2]} is over the int32 tables' "
                         "8.4 M pixels (photos are downscaled to 2048 px before the attack)")
    q = jnp.round(_sg(x) * 255.0)
    return Integral(*_tables((q.astype(jnp.int32), x - q / 255.0)))


def crops_from(ii: Integral, boxes: jnp.ndarray, size: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Crops [B, K, size, size, 3] and ok [B, K] at ``boxes`` [B, K, 4] of the images whose
    :class:`Integral` is ``ii``: facenet-pytorch's crop (:func:`crop_weights`) area-resized to
    ``size``, each output pixel the mean of its integer window (4 corners of the tables)."""
    h, w = ii.rest.shape[1] - 1, ii.rest.shape[2] - 1

    def one(whole, rest, box):
        rs, re, ok_r = crop_weights(box, h, size, 1)
        cs, ce, ok_c = crop_weights(box, w, size, 0)
        r, c = jnp.stack([re, rs]), jnp.stack([ce, cs])

        def rect(t):  # [size, size, 3]: t[re, ce] - t[rs, ce] - t[re, cs] + t[rs, cs]
            g = t[r[:, :, None, None], c[None, None, :, :]]  # [2, size, 2, size, 3]
            return g[0, :, 0] - g[1, :, 0] - g[0, :, 1] + g[1, :, 1]

        area = ((re - rs)[:, None] * (ce - cs)[None, :]).astype(jnp.float32)[..., None]
        total = rect(whole).astype(jnp.float32) / 255.0 + rect(rest)
        return total / area, ok_r & ok_c

    per_image = jax.vmap(one, in_axes=(None, None, 0))
    return jax.vmap(per_image)(ii.whole, ii.rest, boxes)


def _net(judge, crops: jnp.ndarray, method: str):
    b, k = crops.shape[:2]
    out = judge.module.apply(judge.variables, crops.reshape(b * k, *crops.shape[2:]),
                             method=method)
    return jax.tree.map(lambda a: a.reshape(b, k, *a.shape[1:]), out)


class CascadeTerms(NamedTuple):
    """The in-graph cascade of a batch ([B] each): the hinge of each stage, whether a face
    survives, the highest P-Net window probability."""

    hinge_p: jnp.ndarray
    hinge_r: jnp.ndarray
    hinge_o: jnp.ndarray
    detected: jnp.ndarray  # bool: a face may be found (not certified hidden)
    max_prob: jnp.ndarray


def _pick(a: jnp.ndarray, idx: jnp.ndarray) -> jnp.ndarray:
    """``a`` [B, K, ...] at ``idx`` [B, J] along axis 1."""
    return jax.vmap(lambda v, i: v[i])(a, idx)


def face_regions(boxes) -> np.ndarray:
    """The ``faces`` input of one image from its clean detections ``boxes`` [N, 4] (``x1, y1,
    x2, y2``): [FACE_SLOTS, 4] float32, unused rows -1; all -1 (no regions: every window
    counts) when there are none or more than :data:`FACE_SLOTS`."""
    out = np.full((FACE_SLOTS, 4), -1.0, np.float32)
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if 0 < len(b) <= FACE_SLOTS:
        out[:len(b)] = b
    return out


def _grown(faces: jnp.ndarray, grow: float):
    """The face regions of ``faces`` [B, F, 4] grown ``grow`` times about their centres:
    (used [B, F] bool, lo [B, F, 2], hi [B, F, 2]) in ``x, y`` order."""
    f = jnp.asarray(faces, jnp.float32)
    used = (f[..., 2] > f[..., 0]) & (f[..., 3] > f[..., 1])
    c = (f[..., :2] + f[..., 2:]) * 0.5
    half = (f[..., 2:] - f[..., :2]) * (0.5 * grow)
    return used, c - half, c + half


def _or_everywhere(inside: jnp.ndarray, used: jnp.ndarray) -> jnp.ndarray:
    """``inside`` [B, ...] bool, all True for an image with no region (every row unused)."""
    none = ~jnp.any(used, axis=-1)
    return inside | none.reshape(none.shape + (1,) * (inside.ndim - 1))


def near_faces(boxes, faces: jnp.ndarray, grow: float = REGION_GROW,
               frac: float = NEAR_FRACTION) -> jnp.ndarray:
    """[B, N] float32: 1 for a box of ``boxes`` ([N, 4], the same for every image, or [B, N, 4])
    with at least ``frac`` of its area inside one of the image's face regions (``faces``
    [B, F, 4], grown ``grow`` times about their centres), else 0; all 1 for an image with no
    region (every row unused)."""
    used, lo, hi = _grown(faces, grow)
    lo, hi = lo[:, None], hi[:, None]  # [B, 1, F, 2]
    g = jnp.asarray(boxes)
    g = jnp.broadcast_to(g, (used.shape[0], *g.shape[-2:]))[:, :, None, :]  # [B, N, 1, 4]
    iw = jnp.maximum(jnp.minimum(g[..., 2], hi[..., 0]) - jnp.maximum(g[..., 0], lo[..., 0]),
                     0.0)
    ih = jnp.maximum(jnp.minimum(g[..., 3], hi[..., 1]) - jnp.maximum(g[..., 1], lo[..., 1]),
                     0.0)
    area = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    near = jnp.any((iw * ih >= frac * area) & used[:, None, :], axis=-1)  # [B, N]
    return _or_everywhere(near, used).astype(jnp.float32)


def region_mask(faces: jnp.ndarray, hw: tuple[int, int], grow: float = REGION_GROW
                ) -> jnp.ndarray:
    """[B, H, W, 1] bool: the pixels whose centres lie inside one of the image's face regions
    (``faces`` [B, F, 4], grown ``grow`` times about their centres); all True for an image with
    none."""
    used, lo, hi = _grown(faces, grow)
    ys = jnp.arange(hw[0], dtype=jnp.float32)[None, :, None] + 0.5
    xs = jnp.arange(hw[1], dtype=jnp.float32)[None, :, None] + 0.5
    iny = (ys >= lo[:, None, :, 1]) & (ys < hi[:, None, :, 1]) & used[:, None]  # [B, H, F]
    inx = (xs >= lo[:, None, :, 0]) & (xs < hi[:, None, :, 0])  # [B, W, F]
    inside = jnp.any(iny[:, :, None, :] & inx[:, None, :, :], axis=-1)  # [B, H, W]
    return _or_everywhere(inside, used)[..., None]


def chain_hinges(hr: jnp.ndarray, ho: jnp.ndarray, io: jnp.ndarray, counts_o: jnp.ndarray
                 ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The R-Net and O-Net terms [B] of the cascade as a chain: a proposal is cut when R-Net OR
    O-Net rejects it. ``hr`` [B, K]: each proposal's R-Net hinge (0 where it does not count);
    ``ho`` [B, J]: the O-Net hinge of the proposals ``io`` [B, J] (indices into K) that reach
    O-Net, counted where ``counts_o`` [B, J]. A proposal that reaches O-Net (and counts there)
    costs the smaller of its two hinges (the O-Net term), any other its R-Net hinge (the R-Net
    term)."""
    b = hr.shape[0]
    in_o = jnp.zeros(hr.shape, bool).at[jnp.arange(b)[:, None], io].set(counts_o)
    hinge_r = jnp.sum(jnp.where(in_o, 0.0, hr), axis=1)
    hinge_o = jnp.sum(jnp.where(counts_o, jnp.minimum(_pick(hr, io), ho), 0.0), axis=1)
    return hinge_r, hinge_o


def _hinge(logit, threshold: float, kappa):
    """A stage's hinge: how far the log-odds ``logit`` reach above ``threshold``'s, less
    ``kappa``."""
    return jax.nn.relu(logit - (log_odds(threshold) - kappa))


def _stage1(judge, x, kappa, k: int, m: int, faces=None):
    """P-Net over the pyramid: (hinge_p [B], max prob [B], :class:`Proposals` batched); with
    ``faces`` [B, F, 4] the hinge counts only the windows :func:`near_faces`."""
    b, h, w = x.shape[:3]
    mod = judge.module
    geom, sid = window_geometry(h, w, mod.min_face, mod.factor)
    levels = mod.apply(judge.variables, x, method="pyramid")
    prob = jnp.concatenate([lv.prob.reshape(b, -1) for lv in levels], axis=1)
    logit = jnp.concatenate([lv.logit.reshape(b, -1) for lv in levels], axis=1)
    reg = jnp.concatenate([lv.reg.reshape(b, -1, 4) for lv in levels], axis=1)
    hinge = _hinge(logit, THRESHOLDS[0], kappa)
    if faces is not None:
        hinge = hinge * near_faces(geom, faces)
    hinge = jnp.sum(hinge, axis=1)
    prop = jax.vmap(lambda p, lg, r: proposals(geom, sid, p, lg, r, kappa, k, m))(
        _sg(prob), _sg(logit), _sg(reg))
    return hinge, jnp.max(prob, axis=1), prop


#: The crop variants of :func:`jittered` besides the box itself: (shift x, shift y, scale), the
#: shifts in units of the box side (objective ``"faces_jitter"``).
JITTERS = ((0.0, 0.0, 0.85), (0.0, 0.0, 1.0 / 0.85), (0.08, 0.08, 1.0), (-0.08, -0.08, 1.0))


def jittered(boxes: jnp.ndarray, jitters) -> jnp.ndarray:
    """``boxes`` [B, K, 4] moved and scaled about their centres by each of ``jitters`` ->
    [B, K * len(jitters), 4] (variant-major)."""
    c = (boxes[..., :2] + boxes[..., 2:]) * 0.5
    side = boxes[..., 2:] - boxes[..., :2]
    out = []
    for dx, dy, sc in jitters:
        cc = c + side * jnp.asarray([dx, dy], jnp.float32).reshape((1,) * (side.ndim - 1) + (2,))
        half = side * (0.5 * sc)
        out.append(jnp.concatenate([cc - half, cc + half], axis=-1))
    return jnp.concatenate(out, axis=1)


def _stage_hinge(judge, ii, boxes, logit, counts, size: int, method: str, threshold: float,
                 kappa, jitter: bool):
    """[B, K]: R-Net's or O-Net's hinge on each box of ``boxes`` [B, K, 4] whose crop gave
    ``logit`` [B, K], where ``counts``. With ``jitter``, the mean over that crop and the box's
    :data:`JITTERS` crops (``method`` on ``size``-pixel crops of ``ii``): after a resize, the
    delivered photo's proposals, so R-Net's and O-Net's crops, fall a few pixels away from those
    of the attacked image."""
    h = _hinge(logit, threshold, kappa)
    if jitter and JITTERS:
        b, k = boxes.shape[:2]
        c, ok = crops_from(ii, _sg(jittered(boxes, JITTERS)), size)
        more = _hinge(_net(judge, c, method).logit, threshold, kappa) * ok
        h = (h + jnp.sum(more.reshape(b, len(JITTERS), k), axis=1)) / (1 + len(JITTERS))
    return jnp.where(counts, h, 0.0)


def cascade_terms(judge, x: jnp.ndarray, kappa, k: int = K_PROPOSALS, m: int = M_CANDIDATES,
                  k_onet: int = K_ONET, faces=None, chain: bool = False,
                  jitter: bool = False) -> CascadeTerms:
    """The cascade of judge ``mtcnn`` on ``x`` [B, H, W, 3] in [0, 1] (see the module doc):
    ``m`` windows enter the stage-1 NMS, ``k`` survivors reach R-Net, the ``k_onet`` with the
    highest R-Net log-odds reach O-Net; with ``jitter`` R-Net's and O-Net's hinges are
    :func:`_stage_hinge`'s jittered mean (the detection and P-Net's term are the same)."""
    b = x.shape[0]
    if len(window_geometry(*x.shape[1:3], judge.module.min_face, judge.module.factor)[0]) == 0:
        zero = jnp.zeros(b, jnp.float32)  # too small for one window: nothing can be found
        return CascadeTerms(zero, zero, zero, jnp.zeros(b, bool), zero)
    kappa = jnp.asarray(kappa, jnp.float32)
    if faces is not None:
        # Only the pixels of the face regions take a gradient: exactly 0 elsewhere (the prefix
        # sums of the crops and the pyramid leave rounding-sized gradients everywhere, which a
        # sign step would turn into full steps).
        x = jnp.where(region_mask(faces, x.shape[1:3]), x, _sg(x))
    hinge_p, max_prob, prop = _stage1(judge, x, kappa, k, m, faces)
    ii = integral(x)  # one pair of tables for both stages' crops
    c24, ok24 = crops_from(ii, prop.boxes, RNET_HW)
    r = _net(judge, c24, "rnet")
    live = prop.valid & ok24
    counts = live  # the hinges count the proposals near a face region only
    if faces is not None:
        counts = live & (near_faces(prop.boxes, faces) > 0)
    hr = _stage_hinge(judge, ii, prop.boxes, r.logit, counts, RNET_HW, "rnet", THRESHOLDS[1],
                      kappa, jitter)
    r_pass = prop.passing & ok24 & (r.prob > THRESHOLDS[1])
    k_onet = min(k_onet, r.logit.shape[1])
    _, io = jax.lax.top_k(jnp.where(live, r.logit, -jnp.inf), k_onet)
    boxes48 = _sg(calibrate(_pick(prop.boxes, io), _pick(r.reg, io), plus_one=True))
    c48, ok48 = crops_from(ii, boxes48, ONET_HW)
    o = _net(judge, c48, "onet")
    counts_o = _pick(counts, io) & ok48
    ho = _stage_hinge(judge, ii, boxes48, o.logit, counts_o, ONET_HW, "onet", THRESHOLDS[2],
                      kappa, jitter)
    if chain:
        hinge_r, hinge_o = chain_hinges(hr, ho, io, counts_o)
    else:
        hinge_r, hinge_o = jnp.sum(hr, axis=1), jnp.sum(ho, axis=1)
    found = _pick(r_pass, io) & ok48 & (o.prob > THRESHOLDS[2])
    overflow = prop.overflow | (jnp.sum(r_pass, axis=1) > k_onet)
    detected = (prop.n_passing > 0) & (overflow | jnp.any(found, axis=1))
    return CascadeTerms(hinge_p, hinge_r, hinge_o, detected, max_prob)


def faces_objective(k: int = K_PROPOSALS, m: int = M_CANDIDATES, k_onet: int = K_ONET,
                    chain: bool = False, jitter: bool = False):
    """An objective factory hiding faces (:func:`cascade_terms` with ``k``, ``m``, ``k_onet``,
    ``chain``, ``jitter``; ``"faces"`` is ``faces_objective()``, ``"faces_chain"`` is
    ``faces_objective(chain=True)``, ``"faces_jitter"`` is ``faces_objective(jitter=True)``)."""

    def factory(cfg) -> Objective:
        def evaluate(models, x, aux, cfg):
            t = cascade_terms(models["judge"], x, cfg.kappa, k, m, k_onet, aux.get("faces"),
                              chain, jitter)
            loss = PNET_WEIGHT * t.hinge_p + t.hinge_r + t.hinge_o
            return Terms(loss, ~t.detected, t.max_prob)

        return Objective(evaluate, output="score", prepare=None, inputs=(FACES_INPUT,))

    return factory


register("faces")(faces_objective())
register("faces_chain")(faces_objective(chain=True))
register("faces_jitter")(faces_objective(jitter=True))
