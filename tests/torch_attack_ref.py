"""Compact torch references of ACE (Zhao, Liu & Larson, BMVC 2020, and its journal variant) and
PerC-AL (CVPR 2020), written from the papers' algorithms as ``../shared/docs/TASKS.md`` states
them, independently of ppjax's loop: plain tensors, ``torch.autograd``, Python loops.

Images are NHWC float32 in [0, 1] (as ppjax's); ``model(x)`` takes NHWC [0, 1] images and
returns logits. Both references judge the 8-bit rounded copy of the continuous iterate, keep the
best rounded success per image and return the clean input for an image never fooled.
Documented ppjax choices they share: theta >= max(theta_min, 1e-6); a gradient of 0 at the
singular points of CIEDE2000 (sqrt(0), atan2(0, 0)).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class NHWCClassifier(nn.Module):
    """A torchvision-style classifier on NHWC [0, 1] input with ImageNet normalisation."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x.permute(0, 3, 1, 2) - self.mean) / self.std)


def round8(x):
    return torch.round(x * 255.0).clamp(0, 255) / 255.0


def margin(z, labels):
    """``z_y - max_{j != y} z_j`` per image."""
    zy = z.gather(1, labels[:, None])[:, 0]
    other = z.scatter(1, labels[:, None], float("-inf")).max(1).values
    return zy - other


# ----------------------------------------------------------------------------- CIEDE2000


def _sqrt0(x):
    pos = x > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, x, torch.ones_like(x))), torch.zeros_like(x))


def rgb_to_lab(x):
    """sRGB [..., 3] in [0, 1] -> CIELAB (D65), IEC 61966-2-1 and CIE 15."""
    lin = torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    m = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                      [0.0193339, 0.1191920, 0.9503041]], dtype=x.dtype)
    xyz = lin @ m.T / torch.tensor([0.95047, 1.0, 1.08883], dtype=x.dtype)
    d = 6.0 / 29.0
    f = torch.where(xyz > d**3, xyz.clamp(min=d**3) ** (1.0 / 3.0), xyz / (3 * d * d) + 4.0 / 29.0)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                        200 * (f[..., 1] - f[..., 2])], -1)


def ciede2000(lab1, lab2):
    """CIEDE2000 (Sharma, Wu & Dalal 2005), kL = kC = kH = 1: [..., 3] x 2 -> [...]."""
    l1, a1, b1 = lab1.unbind(-1)
    l2, a2, b2 = lab2.unbind(-1)
    cb7 = ((_sqrt0(a1 * a1 + b1 * b1) + _sqrt0(a2 * a2 + b2 * b2)) / 2) ** 7
    g = 0.5 * (1 - _sqrt0(cb7 / (cb7 + 25.0**7)))
    a1p, a2p = a1 * (1 + g), a2 * (1 + g)
    c1, c2 = _sqrt0(a1p * a1p + b1 * b1), _sqrt0(a2p * a2p + b2 * b2)

    def hue(b, a):
        z = (a == 0) & (b == 0)
        h = torch.atan2(torch.where(z, torch.zeros_like(b), b), torch.where(z, torch.ones_like(a), a))
        return torch.remainder(torch.rad2deg(torch.where(z, torch.zeros_like(h), h)), 360.0)

    h1, h2 = hue(b1, a1p), hue(b2, a2p)
    zero_c = (c1 * c2) == 0
    dh = h2 - h1
    dh = torch.where(dh > 180, dh - 360, torch.where(dh < -180, dh + 360, dh))
    dh = torch.where(zero_c, torch.zeros_like(dh), dh)
    dH = 2 * _sqrt0(c1 * c2) * torch.sin(torch.deg2rad(dh) / 2)
    lm, cm = (l1 + l2) / 2, (c1 + c2) / 2
    hs = h1 + h2
    hm = torch.where((h1 - h2).abs() <= 180, hs / 2, torch.where(hs < 360, (hs + 360) / 2,
                                                                  (hs - 360) / 2))
    hm = torch.where(zero_c, hs, hm)
    t = (1 - 0.17 * torch.cos(torch.deg2rad(hm - 30)) + 0.24 * torch.cos(torch.deg2rad(2 * hm))
         + 0.32 * torch.cos(torch.deg2rad(3 * hm + 6)) - 0.20 * torch.cos(torch.deg2rad(4 * hm - 63)))
    sl = 1 + 0.015 * (lm - 50) ** 2 / torch.sqrt(20 + (lm - 50) ** 2)
    sc, sh = 1 + 0.045 * cm, 1 + 0.015 * cm * t
    rt = -torch.sin(torch.deg2rad(60 * torch.exp(-(((hm - 275) / 25) ** 2)))) * 2 * _sqrt0(
        cm**7 / (cm**7 + 25.0**7))
    tl, tc, th = (l2 - l1) / sl, (c2 - c1) / sc, dH / sh
    return _sqrt0(tl * tl + tc * tc + th * th + rt * tc * th)


