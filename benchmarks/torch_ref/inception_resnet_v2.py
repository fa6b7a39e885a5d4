"""Cadene ``pretrainedmodels`` InceptionResNetV2 and the KonCept512 head, in torch, for the tests.

Module structure, names, paddings and pooling follow ``pretrainedmodels/models/inceptionresnetv2.py``
(Cadene, master) and ``model_qa`` of ZhengyuZhao/koniq-PyTorch, so ``KonCept512().state_dict()``
has exactly the keys of ``KonCept512.pth`` (``base.0.conv.weight``, ``base.8.9.conv2d.bias``,
``fc.12.weight``, ...). Written independently of the Flax port.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001, momentum=0.1, affine=True)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class Mixed_5b(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(192, 96, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(192, 48, 1, 1), BasicConv2d(48, 64, 5, 1, 2))
        self.branch2 = nn.Sequential(BasicConv2d(192, 64, 1, 1), BasicConv2d(64, 96, 3, 1, 1),
                                     BasicConv2d(96, 96, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
                                     BasicConv2d(192, 64, 1, 1))

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block35(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(320, 32, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(320, 32, 1, 1), BasicConv2d(32, 32, 3, 1, 1))
        self.branch2 = nn.Sequential(BasicConv2d(320, 32, 1, 1), BasicConv2d(32, 48, 3, 1, 1),
                                     BasicConv2d(48, 64, 3, 1, 1))
        self.conv2d = nn.Conv2d(128, 320, 1, 1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1))
        return self.relu(out * self.scale + x)


class Mixed_6a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(320, 384, 3, 2)
        self.branch1 = nn.Sequential(BasicConv2d(320, 256, 1, 1), BasicConv2d(256, 256, 3, 1, 1),
                                     BasicConv2d(256, 384, 3, 2))
        self.branch2 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], 1)


class Block17(nn.Module):
    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.branch0 = BasicConv2d(1088, 192, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(1088, 128, 1, 1),
                                     BasicConv2d(128, 160, (1, 7), 1, (0, 3)),
                                     BasicConv2d(160, 192, (7, 1), 1, (3, 0)))
        self.conv2d = nn.Conv2d(384, 1088, 1, 1)
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        return self.relu(out * self.scale + x)


class Mixed_7a(nn.Module):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1088, 256, 1, 1), BasicConv2d(256, 384, 3, 2))
        self.branch1 = nn.Sequential(BasicConv2d(1088, 256, 1, 1), BasicConv2d(256, 288, 3, 2))
        self.branch2 = nn.Sequential(BasicConv2d(1088, 256, 1, 1), BasicConv2d(256, 288, 3, 1, 1),
                                     BasicConv2d(288, 320, 3, 2))
        self.branch3 = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], 1)


class Block8(nn.Module):
    def __init__(self, scale=1.0, noReLU=False):  # noqa: N803 (Cadene's argument name)
        super().__init__()
        self.scale = scale
        self.noReLU = noReLU
        self.branch0 = BasicConv2d(2080, 192, 1, 1)
        self.branch1 = nn.Sequential(BasicConv2d(2080, 192, 1, 1),
                                     BasicConv2d(192, 224, (1, 3), 1, (0, 1)),
                                     BasicConv2d(224, 256, (3, 1), 1, (1, 0)))
        self.conv2d = nn.Conv2d(448, 2080, 1, 1)
        if not noReLU:
            self.relu = nn.ReLU(inplace=False)

    def forward(self, x):
        out = self.conv2d(torch.cat([self.branch0(x), self.branch1(x)], 1))
        out = out * self.scale + x
        return out if self.noReLU else self.relu(out)


class InceptionResNetV2(nn.Module):
    """Cadene's classifier; children in the order ``model_qa`` slices them."""

    def __init__(self, num_classes=1001):
        super().__init__()
        self.conv2d_1a = BasicConv2d(3, 32, 3, 2)
        self.conv2d_2a = BasicConv2d(32, 32, 3, 1)
        self.conv2d_2b = BasicConv2d(32, 64, 3, 1, 1)
        self.maxpool_3a = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b = BasicConv2d(64, 80, 1, 1)
        self.conv2d_4a = BasicConv2d(80, 192, 3, 1)
        self.maxpool_5a = nn.MaxPool2d(3, stride=2)
        self.mixed_5b = Mixed_5b()
        self.repeat = nn.Sequential(*[Block35(0.17) for _ in range(10)])
        self.mixed_6a = Mixed_6a()
        self.repeat_1 = nn.Sequential(*[Block17(0.10) for _ in range(20)])
        self.mixed_7a = Mixed_7a()
        self.repeat_2 = nn.Sequential(*[Block8(0.20) for _ in range(9)])
        self.block8 = Block8(noReLU=True)
        self.conv2d_7b = BasicConv2d(2080, 1536, 1, 1)
        self.avgpool_1a = nn.AvgPool2d(8, count_include_pad=False)
        self.last_linear = nn.Linear(1536, num_classes)


