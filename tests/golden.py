"""Golden outputs of the attack engine: a fixed set of attacks on fixed small photos, each result
as the sha256 of its 8-bit PNG bytes (written by :func:`ppjax.image.io.encode_png`, as
``ppjax protect`` writes them) plus its per-image success and step counts.

The attacks' results are float computations amplified by 8-bit rounding and by chaotic searches
(C&W, PerC-AL), so they are only reproducible bit for bit on the same CPU instruction set with
the same XLA and the same PNG encoder. The goldens are therefore keyed by a :func:`fingerprint`
of exactly those; ``tests/test_golden.py`` compares them where the fingerprint is known and
skips (saying how to record) elsewhere. Recording (``python -m tests.golden --record``) must be
done on code known to be right (the goldens of this file were recorded on main before the
attack-core refactor of issue 25, and every later change must reproduce them).

Run ``python -m tests.golden`` to print the current digests.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import zlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import PIL

import ppjax
from ppjax.image.io import encode_png, to_uint8
from ppjax.judges import Judge, JudgeSpec
from ppjax.models.resnet import ResNet18

GOLDEN = Path(__file__).with_name("golden.json")
HW = (32, 32)
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
          "amx_tile", "amx_bf16", "neon", "asimd")


def fingerprint() -> str:
    """What the float results depend on: CPU model and vector ISA, jax/jaxlib, the PNG encoder."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name":
                model = val.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(val.split())
    except OSError:
        pass
    isa = "+".join(f for f in _FLAGS if f in flags)
    import jaxlib

    return (f"{platform.machine()}|{model}|{isa}|jax {jax.__version__}|jaxlib {jaxlib.__version__}"
            f"|Pillow {PIL.__version__}|zlib {zlib.ZLIB_VERSION}")


class TinyScore(nn.Module):
    """A tiny score judge (KonCept512's role): a dense layer over the whole feature map."""

    @nn.compact
    def __call__(self, x01):
        x = nn.relu(nn.Conv(8, (3, 3), (2, 2), name="conv1")(x01 - 0.5))
        return nn.Dense(1, name="fc")(x.reshape(x.shape[0], -1))[:, 0]


def _spec(name: str, output: str, model: str = "-") -> JudgeSpec:
    return JudgeSpec(name=name, model=model, input_hw=HW, output=output, filename="-", url="-",
                     converter="-", architecture="golden test judge", preprocessing="-")


def judges() -> dict:
    """The fixed stand-in judges: a tiny CNN classifier (tests.test_attacks.TinyCNN), a
    ResNet-18 with random weights (SGM needs residual blocks) and a tiny score judge whose clean
    scores sit just above the threshold 50."""
    from tests.test_attacks import TinyCNN

    cnn = TinyCNN()
    out = {"cnn": Judge(cnn.init(jax.random.key(0), jnp.zeros((1, *HW, 3))), cnn,
                        _spec("golden_cnn", "logits"), standin=True)}
    res = ResNet18(num_classes=10)
    out["resnet"] = Judge(res.init(jax.random.key(1), jnp.zeros((1, *HW, 3))), res,
                          _spec("golden_resnet18", "logits"), standin=True)
    sc = TinyScore()
    v = sc.init(jax.random.key(2), jnp.zeros((1, *HW, 3)))
    p = v["params"]
    fc = {"kernel": p["fc"]["kernel"] * 10.0, "bias": p["fc"]["bias"]}
    base = Judge({"params": {**p, "fc": fc}}, sc, _spec("golden_score", "score"), standin=True)
    fc["bias"] = fc["bias"] + 51.0 - float(np.min(np.asarray(base.score(photos()))))
    out["score"] = Judge({"params": {**p, "fc": fc}}, sc, _spec("golden_score", "score"),
                         standin=True)
    return out


def photos(n: int = 3) -> np.ndarray:
    """``n`` fixed real photos of the shared data set at 32x32 (tests.conftest.photos_at)."""
    from tests.conftest import SHARED, photos_at

    paths = sorted(p for p in (SHARED / "images").iterdir() if p.is_file())
    return photos_at(paths, HW, n)


#: (golden name, judge, attack, preset, settings): the attacks whose results must not change.
CASES = (
    ("pgd", "cnn", "pgd", None, dict(steps=8)),
    ("mifgsm_all", "resnet", "mifgsm", "all", dict(steps=3, vmi_samples=1)),
    ("cw_l2", "cnn", "cw_l2", None, dict(steps=15, search_steps=2)),
    ("ace", "cnn", "ace", None, dict(steps=20)),
    ("perc_al", "cnn", "perc_al", None, dict(steps=20)),
    ("square", "cnn", "square", None, dict(steps=60)),
    ("camouflage_jpeg_eot", "score", "camouflage", None, dict(steps=6)),
)


def _digest(images, success, steps) -> dict:
    pngs = b"".join(hashlib.sha256(encode_png(im)).digest() for im in to_uint8(np.asarray(images)))
    return {"png_sha256": hashlib.sha256(pngs).hexdigest(),
            "success": np.asarray(success).astype(int).tolist(),
            "steps": np.asarray(steps).astype(int).tolist()}


def compute() -> dict:
    """The digests of every case of :data:`CASES` (XLA backend: the oneDNN path's availability
    varies by machine), plus a continuous-batching run (3 images through 2 slots of
    ``ppjax.stream``: refills, the clean judgement taken in the first step)."""
    x, js, out = photos(), judges(), {}
    for name, judge, attack, preset, settings in CASES:
        res = ppjax.attack(attack, js[judge], x, preset=preset, backend="xla", **settings)
        out[name] = _digest(res.images, res.success, res.steps)
    items = [ppjax.StreamItem(i, x[i], seed=100 + i) for i in range(len(x))]
    rows = dict(ppjax.stream("ifgsm", js["cnn"], items, slots=2, backend="xla", steps=5))
    rows = [rows[i] for i in range(len(x))]
    out["stream_ifgsm"] = _digest(np.stack([r.images for r in rows]),
                                  [r.success for r in rows], [r.steps for r in rows])
    return out


def load() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}


def record() -> None:
    """Add (or replace) this machine's goldens in ``tests/golden.json``."""
    data = load()
    data[fingerprint()] = compute()
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if "--record" in sys.argv:
        record()
        print(f"recorded goldens for {fingerprint()}")
    else:
        print(fingerprint())
        print(json.dumps(compute(), indent=1))
