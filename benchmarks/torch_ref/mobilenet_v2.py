"""Torch reference of the PyTorch NIMA (truskovskiyk/nima.pytorch v1, the ``nima224.pth`` model).

Written for the tests from the published architecture (torchvision is not installable here):
MobileNetV2 in the tonylins/pytorch-mobilenet-v2 layout that repository copies, then
``NIMA.base_model = Sequential(*children[:-1])`` (i.e. ``Sequential(features)``) and
``NIMA.head = Sequential(ReLU, Dropout(0.75), Linear(1280, 10), Softmax(dim=1))``.
Input: NCHW float, ImageNet-normalised.
"""

from __future__ import annotations

import torch
from torch import nn

SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


def conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, n_class: int = 1000, input_size: int = 224):
        super().__init__()
        channel = 32
        layers = [conv_bn(3, channel, 2)]
        for t, c, n, s in SETTING:
            for i in range(n):
                layers.append(InvertedResidual(channel, c, s if i == 0 else 1, t))
                channel = c
        layers.append(conv_1x1_bn(channel, 1280))
        layers.append(nn.AvgPool2d(input_size // 32))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(1280, n_class))

    def forward(self, x):
        return self.classifier(self.features(x).view(-1, 1280))


class NIMA(nn.Module):
    def __init__(self):
        super().__init__()
        self.base_model = nn.Sequential(*list(MobileNetV2().children())[:-1])
        self.head = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(p=0.75), nn.Linear(1280, 10),
                                  nn.Softmax(dim=1))

    def forward(self, x):
        x = self.base_model(x)
        return self.head(x.view(x.size(0), -1))


@torch.no_grad()
def nima_probs(model: NIMA, x01_nhwc) -> torch.Tensor:
    """``x01: [B, 224, 224, 3]`` in [0, 1] (numpy) -> ``[B, 10]`` probabilities."""
    x = torch.from_numpy(x01_nhwc).permute(0, 3, 1, 2).contiguous()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return model.eval()((x - mean) / std)
