"""PyTorch reference models for the benchmarks (torchvision is not installable here).

The models are the replicas in ``benchmarks/torch_ref`` (also used by the parity tests), so benchmarks and
tests compare against the same torch code. They take NCHW input that is already normalised;
:func:`with_normalisation` wraps a model to take ``x01`` in [0, 1] like a ppjax judge, and
:func:`load_from_judge` copies a ppjax judge's weights into them.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet50(num_classes: int = 365) -> nn.Module:
    """torchvision-structured ResNet-50: the replica written for the tests."""
    from benchmarks.torch_ref.resnet import resnet50 as _resnet50

    return _resnet50(num_classes)


def nima_mobilenet_v2() -> nn.Module:
    """The nima.pytorch MobileNetV2 NIMA: the replica written for the tests (normalised input)."""
    from benchmarks.torch_ref.mobilenet_v2 import NIMA

    return NIMA()


def koncept512() -> nn.Module:
    """KonCept512 (Cadene InceptionResNetV2 base + MLP head): the replica written for the tests
    (normalised input, ``Normalize(0.5, 0.5)``)."""
    from benchmarks.torch_ref.inception_resnet_v2 import KonCept512

    return KonCept512()


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

    from ppjax.convert.common import expected_torch_shapes, to_torch_layout

    flat = traverse_util.flatten_dict(dict(judge.variables))
    state = {key: torch.from_numpy(np.ascontiguousarray(
        to_torch_layout(np.asarray(flat[flat_key], np.float32), layout)))
        for key, (_, flat_key, layout) in expected_torch_shapes(judge.variables).items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise RuntimeError(f"weight copy failed: missing {missing}, unexpected {unexpected}")
    return net
