"""The torch reference of the faces attack, for ``benchmarks.faces``'s ``ratio_vs_torch``.

The same attack as ppjax's ``faces/plain`` preset, written in torch on facenet-pytorch 2.6.0's own
``PNet``/``RNet``/``ONet`` (its trained weights): the image pyramid by ``interpolate(mode=
"area")`` as facenet-pytorch builds it; every P-Net window's face probability pushed below the
P-Net threshold minus the margin (hinge, summed); the clean image's R-Net and O-Net proposals
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
        total = total + F.relu(prob[:, 1] - (THRESHOLDS[0] - margin)).sum((1, 2))
    for boxes, net, size, thr in ((crops24, rnet, 24, THRESHOLDS[1]),
                                  (crops48, onet, 48, THRESHOLDS[2])):
        for i, bs in enumerate(boxes):
            if not len(bs):
                continue
            c = torch.cat([F.interpolate(x[i:i + 1, :, y1:y2, x1:x2], size=(size, size),
                                         mode="area") for x1, y1, x2, y2 in bs])
            prob = net(c)[1][:, 1]
            total = total + F.one_hot(torch.tensor(i), x.shape[0]) * F.relu(
                prob - (thr - margin)).sum()
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
