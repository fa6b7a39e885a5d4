"""Import facenet-pytorch 2.6.0 without torchvision (the tests' independent MTCNN reference).

facenet-pytorch imports torchvision only for ``torchvision.ops.boxes.batched_nms`` and
``torchvision.transforms.functional`` (``to_tensor``, used by ``extract_face``, not by
detection). No torchvision wheel matches the torch installed here, so :func:`import_facenet`
installs a minimal ``torchvision`` into ``sys.modules`` first, with the two written from their
definitions, then imports the package. Only tests use this module.

``batched_nms(boxes, scores, idxs, iou_threshold)`` (torchvision's definition): greedy NMS run
independently per ``idxs`` value, boxes in ``(x1, y1, x2, y2)`` with area ``(x2 - x1)(y2 - y1)``;
a box is dropped when its IoU with a kept, higher-scoring box is ``> iou_threshold``; returns
the kept indices, int64, by decreasing score (a stable sort: ties keep index order).
"""

from __future__ import annotations

import sys
import types


def nms(boxes, scores, iou_threshold: float):
    """torchvision ``ops.nms`` on CPU (``nms_kernel_impl``): same arithmetic, same order."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    order = torch.sort(scores, descending=True, stable=True).indices
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        xx1 = torch.maximum(x1[i], x1)
        yy1 = torch.maximum(y1[i], y1)
        xx2 = torch.minimum(x2[i], x2)
        yy2 = torch.minimum(y2[i], y2)
        inter = (xx2 - xx1).clamp(min=0) * (yy2 - yy1).clamp(min=0)
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou > iou_threshold
    return torch.as_tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold: float):
    """torchvision ``ops.boxes.batched_nms``: NMS per value of ``idxs`` (the coordinate trick:
    boxes of different ``idxs`` are shifted apart so that they never overlap)."""
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def to_tensor(pic):
    """torchvision ``transforms.functional.to_tensor`` for an HxWxC float or uint8 array."""
    import numpy as np
    import torch

    a = np.asarray(pic)
    t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    return t.float().div(255) if a.dtype == np.uint8 else t


def install() -> None:
    """Put the minimal ``torchvision`` into ``sys.modules`` (no-op if a real one is importable)."""
    try:
        import torchvision  # noqa: F401

        return
    except ImportError:
        pass
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    boxes.batched_nms, boxes.nms = batched_nms, nms
    ops.boxes, ops.batched_nms, ops.nms = boxes, batched_nms, nms
    functional.to_tensor = to_tensor
    transforms.functional = functional
    tv.ops, tv.transforms = ops, transforms
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                        "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def import_facenet():
    """``facenet_pytorch`` imported with the shim in place (pytest skips if it is not installed)."""
    import pytest

    pytest.importorskip("torch")
    install()
    return pytest.importorskip("facenet_pytorch")
