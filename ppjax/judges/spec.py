"""The judges' specs: :class:`JudgeSpec` and the :data:`JUDGES` registry (where each judge's
checkpoint comes from, how it is converted, what it expects), plus where converted weights live.

Imported by :mod:`ppjax.judges` (loading) and :mod:`ppjax.judges.fetch` (downloading). A spec
names its model and converter by string; neither module is imported until it is used. The Pixel
Privacy judges take the task's size (:data:`ppjax.image.io.TASK_HW`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ppjax import config
from ppjax.image.io import TASK_HW
from ppjax.registry import Registry, lazy


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """Static description of a judge (hashable; no callables)."""

    name: str
    model: str  # "module.path:Factory", imported on use (ppjax.registry.lazy)
    input_hw: tuple[int, int] | None  # (height, width) the judge expects; None: any (a user's)
    output: str  # "logits" [B, C] | "score" [B] | "distribution" [B, K] (probabilities)
    filename: str  # the original checkpoint's file name
    url: str  # where the original checkpoint is published
    converter: str  # the converter module: ppjax/convert/<converter>.py (ppjax.convert.CONVERTERS)
    architecture: str
    preprocessing: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    year: int = 2019
    # fully convolutional: takes [B, H, W, 3] of any size (input_hw is then only the size its
    # variables are initialised at)
    any_size: bool = False
    # the pip requirement whose wheel ships the real weights: ``ppjax fetch`` copies them from
    # the installed package (offline) instead of downloading ``url``; there is no stand-in
    bundled: str = ""
    # How the judge's original brings an image to the network when it scores appeal (an
    # ``ppjax.attacks.appeal.APPEAL_RESIZERS`` rule: "nearest" to input_hw, "bilinear" or
    # "native"); read by the appeal term (``appeal_resize="auto"``) and ``ppjax evaluate``.
    appeal_resize: str = "nearest"
    # oneDNN path: keep activations in float32 under a bfloat16 run, chosen by measurement
    # (benchmarks/RESULTS.md, oneDNN levers: the MobileNets gain, ResNet-50 loses).
    f32_activations: bool = False

    def converter_module(self):
        """The converter of this judge's checkpoint, ``ppjax.convert.<converter>`` (a
        :class:`ppjax.convert.Converter`), imported on use by name, like ``model``: the judges
        layer loads what the converters write and never imports them."""
        return lazy(f"ppjax.convert.{self.converter}")()

    def make_module(self, **overrides) -> nn.Module:
        factory = lazy(self.model)()
        return factory(**{**dict(self.model_kwargs), **overrides})

    def abstract_variables(self, module: nn.Module | None = None):
        module = module or self.make_module()
        h, w = self.input_hw
        return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.float32))


JUDGES: Registry[JudgeSpec] = Registry("judge")


def register(spec: JudgeSpec) -> JudgeSpec:
    """Add ``spec`` to :data:`JUDGES` under its name (a second spec of the same name is an error)."""
    return JUDGES.register(spec.name, spec)


register(
    JudgeSpec(
        name="resnet50_places365",
        model="ppjax.models.resnet:ResNet50",
        model_kwargs=(("num_classes", 365),),
        input_hw=TASK_HW[2019],
        output="logits",
        filename="resnet50_places365.pth.tar",
        url="http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar",
        converter="resnet50_places365",
        architecture="torchvision ResNet-50, 365 classes (Places365-Standard, CSAIL model zoo)",
        preprocessing="RGB [0,1], ImageNet mean/std normalisation, 256x256, no resize, no crop",
        year=2019,
    )
)

_PLACES365_ZOO = "http://places2.csail.mit.edu/models_places365/"
_PLACES365_PRE = "RGB [0,1], ImageNet mean/std normalisation, 256x256, no resize, no crop"


def _places365_zoo(name: str, model: str, architecture: str) -> JudgeSpec:
    """A judge of the CSAIL Places365 CNN zoo: ``<name>.pth.tar`` at the zoo's URL, converted by
    ``ppjax.convert.<name>``, 256x256 input with the 2019 preprocessing, 365 logits."""
    return register(JudgeSpec(
        name=name, model=model, model_kwargs=(("num_classes", 365),), input_hw=TASK_HW[2019],
        output="logits", filename=f"{name}.pth.tar", url=f"{_PLACES365_ZOO}{name}.pth.tar",
        converter=name,
        architecture=f"{architecture}, 365 classes (Places365-Standard, CSAIL model zoo)",
        preprocessing=_PLACES365_PRE))


# The rest of the Places365 CNN zoo: other judges a photo may meet (transfer, ppjax.runs.transfer).
_places365_zoo("resnet18_places365", "ppjax.models.resnet:ResNet18", "torchvision ResNet-18")
_places365_zoo("wideresnet18_places365", "ppjax.models.resnet:WideResNet18",
               "CSAIL wideresnet.py resnet18 (ResNet-18 without the stem max-pool, AvgPool2d(14) = "
               "top-left 14x14 of the 16x16 map at 256x256)")
_places365_zoo("densenet161_places365", "ppjax.models.densenet:DenseNet161",
               "torchvision DenseNet-161 (growth 48, blocks 6/12/36/24; the file's PyTorch 0.2 keys "
               "norm.1 -> norm1)")
_places365_zoo("alexnet_places365", "ppjax.models.alexnet:AlexNet",
               "torchvision AlexNet (AdaptiveAvgPool2d(6): 7x7 -> 6x6 at 256x256)")

register(
    JudgeSpec(
        name="koncept512",
        model="ppjax.models.koncept:KonCept512",
        model_kwargs=(("pool", "cadene"),),
        input_hw=TASK_HW[2020],
        output="score",
        filename="KonCept512.pth",
        # No direct file URL is published: this is the share page named by the README of
        # github.com/ZhengyuZhao/koniq-PyTorch ("pre-trained model"); save the file it offers
        # as KonCept512.pth.
        url="https://surfdrive.surf.nl/files/index.php/s/oeGv7wEyyMwwbIO",
        converter="koncept512",
        architecture=(
            "KonCept512 (KonIQ-10k BIQA), PyTorch re-implementation ZhengyuZhao/koniq-PyTorch "
            "model_qa: base = Cadene pretrainedmodels InceptionResNetV2 children[:-1] (ending in "
            "its AvgPool2d(8), i.e. the top-left 8x8 of the 10x14 map at 384x512), fc = "
            "1536-2048-1024-256-1 MLP with ReLU, BatchNorm1d, Dropout; checkpoint from the "
            "repository's documented share link (no direct download URL)"
        ),
        preprocessing="RGB [0,1], 512x384 (WxH), Normalize(mean 0.5, std 0.5) i.e. [-1,1], "
                      "no resize, no crop; output: MOS on the KonIQ scale (~0..100)",
        year=2020,
    )
)

register(
    JudgeSpec(
        name="nima_mobilenet",
        model="ppjax.models.nima:NimaMobileNet",
        input_hw=(224, 224),
        output="distribution",
        filename="mobilenet_weights.h5",
        # Release asset of github.com/titu1994/neural-image-assessment (the same file name is
        # attached to releases v0.1..v0.5; v0.3 is the one downstream projects pin).
        url="https://github.com/titu1994/neural-image-assessment/releases/download/v0.3/"
            "mobilenet_weights.h5",
        converter="nima_keras",
        architecture=(
            "NIMA (AVA), titu1994 Keras: keras.applications.MobileNet(alpha=1.0, "
            "include_top=False, pooling='avg') + Dropout(0.75) + Dense(10, softmax); legacy "
            "Keras h5 weights"
        ),
        preprocessing="RGB [0,1] -> x/127.5 - 1 on 0..255 (= 2*x01 - 1), 224x224; "
                      "score = sum_i i*p_i, i=1..10",
        year=2019,
        # titu1994's evaluation script scores images at their native size by default
        # (MobileNet with global pooling takes any size); -resize true is nearest to 224x224
        appeal_resize="native",
        f32_activations=True,
    )
)

register(
    JudgeSpec(
        name="nima_mobilenetv2",
        model="ppjax.models.nima:NimaMobileNetV2",
        input_hw=(224, 224),
        output="distribution",
        filename="nima224.pth",
        # nima224.pth is the pre-trained model of github.com/truskovskiyk/nima.pytorch (branch
        # v1, settings.ini MODEL_URL), saved under that name by the projects that use it.
        url="https://s3-us-west-1.amazonaws.com/models-nima/pretrain-model.pth",
        converter="nima_mobilenetv2",
        architecture=(
            "NIMA (AVA), truskovskiyk/nima.pytorch v1: base_model = Sequential(MobileNetV2 "
            "features, tonylins layout: ReLU stem/last conv, 8-child InvertedResidual convs, "
            "AvgPool2d(7)), head = ReLU, Dropout(0.75), Linear(1280, 10), Softmax"
        ),
        preprocessing="RGB [0,1], ImageNet mean/std normalisation, 224x224; "
                      "score = sum_i i*p_i, i=1..10",
        year=2020,
        appeal_resize="bilinear",  # nima.pytorch: Resize((224, 224)), bilinear
        f32_activations=True,
    )
)


register(
    JudgeSpec(
        name="mtcnn",
        model="ppjax.models.mtcnn:MTCNN",
        input_hw=(48, 48),
        output="score",
        filename="mtcnn",  # a folder: pnet.pt, rnet.pt, onet.pt
        url="https://github.com/timesler/facenet-pytorch/tree/v2.6.0/data",
        converter="mtcnn",
        architecture=(
            "MTCNN (Zhang et al. 2016) P-Net, R-Net, O-Net as facenet-pytorch 2.6.0 defines them "
            "(per-channel PReLU, ceil-mode max-pooling, dense layers after permute(0, 3, 2, 1)); "
            "trained weights from the facenet-pytorch wheel (data/pnet.pt, rnet.pt, onet.pt)"
        ),
        preprocessing=(
            "RGB [0,1] -> (255 x - 127.5) * 0.0078125, any size; pyramid min face 20, factor "
            "0.709, levels (int(h*s+1), int(w*s+1)) by torch interpolate(mode='area'); crops "
            "24x24 (R-Net), 48x48 (O-Net) by area resampling; score = max P-Net face "
            "probability over every window of every scale"
        ),
        year=2016,
        any_size=True,
        bundled="facenet-pytorch==2.6.0",
    )
)


def get_spec(name: str) -> JudgeSpec:
    """The spec of judge ``name``; :class:`~ppjax.registry.UnknownName` (a ``KeyError``) names the
    known judges."""
    return JUDGES[name]


def judge_dir(name: str, weights_dir=None, standin: bool = False) -> Path:
    """``<weights_dir>/<name>`` (converted weights) or ``<name>.standin`` (the stand-in)."""
    return config.weights_dir(weights_dir) / (f"{name}.standin" if standin else name)


def missing_weights_message(spec: JudgeSpec, weights_dir=None, python: bool = False) -> str:
    """What to do when judge ``spec`` has not been converted: fetch, convert by hand, or stand-in.
    ``python``: name the Python calls (``load_judge``'s error) rather than the CLI's options."""
    dest = config.downloads_dir(weights_dir) / spec.filename
    if python:
        fetch = (f"ppjax.judges.fetch.fetch_judge({spec.name!r}) (or the command "
                 f"`ppjax fetch {spec.name}`)")
        standin = (f"load_judge({spec.name!r}, standin=True) (the CLI's --standin) to run on "
                   f"random stand-in weights")
    else:
        fetch = f"ppjax fetch {spec.name}"
        standin = "pass --standin to run on random stand-in weights"
    if spec.bundled:
        return (
            f"judge {spec.name!r} has not been converted yet (looked in "
            f"{config.weights_dir(weights_dir) / spec.name}).\n"
            f"  * run: {fetch}  (offline: it copies the real weights from the installed package)\n"
            f"  * the package: pip install --no-deps {spec.bundled}\n"
            f"  (this judge ships its real weights; it has no stand-in)"
        )
    return (
        f"judge {spec.name!r} has not been converted yet (looked in "
        f"{config.weights_dir(weights_dir) / spec.name}).\n"
        f"  * online:  {fetch}\n"
        f"  * by hand: download {spec.url}\n"
        f"             to {dest}\n"
        f"             then run: ppjax convert {spec.name} {dest}\n"
        f"  * or {standin} (results are meaningless and are labelled as such)."
    )


def broken_weights_message(spec: JudgeSpec, why: str, weights_dir=None, standin: bool = False
                           ) -> str:
    """What to do when judge ``spec``'s converted weights are broken (``why``): the command
    that rebuilds them."""
    wd = f" --weights-dir {weights_dir}" if weights_dir is not None else ""
    if standin:
        how = f"  rebuild them: ppjax standin {spec.name}{wd}"
    else:
        dest = config.downloads_dir(weights_dir) / spec.filename
        how = (f"  rebuild them: ppjax convert {spec.name} {dest}{wd}\n"
               f"  (or download again: ppjax fetch {spec.name} --force{wd})")
    kind = "stand-in" if standin else "converted"
    return f"judge {spec.name!r}: the {kind} weights are broken: {why}\n{how}"
