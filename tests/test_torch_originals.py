"""The torch originals of ``benchmarks.methods_speed``: where a throughput run needs every
iteration to run, the stand-in for an original against the original itself (torchattacks)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchattacks = pytest.importorskip("torchattacks")


class _Counted(torch.nn.Module):
    """A small CNN classifier that counts its forward passes."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
            torch.nn.Flatten(), torch.nn.Linear(128, 10))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


def test_cw_every_step_is_torchattacks_cw_without_its_abort():
    from benchmarks.torch_originals import CWEveryStep

    model = _Counted().eval()
    x = torch.from_numpy(np.random.default_rng(0).uniform(0.05, 0.95, (4, 3, 16, 16))
                         .astype(np.float32))
    y = torch.tensor([0, 1, 2, 3])
    # one step: the original's check cannot abort, so both must give the same images
    ref = torchattacks.CW(model, c=1.0, kappa=0.0, steps=1, lr=0.01)(x, y)
    ours = CWEveryStep(model, c=1.0, kappa=0.0, steps=1, lr=0.01)(x, y)
    torch.testing.assert_close(ours, ref)
    # many steps: every one runs (the original may stop at the first rise of the cost)
    model.calls = 0
    steps = 12
    CWEveryStep(model, c=1e4, kappa=0.0, steps=steps, lr=0.5)(x, y)
    assert model.calls == steps
    model.calls = 0
    torchattacks.CW(model, c=1e4, kappa=0.0, steps=steps, lr=0.5)(x, y)
    assert model.calls < steps  # a large step makes its cost rise: the abort is real
