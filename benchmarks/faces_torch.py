"""The torch reference of the faces attack, for ``benchmarks.faces``'s ``ratio_vs_torch``.

The same attack as ppjax's ``faces/plain`` preset, written in torch on facenet-pytorch 2.6.0's own
``PNet``/``RNet``/``ONet`` (its trained weights): the image pyramid by ``interpolate(mode=
"area")`` as facenet-pytorch builds it; every P-Net window's face probability pushed below the
P-Net threshold minus the margin ``kappa`` in log-odds (hinge, summed); the clean image's R-Net
and O-Net proposals
(the same fixed boxes ppjax uses) cropped, area-resized to 24 and 48 and pushed below their
thresholds minus the margin; MI-FGSM (L1-normalised gradient, momentum 1, sign step) in an
Linf ball. No EOT on either side (a torch differentiable JPEG would be a second implementation
to trust), so the ratio compares the networks, the pyramid and the step.

facenet-pytorch imports torchvision for NMS only; ``tests/facenet_shim.py`` supplies it.
"""

from __future__ import annotations

import time

import numpy as np

THRESHOLDS = (0.6, 0.7, 0.7)


def nets():
    """facenet-pytorch's P-Net, R-Net, O-Net with their packaged weights, in eval mode."""
    from tests.facenet_shim import install

    install()
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet

    return PNet().eval(), RNet().eval(), ONet().eval()


def scales(h: int, w: int, min_face: int = 20, factor: float = 0.709) -> list[float]:
    """facenet-pytorch's pyramid scales (``detect_face``)."""
    m = 12.0 / min_face
    minl, out, s = min(h, w) * m, [], m
    while minl >= 12:
        out.append(s)
        s *= factor
        minl *= factor
    return out


def _logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def log_odds(prob):
    """Face log-odds ``log p1 - log p0`` of facenet-pytorch's softmax output (channel 1 =
    face), as ppjax's nets return them."""
    import torch

    return torch.log(prob[:, 1].clamp_min(1e-30)) - torch.log(prob[:, 0].clamp_min(1e-30))


def loss(pnet, rnet, onet, x01, crops24, crops48, margin: float):
    """Per-image hinge loss [B] (to minimise) of ``x01`` [B, 3, H, W] in [0, 1]; ``crops24`` /
    ``crops48``: lists (per image) of int boxes ``(x1, y1, x2, y2)`` whose crops R-Net / O-Net
    judge."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    h, w = x01.shape[2:]
    x = (x01 * 255.0 - 127.5) * 0.0078125
    total = torch.zeros(x.shape[0])
    for s in scales(h, w):
        prob = pnet(F.interpolate(x, size=(int(h * s + 1), int(w * s + 1)), mode="area"))[1]
        total = total + F.relu(log_odds(prob) - (_logit(THRESHOLDS[0]) - margin)).sum((1, 2))
    for boxes, net, size, thr in ((crops24, rnet, 24, THRESHOLDS[1]),
                                  (crops48, onet, 48, THRESHOLDS[2])):
        for i, bs in enumerate(boxes):
            if not len(bs):
                continue
            c = torch.cat([F.interpolate(x[i:i + 1, :, y1:y2, x1:x2], size=(size, size),
                                         mode="area") for x1, y1, x2, y2 in bs])
            lo = log_odds(net(c)[1])
            total = total + F.one_hot(torch.tensor(i), x.shape[0]) * F.relu(
                lo - (_logit(thr) - margin)).sum()
    return total


def attack(models, x01: np.ndarray, crops24, crops48, *, eps: float, steps: int,
           step_size: float, margin: float, momentum: float = 1.0) -> np.ndarray:
    """MI-FGSM on the hinge :func:`loss`; ``x01`` [B, H, W, 3] float32; returns the images."""
    import torch

    pnet, rnet, onet = models
    x0 = torch.from_numpy(np.ascontiguousarray(x01.transpose(0, 3, 1, 2)))
    x, g = x0.clone(), torch.zeros_like(x0)
    for _ in range(steps):
        x.requires_grad_(True)
        grad, = torch.autograd.grad(loss(pnet, rnet, onet, x, crops24, crops48, margin).sum(), x)
        grad = grad / grad.abs().mean((1, 2, 3), keepdim=True).clamp_min(1e-12)
        g = momentum * g + grad
        with torch.no_grad():
            x = x - step_size * g.sign()
            x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0, 1)
    return x.detach().numpy().transpose(0, 2, 3, 1)


def timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn()`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def clean_proposals(judge, img: np.ndarray) -> tuple[list, list]:
    """The clean photo's R-Net crops (stage-1 proposals, at most ``K_PROPOSALS``) and O-Net
    crops (R-Net's calibrated survivors, at most ``K_ONET``: the objective's numbers) as clipped
    int boxes, from :mod:`ppjax.faces.cascade`'s stages."""
    import jax.numpy as jnp

    from ppjax.faces import boxes as bx
    from ppjax.faces import cascade as dt
    from ppjax.faces.objective import K_ONET, K_PROPOSALS
    from ppjax.models.mtcnn import pyramid_scales

    x01 = img[None].astype(np.float32) / 255.0
    levels = judge.module.apply(judge.variables, jnp.asarray(x01), method="pyramid")
    lv = [(np.asarray(v.prob)[0], np.asarray(v.reg)[0]) for v in levels]
    b1 = dt.stage1(lv, pyramid_scales(*img.shape[:2]), dt.THRESHOLDS[0])[:K_PROPOSALS]
    b2 = (dt.stage2(judge, img.astype(np.float64), b1, dt.THRESHOLDS[1])[:K_ONET] if len(b1)
          else b1)
    h, w = img.shape[:2]

    def clipped(b):
        c = bx.clip_boxes(b, w, h) if len(b) else np.zeros((0, 4), int)
        return [(int(x1) - 1, int(y1) - 1, int(x2), int(y2)) for x1, y1, x2, y2 in c[:, :4]
                if x2 > x1 - 1 and y2 > y1 - 1]

    return clipped(b1), clipped(b2)