def perc_distance(x, x0):
    """PerC: L2 norm over pixels of the CIEDE2000 map, per image [B]."""
    d = ciede2000(rgb_to_lab(x0), rgb_to_lab(x))
    return _sqrt0((d * d).flatten(1).sum(1))


def _unit(g):
    n = g.flatten(1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    return torch.where(n > 0, g / torch.where(n > 0, n, torch.ones_like(n)), torch.zeros_like(g))


# ----------------------------------------------------------------------------- PerC-AL


def perc_al(model, x0, labels, steps, alpha_l=1.0, alpha_c=0.5, kappa=0.0, targets=None,
            dtype=torch.float32, trace=None):
    """PerC-AL: a continuous iterate; while its 8-bit copy is not adversarial, a step of
    cosine-annealed size alpha_l (-> alpha_l / 100) along the L2-normalised cross-entropy
    gradient; once adversarial, a step of size alpha_c (-> alpha_c / 10) down the L2-normalised
    gradient of the PerC distance; clamp to [0, 1]. ``targets``: targeted (success = top-1 ==
    target) instead of untargeted (success = top-1 != label, and margin <= -kappa if kappa > 0).
    ``dtype``: the arithmetic (float64 with a float64 ``model`` measures float32 rounding).
    ``trace``: a list that receives, per iteration t = 0..steps, ``(delta_t, adv_t, edge_t)``:
    the continuous perturbation, the judgement of its 8-bit copy and that copy's signed distance
    to the decision (``margin + kappa`` untargeted, ``max_{j != target} z_j - z_target``
    targeted; adversarial where <= 0), as numpy.
    Returns dict(images, success, distortion) as numpy."""
    x0 = torch.as_tensor(np.asarray(x0), dtype=dtype)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    tgt = None if targets is None else torch.as_tensor(np.asarray(targets), dtype=torch.long)
    b = x0.shape[0]
    delta = torch.zeros_like(x0)
    best_x, best_d = x0.clone(), torch.full((b,), float("inf"), dtype=dtype)
    succ_any = torch.zeros(b, dtype=torch.bool)
    lmin, cmin = alpha_l / 100, alpha_c / 10
    for t in range(steps + 1):
        x8 = round8(x0 + delta)
        with torch.no_grad():
            z8 = model(x8)
            if tgt is not None:
                adv = z8.argmax(1) == tgt
            else:
                adv = z8.argmax(1) != labels
                if kappa > 0:
                    adv = adv & (margin(z8, labels) <= -kappa)
            d8 = perc_distance(x8, x0)
            if trace is not None:
                edge = -margin(z8, tgt) if tgt is not None else margin(z8, labels) + kappa
                trace.append((delta.numpy().copy(), adv.numpy().copy(), edge.numpy().copy()))
        take = adv & (d8 <= best_d)
        best_x[take], best_d[take] = x8[take], d8[take]
        succ_any |= adv
        if t == steps:
            break
        cos = 1 + math.cos(math.pi * t / steps)
        a_l = lmin + 0.5 * (alpha_l - lmin) * cos
        a_c = cmin + 0.5 * (alpha_c - cmin) * cos
        d = delta.clone().requires_grad_(True)
        z = model(x0 + d)
        ce = nn.functional.cross_entropy(z, labels if tgt is None else tgt, reduction="sum")
        g_ce = torch.autograd.grad(ce if tgt is None else -ce, d)[0]
        d2 = delta.clone().requires_grad_(True)
        g_col = torch.autograd.grad(perc_distance(x0 + d2, x0).sum(), d2)[0]
        step = torch.where(adv.view(-1, 1, 1, 1), -a_c * _unit(g_col), a_l * _unit(g_ce))
        delta = (x0 + delta + step).clamp(0, 1) - x0
    return {"images": best_x.numpy(), "success": succ_any.numpy(),
            "distortion": torch.where(succ_any, best_d, torch.zeros_like(best_d)).numpy()}


# ----------------------------------------------------------------------------- ACE


def ace_filter(x0, theta):
    """``CF(x) = (K / sum(theta)) sum_k clamp(x - k/K, 0, 1/K) theta_k`` per channel, as the
    paper writes it (a sum over the K pieces). x0: [B, H, W, 3]; theta: [B, 3, K]."""
    k = theta.shape[-1]
    knots = torch.arange(k, dtype=x0.dtype) / k
    pieces = (x0[..., None] - knots).clamp(0, 1.0 / k)  # [B, H, W, 3, K]
    th = theta[:, None, None]  # [B, 1, 1, 3, K]
    return k * (pieces * th).sum(-1) / theta.sum(-1)[:, None, None]


def ace(model, x0, labels, steps, k=64, lam=5.0, lr=0.01, kappa=0.0, plateau=25,
        theta_min=0.0, theta_max=1e9, journal=False, b1=0.9, b2=0.999, eps=1e-8):
    """ACE. BMVC (``journal=False``): Adam (lr) on ``max(margin, -kappa) + lam * sum(theta /
    sum(theta) - 1/K)^2`` at the continuous filtered image, theta clamped after every step, the
    least-regularised 8-bit success kept, and the original's ``abort_early`` made per image:
    every ``plateau`` iterations an image whose loss did not fall stops. Journal
    (``journal=True``): steps of size ``lr`` along the L2-normalised gradient of the margin
    (``lam`` = 0 there), theta in [theta_min, theta_max], the latest success kept.
    Returns dict(images, success, distortion (= the regulariser), steps) as numpy."""
    x0 = torch.as_tensor(np.asarray(x0), dtype=torch.float32)
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    b = x0.shape[0]
    theta = torch.full((b, 3, k), 1.0 / k)
    m_ad, v_ad = torch.zeros_like(theta), torch.zeros_like(theta)
    active = torch.ones(b, dtype=torch.bool)
    used = torch.zeros(b, dtype=torch.long)
    prev = torch.full((b,), float("inf"))
    best_x, best_r = x0.clone(), torch.full((b,), float("inf"))
    succ_any = torch.zeros(b, dtype=torch.bool)
    lo = max(theta_min, 1e-6)

    def reg(th):
        p = th / th.sum(-1, keepdim=True)
        return ((p - 1.0 / k) ** 2).sum((1, 2))

    for t in range(steps + 1):
        th = theta.clone().requires_grad_(True)
        x = ace_filter(x0, th)
        per = margin(model(x), labels).clamp(min=-kappa) + lam * reg(th)
        g = torch.autograd.grad(per.sum(), th)[0]
        per = per.detach()
        x8 = round8(x.detach())
        with torch.no_grad():
            adv = (margin(model(x8), labels) < -kappa) & active
            r = reg(theta)
        take = adv & ((r <= best_r) | journal)
        best_x[take], best_r[take] = x8[take], r[take]
        succ_any |= adv
        stop = torch.zeros(b, dtype=torch.bool)
        if plateau and not journal and t > 0 and t % plateau == 0:
            stop = active & ~(per < prev)
            prev = torch.where(active, per, prev)
        elif t == 0:
            prev = per
        move = active & ~stop & (t < steps)
        if journal:
            new = theta - lr * _unit(g)
        else:
            m_ad = b1 * m_ad + (1 - b1) * g
            v_ad = b2 * v_ad + (1 - b2) * g * g
            mh, vh = m_ad / (1 - b1 ** (t + 1)), v_ad / (1 - b2 ** (t + 1))
            new = theta - lr * mh / (vh.sqrt() + eps)
        new = new.clamp(lo, theta_max)
        theta = torch.where(move.view(-1, 1, 1), new, theta)
        used += move.long()
        active = move
        if not bool(active.any()):
            break
    return {"images": best_x.numpy(), "success": succ_any.numpy(),
            "distortion": torch.where(succ_any, best_r, torch.zeros(b)).numpy(),
            "steps": used.numpy()}
