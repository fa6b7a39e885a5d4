"""The PyTorch originals of ppjax's attacks, for speed comparisons (``ppjax bench`` picks this
module up from a checkout; ``benchmarks.methods_speed`` uses it directly).

* gradient attacks and Square: torchattacks 3.5.1 with its defaults as ppjax's presets copy them
  (MI-FGSM with DI+TI+VMI: torchattacks' TIFGSM input diversity and kernel with VMIFGSM's variance
  term, which torchattacks has only as separate classes);
* ACE and PerC-AL: the compact references written from the authors' code
  (``tests/torch_attack_ref.py``);
* quality camouflage: the 2020 organisers' I-FGSM (MSE toward a score of 30, eps = step = 0.05
  in KonCept512's [-1, 1] input space, 20 steps);
* PGD with the appeal term: the L-inf PGD loop on cross-entropy minus ``w`` times NIMA's mean
  score (image resized bilinearly with antialiasing to 224x224, as nima.pytorch does).

Each runs in torch's best configuration for the CPU at hand: channels-last, bf16 autocast where
the CPU has native bf16 kernels (the same test as ppjax's, :func:`ppjax.bench.best_dtype`), all
CPU threads. The judges are the torch replicas of ``benchmarks/torch_ref`` with the ppjax judge's
own (stand-in) weights.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import torch_models
from ppjax.bench import Engine, peak_memory_mib, reset_peak_memory, timed_first

EPS = 8 / 255
APPEAL_WEIGHT = 0.5  # ppjax.attacks.presets.APPEAL_WEIGHT


class Judge(nn.Module):
    """A torch replica taking NCHW [0, 1] images (torchattacks' convention): normalisation,
    channels-last, bf16 autocast when ``bf16``; float32 outputs. ``bonus``: a [B] label vector
    whose logit gets +1e4 (an image that can never be fooled: every query of Square runs)."""

    def __init__(self, net: nn.Module, mean, std, bf16: bool):
        super().__init__()
        self.net = net.eval().to(memory_format=torch.channels_last)
        self.bf16 = bf16
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.bonus = None
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        if x.requires_grad:  # the gradient comes back channels-last; torchattacks' PGDL2 .view()s it
            x.register_hook(lambda g: g.contiguous())
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            out = self.net(x)
        out = out.float()
        if self.bonus is not None and out.shape[0] == self.bonus.shape[0]:
            out = out + 1e4 * F.one_hot(self.bonus, out.shape[-1]).float()
        return out


class NHWC(nn.Module):
    """NHWC [0, 1] in (the references' convention), the NCHW judge inside."""

    def __init__(self, judge: nn.Module):
        super().__init__()
        self.judge = judge

    def forward(self, x):
        return self.judge(x.permute(0, 3, 1, 2))


def torch_judge(judge_name: str, judge) -> Judge:
    """The torch replica of ``judge_name`` with ``judge``'s weights, in torch's best setup."""
    from ppjax.bench import best_dtype

    torch.set_num_threads(os.cpu_count() or 1)
    builders = {"resnet50_places365": lambda: torch_models.resnet50(365),
                "nima_mobilenetv2": torch_models.nima_mobilenet_v2,
                "koncept512": torch_models.koncept512}
    if judge_name not in builders:
        raise KeyError(f"no torch replica of judge {judge_name!r}")
    net = torch_models.load_from_judge(builders[judge_name](), judge)
    norm = ((0.5,) * 3, (0.5,) * 3) if judge_name == "koncept512" else (
        torch_models.IMAGENET_MEAN, torch_models.IMAGENET_STD)
    return Judge(net, *norm, bf16=best_dtype() == "bfloat16")


class MiDiTiVmi:
    """MI-FGSM with DI, TI and VMI together: torchattacks 3.5.1's TIFGSM (input diversity,
    Gaussian kernel, momentum) with VMIFGSM's variance term (N neighbours in the beta * eps
    ball), each exactly as torchattacks writes it."""

    def __init__(self, model, eps=EPS, alpha=0.8 / 255, steps=10, n=5, beta=1.5):
        import torchattacks

        self.ti = torchattacks.TIFGSM(model, eps=eps, alpha=alpha, steps=steps, decay=1.0,
                                      resize_rate=0.9, diversity_prob=0.5, random_start=False)
        self.model, self.eps, self.alpha, self.steps, self.n, self.beta = (
            model, eps, alpha, steps, n, beta)

    def _grad(self, x, labels):
        x = x.detach().requires_grad_(True)
        cost = F.cross_entropy(self.model(self.ti.input_diversity(x)), labels)
        return torch.autograd.grad(cost, x)[0]

    def __call__(self, images, labels):
        kernel = self.ti.stacked_kernel
        momentum = torch.zeros_like(images)
        v = torch.zeros_like(images)
        adv = images.clone()
        for _ in range(self.steps):
            g_raw = self._grad(adv, labels)
            g = F.conv2d(g_raw + v, kernel, stride=1, padding="same", groups=3)
            g = g / torch.mean(torch.abs(g), dim=(1, 2, 3), keepdim=True) + momentum
            momentum = g
            gv = sum(self._grad(adv + torch.empty_like(images).uniform_(
                -self.eps * self.beta, self.eps * self.beta), labels) for _ in range(self.n))
            v = gv / self.n - g_raw
            adv = adv.detach() + self.alpha * g.sign()
            adv = torch.clamp(images + torch.clamp(adv - images, -self.eps, self.eps), 0, 1)
        return adv


class CWEveryStep:
    """torchattacks 3.5.1's CW (L2: Adam on ``w`` in tanh space, cost = summed squared L2 +
    ``c`` * its margin ``f``, the best fooling image by L2 kept) with its abort off. The original
    returns as soon as the batch's cost rises at a check (every ``steps // 10`` steps: every step
    at 10), so a throughput run of it counts iterations that never ran; this one runs them all.
    Its pieces (``tanh_space``, ``inverse_tanh_space``, ``get_logits``, ``f``) are torchattacks'
    own."""

    def __init__(self, model, c=1.0, kappa=0.0, steps=10, lr=0.01):
        import torchattacks

        self.cw = torchattacks.CW(model, c=c, kappa=kappa, steps=steps, lr=lr)

    def __call__(self, images, labels):
        cw = self.cw
        w = cw.inverse_tanh_space(images).detach().requires_grad_(True)
        best, best_l2 = images.clone(), torch.full((len(images),), 1e10)
        opt = torch.optim.Adam([w], lr=cw.lr)
        for _ in range(cw.steps):
            adv = cw.tanh_space(w)
            l2 = ((adv - images) ** 2).flatten(1).sum(1)
            out = cw.get_logits(adv)
            cost = l2.sum() + cw.c * cw.f(out, labels).sum()
            opt.zero_grad()
            cost.backward()
            opt.step()
            keep = (out.argmax(1) != labels) & (best_l2 > l2.detach())
            best_l2 = torch.where(keep, l2.detach(), best_l2)
            best = torch.where(keep.view(-1, 1, 1, 1), adv.detach(), best)
        return best


def organisers_ifgsm(model: Judge, x, steps: int = 20, eps: float = 0.05, target: float = 30.0):
    """The 2020 organisers' I-FGSM on KonCept512: sign steps of ``eps`` in the normalised
    [-1, 1] space on ``(score - target)^2``, projected on the eps ball and [-1, 1]. ``x``: NCHW
    [0, 1]; returns NCHW [0, 1]."""
    x0 = x * 2 - 1
    xn = x0.clone()
    for _ in range(steps):
        xn = xn.detach().requires_grad_(True)
        score = model((xn + 1) / 2).reshape(-1)  # the judge normalises again: same input
        (g,) = torch.autograd.grad(((score - target) ** 2).sum(), xn)
        xn = xn.detach() - eps * g.sign()
        xn = torch.clamp(x0 + torch.clamp(xn - x0, -eps, eps), -1, 1)
    return (xn.detach() + 1) / 2


def pgd_appeal(model: Judge, nima: Judge, x, labels, steps=10, eps=EPS, alpha=2 / 255,
               weight=APPEAL_WEIGHT):
    """L-inf PGD (random start) on ``CE - weight * NIMA mean score`` (NIMA sees the image
    resized to 224x224, bilinear with antialiasing). NCHW [0, 1] in and out."""
    bins = torch.arange(1, 11, dtype=torch.float32)
    adv = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        small = F.interpolate(adv, size=(224, 224), mode="bilinear", antialias=True,
                              align_corners=False)
        appeal = (nima(small) * bins).sum(-1)
        loss = F.cross_entropy(model(adv), labels, reduction="sum") + weight * appeal.sum()
        (g,) = torch.autograd.grad(loss, adv)
        adv = adv.detach() + alpha * g.sign()
        adv = torch.clamp(x + torch.clamp(adv - x, -eps, eps), 0, 1)
    return adv


def attack_fn(attack: str, model: Judge, steps: int, early_stop: bool = False, appeal=None):
    """``fn(images NCHW [0, 1], labels) -> adversarial images`` of ``attack``'s original run for
    ``steps`` iterations. ``early_stop``: keep the original's own stopping (TTP); otherwise the
    stopping rules are off so that every image runs every iteration (throughput)."""
    import torchattacks

    from tests import torch_attack_ref as ref

    nhwc = NHWC(model)

    def nchw(fn):
        return lambda x, y: torch.as_tensor(fn(x.permute(0, 2, 3, 1).numpy(), y.numpy())[
            "images"]).permute(0, 3, 1, 2)

    table = {
        "fgsm": lambda: torchattacks.FGSM(model, eps=EPS),
        "ifgsm": lambda: torchattacks.BIM(model, eps=EPS, alpha=1 / 255, steps=steps),
        "pgd": lambda: torchattacks.PGD(model, eps=EPS, alpha=2 / 255, steps=steps,
                                        random_start=True),
        "pgd_l2": lambda: torchattacks.PGDL2(model, eps=1.0, alpha=0.25, steps=steps,
                                             random_start=True),
        "mifgsm": lambda: torchattacks.MIFGSM(model, eps=EPS, alpha=0.8 / 255, steps=steps,
                                              decay=1.0),
        "mifgsm/all": lambda: MiDiTiVmi(model, steps=steps),
        "cw_l2": lambda: (torchattacks.CW if early_stop else CWEveryStep)(
            model, c=1.0, kappa=0.0, steps=steps, lr=0.01),
        "square": lambda: torchattacks.Square(model, norm="Linf", eps=EPS, n_queries=steps,
                                              p_init=0.8, loss="margin", resc_schedule=True),
        "ace": lambda: nchw(lambda x, y: ref.ace(nhwc, x, y, steps,
                                                 plateau=25 if early_stop else 0)),
        "perc_al": lambda: nchw(lambda x, y: ref.perc_al(nhwc, x, y, steps)),
        "camouflage": lambda: (lambda x, y: organisers_ifgsm(model, x, steps)),
        "camouflage/pp2020_baseline": lambda: (lambda x, y: organisers_ifgsm(model, x, steps)),
    }
    if appeal is not None:
        if attack != "pgd":
            raise KeyError(f"no torch original of {attack!r} with an appeal term")
        return lambda x, y: pgd_appeal(model, appeal, x, y, steps)
    if attack not in table:
        raise KeyError(f"no torch original of {attack!r}")
    return table[attack]()


def engine(attack: str, judge_name: str, judge, x, labels, steps: int,
           appeal: tuple[str, object] | None = None, judged: bool = False) -> Engine:
    """An :class:`ppjax.bench.Engine` running ``attack``'s torch original on ``x`` (NHWC [0, 1]
    numpy) for ``steps`` iterations of every image. ``appeal``: ``(judge name, ppjax judge)`` of
    the NIMA for PGD's appeal term. ``judged``: the call also judges its result (one forward
    pass of the judge, as every ppjax call does to report success)."""
    model = torch_judge(judge_name, judge)
    nima = torch_judge(*appeal) if appeal else None
    fn = attack_fn(attack, model, steps, appeal=nima)
    xt = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(np.asarray(labels if labels is not None else np.zeros(len(x)),
                                     np.int64))
    if attack == "square":  # never fooled: every query runs for every image
        model.bonus = yt

    def run():
        adv = fn(xt, yt)
        if judged:
            with torch.no_grad():
                model(adv)
        return adv

    reset_peak_memory()
    first = timed_first(run)
    n = 1 if attack == "fgsm" else steps
    return Engine(f"torch {attack}" + ("+appeal" if appeal else "") + (" judged" if judged else ""),
                  "torch", run, len(x) * n, first, peak_memory_mib())
