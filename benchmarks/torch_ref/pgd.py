"""PGD (Madry et al.) written in plain torch, as the independent reference for ppjax's loop.

Untargeted, Linf, cross-entropy, sign steps, no random start: exactly
``x <- clip(clip(x + alpha * sign(grad CE), x0 - eps, x0 + eps), 0, 1)`` repeated ``steps``
times. Images are NCHW float32 in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pgd_linf(model: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor, eps: float,
             alpha: float, steps: int) -> torch.Tensor:
    """Return the final iterate (not rounded) after ``steps`` PGD steps."""
    model.eval()
    x = x0.clone()
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
        x = x.detach() + alpha * grad.sign()
        x = torch.minimum(torch.maximum(x, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    return x.detach()


class TinyCNN(torch.nn.Module):
    """A small torch classifier (normalisation inside, NCHW) mirrored by the Flax ``TinyCNN``
    of ``tests/test_attacks.py``; module names match so ``ppjax.convert.common.torch_to_flax``
    converts it."""

    def __init__(self, num_classes: int = 10, size: int = 32):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16 * (size // 4) ** 2, num_classes)

    def forward(self, x):
        x = (x - 0.45) / 0.25
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))
