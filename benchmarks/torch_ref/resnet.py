"""A torchvision-compatible ResNet written for the tests (torchvision has no CPU build here).

Module structure and names follow ``torchvision.models.resnet`` exactly, so its ``state_dict`` has
the same keys (``conv1.weight``, ``layer1.0.downsample.0.weight``, ``fc.weight``, ...).
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), num_classes=365):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x, capture: bool = False):
        feats = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats[name] = x
        x = torch.flatten(self.avgpool(x), 1)
        feats["pool"] = x
        logits = self.fc(x)
        return (logits, feats) if capture else logits


def resnet50(num_classes: int = 365) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and randomised BatchNorm statistics that keep activations O(1).

    Running statistics are set from a calibration pass (train-mode BN over noise) and then
    perturbed, and each block's last BN gamma is shrunk so the residual stream does not blow up
    through 16 blocks. Everything is random, nothing is left at its default.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, (1.0 / m.in_features) ** 0.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
        for m in model.modules():
            if isinstance(m, Bottleneck):
                m.bn3.weight.mul_(0.3)
        # calibrate running stats on noise, then perturb them
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None  # cumulative average
        model.train()
        x = torch.rand(4, 3, 128, 128, generator=g)
        model((x - 0.45) / 0.225)
        model.eval()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1 *
                                    m.running_var.sqrt())
                m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=g))
                m.momentum = 0.1
    return model
