"""PyTorch reference models for the benchmarks (torchvision is not installable here).

``resnet50`` rebuilds torchvision's ResNet-50 module for module (same names, so a torchvision or
CSAIL state dict loads with ``strict=True``): the bottleneck's stride on its 3x3 conv, a 3x3/2
max-pool with padding 1, ``downsample = Sequential(conv1x1, BatchNorm2d)``. ``mobilenet_v2``
defers to ``tests.torch_ref.mobilenet_v2`` when that reference exists, else a minimal torchvision-
structured MobileNetV2 feature extractor defined here. Both take NCHW input that is already
normalised; :func:`with_normalisation` wraps a model to take ``x01`` in [0, 1] like a ppjax judge.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision ``ResNet`` with ``Bottleneck`` blocks; input NCHW, normalised."""

    def __init__(self, layers=(3, 4, 6, 3), num_classes: int = 365):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, layers[0], 1)
        self.layer2 = self._make_layer(128, layers[1], 2)
        self.layer3 = self._make_layer(256, layers[2], 2)
        self.layer4 = self._make_layer(512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * 4, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * 4:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * 4))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * 4
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int = 365) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes)


# --- MobileNetV2 (torchvision layout: features.N.conv...) -------------------------------------

def _conv_bn_relu(inp: int, out: int, k: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers = [] if expand == 1 else [_conv_bn_relu(inp, hidden, 1, 1)]
        layers += [_conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2Features(nn.Module):
    """torchvision ``mobilenet_v2().features`` + global average pooling -> [B, 1280]."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self):
        super().__init__()
        feats = [_conv_bn_relu(3, 32, 3, 2)]
        inp = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        feats.append(_conv_bn_relu(inp, 1280, 1, 1))
        self.features = nn.Sequential(*feats)

    def forward(self, x):
        return self.features(x).mean((2, 3))


class NimaMobileNetV2(nn.Module):
    """The 2020 PyTorch NIMA: MobileNetV2 features, ReLU, Dropout(0.75), Linear(1280, 10), Softmax."""

    def __init__(self):
        super().__init__()
        self.base = MobileNetV2Features()
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(0.75), nn.Linear(1280, 10), nn.Softmax(-1))

    def forward(self, x):
        return self.head(self.base(x))


def nima_mobilenet_v2() -> nn.Module:
    """The NIMA MobileNetV2 reference from ``tests.torch_ref`` if present, else the local one."""
    try:
        ref = importlib.import_module("tests.torch_ref.mobilenet_v2")
    except ImportError:
        return NimaMobileNetV2()
    for name in ("NIMA", "NimaMobileNetV2", "nima_mobilenet_v2", "Nima"):
        if hasattr(ref, name):
            return getattr(ref, name)()
    return NimaMobileNetV2()


class WithNormalisation(nn.Module):
    """Takes NHWC ``x01`` in [0, 1] like a ppjax judge, normalises, and feeds NCHW (or
    channels-last NCHW) to ``model``."""

    def __init__(self, model: nn.Module, mean, std, channels_last: bool = False):
        super().__init__()
        self.model = model
        self.channels_last = channels_last
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x01_nhwc):
        x = x01_nhwc.permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last
                         else torch.contiguous_format)
        return self.model((x - self.mean) / self.std)


def with_normalisation(model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       channels_last: bool = False) -> nn.Module:
    return WithNormalisation(model, mean, std, channels_last)


def load_from_judge(net: nn.Module, judge) -> nn.Module:
    """Copy a ppjax judge's weights into the matching torch model with the converter's own
    name map read backwards (HWIO -> OIHW, Dense transposed, BatchNorm statistics), so both
    engines of a benchmark compute with the very same numbers."""
    import numpy as np
    from flax import traverse_util

    from converters.common import _to_torch_layout, expected_torch_shapes

    flat = traverse_util.flatten_dict(dict(judge.variables))
    state = {key: torch.from_numpy(np.ascontiguousarray(
        _to_torch_layout(np.asarray(flat[flat_key], np.float32), layout)))
        for key, (_, flat_key, layout) in expected_torch_shapes(judge.variables).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    return net