def compare(judge, images, steps: int, eps: float = 8 / 255, repeats: int = 2) -> dict:
    """img*it/s of ppjax's ``faces/plain`` and of this module's torch attack on the same two
    photos of one bucket (padded to it), each the best of ``repeats`` timed runs after a warm-up
    (ppjax's compile time reported apart); ``ratio_vs_torch`` = ppjax / torch."""
    import torch

    import ppjax
    from ppjax.attacks import resolve_attack
    from ppjax.runs import faces

    pair = _pair(images)
    hw = tuple(np.max([faces.bucket_hw(*p.shape[:2]) for p in pair], axis=0).tolist())
    x = np.stack([faces.pad_to(p, hw) for p in pair]).astype(np.float32) / 255.0
    acfg = resolve_attack("faces", "plain", {"steps": steps, "eps": eps})
    kappa = float(acfg.kappa)
    run = lambda: np.asarray(ppjax.attack(acfg, judge, x, seeds=np.arange(2)).images)  # noqa: E731
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    t_jax = timed(run, repeats)
    props = [clean_proposals(judge, (xi * 255).round().astype(np.uint8)) for xi in x]
    models = nets()
    run_t = lambda: attack(models, x, [p[0] for p in props], [p[1] for p in props],  # noqa: E731
                           eps=eps, steps=steps, step_size=float(acfg.step_size), margin=kappa)
    run_t()  # warm-up
    t_torch = timed(run_t, repeats)
    n = len(x) * steps
    return {"images": len(x), "canvas": list(hw), "steps": steps,
            "ppjax_img_it_s": n / t_jax, "torch_img_it_s": n / t_torch,
            "ppjax_compile_s": max(0.0, first - t_jax), "torch_threads": torch.get_num_threads(),
            "ratio_vs_torch": (n / t_jax) / (n / t_torch),
            "note": "faces/plain (no EOT) on both sides; torch's R-Net/O-Net crops are the clean "
                    "photo's proposals, ppjax's are found in the graph each step (more work)"}


def _pair(images):
    """The two smallest photos that share a bucket (else the two smallest)."""
    from ppjax.runs import faces

    by_area = sorted(images, key=lambda im: im.shape[0] * im.shape[1])
    for i, a in enumerate(by_area):
        for b in by_area[i + 1:]:
            if faces.bucket_hw(*a.shape[:2]) == faces.bucket_hw(*b.shape[:2]):
                return [a, b]
    return by_area[:2]