# child index -> name of the stage activation captured there (after that child ran)
CAPTURE = {7: "mixed_5b", 9: "mixed_6a", 11: "mixed_7a", 14: "conv2d_7b", 15: "pool"}


class KonCept512(nn.Module):
    """``model_qa(num_classes=1)`` of the KonCept512 PyTorch re-implementation.

    ``global_pool=True`` swaps ``base.15`` for ``AdaptiveAvgPool2d(1)`` (no parameters, so the
    state dict is unchanged)."""

    def __init__(self, global_pool: bool = False):
        super().__init__()
        base_model = InceptionResNetV2(num_classes=1000)
        self.base = nn.Sequential(*list(base_model.children())[:-1])
        if global_pool:
            self.base[15] = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(1536, 2048), nn.ReLU(inplace=True), nn.BatchNorm1d(2048), nn.Dropout(0.25),
            nn.Linear(2048, 1024), nn.ReLU(inplace=True), nn.BatchNorm1d(1024), nn.Dropout(0.25),
            nn.Linear(1024, 256), nn.ReLU(inplace=True), nn.BatchNorm1d(256), nn.Dropout(0.5),
            nn.Linear(256, 1),
        )

    def forward(self, x, capture: bool = False):
        """``x``: [B, 3, H, W] normalised to [-1, 1]. Returns [B, 1] (and stage activations,
        NCHW, plus ``head_in`` = the input of the last Linear, with ``capture=True``)."""
        feats = {}
        for i, child in enumerate(self.base):
            x = child(x)
            if i in CAPTURE:
                feats[CAPTURE[i]] = x
        x = x.view(x.size(0), -1)
        feats["pool"] = x
        x = self.fc[:-1](x)
        feats["head_in"] = x
        out = self.fc[-1](x)
        return (out, feats) if capture else out


def randomize(model: KonCept512, seed: int = 0, calib_hw=(299, 299)) -> KonCept512:
    """Random weights and randomised BatchNorm statistics that keep activations O(1).

    Every conv / linear weight and bias and every BatchNorm affine is drawn at random; running
    statistics come from a train-mode calibration pass on noise (cumulative average) and are then
    perturbed, so nothing is left at its default and eval-mode BN is not an identity.
    """
    g = torch.Generator().manual_seed(seed)
    bns = (nn.BatchNorm1d, nn.BatchNorm2d)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, (2.0 / m.in_features) ** 0.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, bns):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.reset_running_stats()
                m.momentum = None  # cumulative average over the calibration pass
        model.train()
        h, w = calib_hw
        x = torch.rand(3, 3, h, w, generator=g) * 2 - 1
        model(x)
        model.eval()
        for m in model.modules():
            if isinstance(m, bns):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1
                                    * m.running_var.sqrt())
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.7, 1.4,
                                                                              generator=g))
                m.momentum = 0.1
    return model


def spread_scores(model: KonCept512, head_in: torch.Tensor, mean: float = 50.0,
                  std: float = 10.0) -> torch.Tensor:
    """Rescale the last Linear so the scores of ``head_in`` ([B, 256]) have the given mean and
    std (a MOS-like spread, so score tolerances mean something). Returns the new scores [B, 1]."""
    last = model.fc[-1]
    with torch.no_grad():
        s = last(head_in)[:, 0]
        k = std / float(s.std().clamp_min(1e-6))
        last.weight.mul_(k)
        last.bias.mul_(k)
        s = last(head_in)[:, 0]
        last.bias.add_(mean - float(s.mean()))
        return last(head_in)
