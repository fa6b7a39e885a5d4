"""Torch replicas of the rest of the Places365 CNN zoo, written for the tests from the
architectures (torchvision is not installable here): torchvision ResNet-18, CSAIL's
``wideresnet.py`` ResNet-18, torchvision DenseNet-161 and AlexNet.

Module names follow the originals exactly, so ``state_dict()`` keys are the current torch names
(``layer1.0.conv1.weight``, ``features.denseblock1.denselayer1.norm1.weight``,
``classifier.6.weight``); the CSAIL DenseNet file's PyTorch 0.2 spelling (``norm.1``) is made by
``ppjax.convert.places365.legacy_names``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """``wide=False``: torchvision ResNet-18 (stem max-pool, adaptive average pool).
    ``wide=True``: CSAIL ``wideresnet.resnet18`` (no stem max-pool, ``nn.AvgPool2d(14)``)."""

    def __init__(self, num_classes=365, wide=False):
        super().__init__()
        self.wide = wide
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        if not wide:
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(64)
        self.layer2 = self._make_layer(128, stride=2)
        self.layer3 = self._make_layer(256, stride=2)
        self.layer4 = self._make_layer(512, stride=2)
        self.avgpool = nn.AvgPool2d(14) if wide else nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x, capture: bool = False):
        feats = {}
        x = self.relu(self.bn1(self.conv1(x)))
        if not self.wide:
            x = self.maxpool(x)
        feats["stem"] = x
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            feats[name] = x
        x = self.avgpool(x).view(x.size(0), -1)
        feats["pool"] = x
        logits = self.fc(x)
        return (logits, feats) if capture else logits


class DenseLayer(nn.Module):
    def __init__(self, cin, growth, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        y = self.conv1(self.relu1(self.norm1(x)))
        y = self.conv2(self.relu2(self.norm2(y)))
        return torch.cat([x, y], 1)


class DenseNet(nn.Module):
    def __init__(self, growth=48, block_config=(6, 12, 36, 24), init_features=96, bn_size=4,
                 num_classes=365):
        super().__init__()
        self.features = nn.Sequential()
        self.features.add_module("conv0", nn.Conv2d(3, init_features, 7, 2, 3, bias=False))
        self.features.add_module("norm0", nn.BatchNorm2d(init_features))
        self.features.add_module("relu0", nn.ReLU(inplace=True))
        self.features.add_module("pool0", nn.MaxPool2d(3, 2, 1))
        c = init_features
        for i, n in enumerate(block_config):
            block = nn.Sequential()
            for j in range(n):
                block.add_module(f"denselayer{j + 1}", DenseLayer(c + j * growth, growth, bn_size))
            self.features.add_module(f"denseblock{i + 1}", block)
            c += n * growth
            if i != len(block_config) - 1:
                t = nn.Sequential()
                t.add_module("norm", nn.BatchNorm2d(c))
                t.add_module("relu", nn.ReLU(inplace=True))
                t.add_module("conv", nn.Conv2d(c, c // 2, 1, bias=False))
                t.add_module("pool", nn.AvgPool2d(2, 2))
                self.features.add_module(f"transition{i + 1}", t)
                c //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(c))
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x, capture: bool = False):
        feats = {}
        for name, m in self.features.named_children():
            x = m(x)
            if name == "pool0":
                feats["stem"] = x
            elif name.startswith("denseblock"):
                feats[name] = x
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        feats["pool"] = x
        logits = self.classifier(x)
        return (logits, feats) if capture else logits


class AlexNet(nn.Module):
    def __init__(self, num_classes=365):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes))

    def forward(self, x, capture: bool = False):
        x = self.features(x)
        feats = {"features": x}
        x = torch.flatten(self.avgpool(x), 1)
        feats["pool"] = x
        logits = self.classifier(x)
        return (logits, feats) if capture else logits


def randomize(model: nn.Module, seed: int = 0, calib_hw: int = 128) -> nn.Module:
    """Random weights and randomised BatchNorm statistics that keep activations O(1): running
    statistics come from a train-mode calibration pass over noise and are then perturbed; the
    last BN of each residual block is shrunk so the residual stream stays bounded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.05, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, (2.0 / m.in_features) ** 0.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
        for m in model.modules():
            if isinstance(m, BasicBlock):
                m.bn2.weight.mul_(0.3)
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        if bns:
            model.train()
            model((torch.rand(2, 3, calib_hw, calib_hw, generator=g) - 0.45) / 0.225)
        model.eval()
        for m in bns:
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.1 *
                                m.running_var.sqrt())
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=g))
            m.momentum = 0.1
    return model


def build(name: str, seed: int = 1) -> nn.Module:
    """The randomised replica of zoo judge ``name`` (a key of ``ppjax.judges.JUDGES``)."""
    torch.manual_seed(seed)
    if name == "resnet18_places365":
        return randomize(ResNet18(365), seed)
    if name == "wideresnet18_places365":
        return randomize(ResNet18(365, wide=True), seed, calib_hw=224)
    if name == "densenet161_places365":
        return randomize(DenseNet(), seed, calib_hw=128)
    if name == "alexnet_places365":
        return randomize(AlexNet(365), seed)
    raise KeyError(name)


ZOO = ("resnet18_places365", "wideresnet18_places365", "densenet161_places365",
       "alexnet_places365")
