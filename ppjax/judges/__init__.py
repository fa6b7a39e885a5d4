"""Judges: the white-box models that ppjax protects photos from, loaded by name.

A judge is a pure function ``x01 -> output`` on ``x01: [B, H, W, 3] float32 in [0, 1]``; the
original model's preprocessing lives inside the Flax module. ``Judge`` is a pytree (its variables
are leaves, everything else is static), so it can be passed straight into ``jax.jit``.

Converted weights live in ``<weights_dir>/<name>/`` (see :mod:`ppjax.judges.checkpoint`). A random-weight
stand-in lives in ``<weights_dir>/<name>.standin/`` and is only ever used when asked for
explicitly (``standin=True`` / ``--standin``); every judge carries a ``standin`` flag that reports
and logs must print.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from ppjax import config
from ppjax.judges.checkpoint import load_converted

log = logging.getLogger("ppjax")

STANDIN_WARNING = (
    "STAND-IN JUDGE: '{name}' runs on RANDOM weights, not the real checkpoint. "
    "Its predictions mean nothing; figures produced with it only exercise the pipeline."
)


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    """Static description of a judge (hashable; no callables)."""

    name: str
    model: str  # "module.path:Factory"
    input_hw: tuple[int, int]  # (height, width) the judge expects
    output: str  # "logits" [B, C] | "score" [B] | "distribution" [B, K] (probabilities)
    filename: str  # the original checkpoint's file name
    url: str  # where the original checkpoint is published
    converter: str  # module under ppjax/convert/ with convert() and write_standin()
    architecture: str
    preprocessing: str
    model_kwargs: tuple[tuple[str, Any], ...] = ()
    year: int = 2019

    def make_module(self, **overrides) -> nn.Module:
        mod_name, attr = self.model.split(":")
        factory = getattr(importlib.import_module(mod_name), attr)
        return factory(**{**dict(self.model_kwargs), **overrides})

    def abstract_variables(self, module: nn.Module | None = None):
        module = module or self.make_module()
        h, w = self.input_hw
        return jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, h, w, 3), jnp.float32))


JUDGES: dict[str, JudgeSpec] = {}


def register(spec: JudgeSpec) -> JudgeSpec:
    JUDGES[spec.name] = spec
    return spec


register(
    JudgeSpec(
        name="resnet50_places365",
        model="ppjax.models.resnet:ResNet50",
        model_kwargs=(("num_classes", 365),),
        input_hw=(256, 256),
        output="logits",
        filename="resnet50_places365.pth.tar",
        url="http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar",
        converter="ppjax.convert.resnet50_places365",
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
        name=name, model=model, model_kwargs=(("num_classes", 365),), input_hw=(256, 256),
        output="logits", filename=f"{name}.pth.tar", url=f"{_PLACES365_ZOO}{name}.pth.tar",
        converter=f"ppjax.convert.{name}",
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
        input_hw=(384, 512),
        output="score",
        filename="KonCept512.pth",
        # No direct file URL is published: this is the share page named by the README of
        # github.com/ZhengyuZhao/koniq-PyTorch ("pre-trained model"); save the file it offers
        # as KonCept512.pth.
        url="https://surfdrive.surf.nl/files/index.php/s/oeGv7wEyyMwwbIO",
        converter="ppjax.convert.koncept512",
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
        converter="ppjax.convert.nima_keras",
        architecture=(
            "NIMA (AVA), titu1994 Keras: keras.applications.MobileNet(alpha=1.0, "
            "include_top=False, pooling='avg') + Dropout(0.75) + Dense(10, softmax); legacy "
            "Keras h5 weights"
        ),
        preprocessing="RGB [0,1] -> x/127.5 - 1 on 0..255 (= 2*x01 - 1), 224x224; "
                      "score = sum_i i*p_i, i=1..10",
        year=2019,
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
        converter="ppjax.convert.nima_mobilenetv2",
        architecture=(
            "NIMA (AVA), truskovskiyk/nima.pytorch v1: base_model = Sequential(MobileNetV2 "
            "features, tonylins layout: ReLU stem/last conv, 8-child InvertedResidual convs, "
            "AvgPool2d(7)), head = ReLU, Dropout(0.75), Linear(1280, 10), Softmax"
        ),
        preprocessing="RGB [0,1], ImageNet mean/std normalisation, 224x224; "
                      "score = sum_i i*p_i, i=1..10",
        year=2020,
    )
)


def get_spec(name: str) -> JudgeSpec:
    try:
        return JUDGES[name]
    except KeyError:
        raise KeyError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}") from None


def judge_dir(name: str, weights_dir=None, standin: bool = False) -> Path:
    return config.weights_dir(weights_dir) / (f"{name}.standin" if standin else name)


@struct.dataclass
class Judge:
    """A loaded judge: ``judge(x01)`` returns its output (see ``spec.output``)."""

    variables: Any
    module: nn.Module = struct.field(pytree_node=False)
    spec: JudgeSpec = struct.field(pytree_node=False)
    standin: bool = struct.field(pytree_node=False, default=False)

    # Hashable by identity, so a judge can be a static argument of ``jax.jit`` or a dict key
    # (its arrays have no value hash). Passing it as an ordinary (pytree) argument is cheaper:
    # a static judge is embedded in the program as constants.
    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other) -> bool:
        return self is other

    def check_input(self, x01: jnp.ndarray) -> None:
        h, w = self.spec.input_hw
        if x01.ndim != 4 or x01.shape[-1] != 3:
            raise ValueError(
                f"judge {self.spec.name!r} expects images [B, H, W, 3] in [0, 1], got shape "
                f"{tuple(x01.shape)}"
            )
        if tuple(x01.shape[1:3]) != (h, w):
            raise ValueError(
                f"judge {self.spec.name!r} expects {h}x{w} (HxW) images, got "
                f"{x01.shape[1]}x{x01.shape[2]}; bring them to the task's size first "
                f"(ppjax.image.io.to_task_size)"
            )

    def __call__(self, x01: jnp.ndarray) -> jnp.ndarray:
        self.check_input(x01)
        return self.module.apply(self.variables, x01)

    def score(self, x01: jnp.ndarray) -> jnp.ndarray:
        """Scalar score per image, ``[B]``: the MOS for score judges, the mean of the
        distribution (sum_i i * p_i, i = 1..K) for distribution judges."""
        out = self(x01)
        if self.spec.output == "score":
            return out.reshape(out.shape[0])
        if self.spec.output == "distribution":
            k = out.shape[-1]
            bins = jnp.arange(1, k + 1, dtype=out.dtype).reshape((1,) * (out.ndim - 1) + (k,))
            return jnp.sum(out * bins, axis=-1)
        raise TypeError(f"judge {self.spec.name!r} outputs logits; it has no scalar score")

    def with_dtype(self, dtype) -> Judge:
        """Same weights, compute in ``dtype`` (e.g. ``jnp.bfloat16``); outputs stay float32."""
        return self.replace(module=self.module.clone(dtype=dtype))

    @property
    def label(self) -> str:
        return f"{self.spec.name} (STAND-IN, random weights)" if self.standin else self.spec.name


def load_judge(name: str, weights_dir=None, standin: bool = False, dtype=jnp.float32) -> Judge:
    """Load a converted judge by name.

    Args:
      name: a key of :data:`JUDGES`.
      weights_dir: overrides ``$PPJAX_WEIGHTS_DIR`` / the user cache.
      standin: load (creating it on first use) the random-weight stand-in instead of the real
        weights. Never happens implicitly.
    Raises:
      FileNotFoundError: with instructions, when the judge has not been converted yet.
    """
    spec = get_spec(name)
    path = judge_dir(name, weights_dir, standin)
    if standin and not (path / "metadata.json").exists():
        converter = importlib.import_module(spec.converter)
        converter.make_standin(weights_dir=weights_dir)
    if not (path / "metadata.json").exists():
        from ppjax.judges.fetch import missing_weights_message

        raise FileNotFoundError(missing_weights_message(spec, weights_dir))
    module = spec.make_module(dtype=dtype)
    variables, meta = load_converted(path, spec.abstract_variables(module))
    judge = Judge(variables=variables, module=module, spec=spec, standin=bool(meta.get("standin")))
    if judge.standin:
        log.warning(STANDIN_WARNING.format(name=name))
    return judge
