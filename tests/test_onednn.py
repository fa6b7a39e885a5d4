"""The oneDNN convolution path (ppjax/onednn.py) against XLA's own convolution."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ppjax import onednn

pytestmark = pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN path unavailable: {onednn.why_unavailable()}")

DN = ("NHWC", "HWIO", "NHWC")


def _xla(x, w, strides, padding, groups):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN,
                                        feature_group_count=groups,
                                        precision=jax.lax.Precision.HIGHEST)


def _relerr(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1e-12, np.max(np.abs(b))))


# stem, 3x3 same, strided 1x1 (ResNet downsample), odd sizes with asymmetric padding,
# depthwise stride 2 (MobileNetV2 / Keras "same"), grouped
CASES = [
    ((2, 23, 19, 3), (7, 7, 3, 16), (2, 2), ((3, 3), (3, 3)), 1),
    ((2, 15, 17, 16), (3, 3, 16, 24), (1, 1), "SAME", 1),
    ((2, 15, 17, 16), (1, 1, 16, 32), (2, 2), "VALID", 1),
    ((1, 14, 13, 8), (3, 3, 8, 8), (2, 2), ((0, 1), (1, 0)), 1),
    ((2, 16, 16, 12), (3, 3, 1, 12), (2, 2), ((0, 1), (0, 1)), 12),
    ((2, 9, 11, 12), (3, 3, 4, 6), (1, 1), "SAME", 3),
]


@pytest.mark.parametrize("xs,ws,strides,padding,groups", CASES)
def test_conv2d_f32_forward_and_gradients_match_xla(xs, ws, strides, padding, groups):
    kx, kw, kc = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, xs, jnp.float32)
    w = jax.random.normal(kw, ws, jnp.float32)
    ref = _xla(x, w, strides, padding, groups)
    got = jax.jit(lambda x, w: onednn.conv2d(x, w, strides, padding, groups))(x, w)
    assert got.shape == ref.shape
    assert _relerr(got, ref) < 1e-5
    # gradients of a non-trivial scalar: input (oneDNN backward-data) and kernel (XLA)
    c = jax.random.normal(kc, ref.shape, jnp.float32)
    gref = jax.grad(lambda x, w: jnp.sum(jnp.tanh(_xla(x, w, strides, padding, groups)) * c),
                    argnums=(0, 1))(x, w)
    ggot = jax.jit(jax.grad(
        lambda x, w: jnp.sum(jnp.tanh(onednn.conv2d(x, w, strides, padding, groups)) * c),
        argnums=(0, 1)))(x, w)
    assert _relerr(ggot[0], gref[0]) < 1e-5
    assert _relerr(ggot[1], gref[1]) < 1e-5


@pytest.mark.parametrize("xs,ws,strides,padding,groups", CASES[:2] + CASES[4:5])
def test_conv2d_bf16_matches_f32_on_bf16_inputs(xs, ws, strides, padding, groups):
    """bf16 operands, f32 accumulation: equal to the f32 convolution of the same (bf16-exact)
    values up to the final rounding to bf16."""
    kx, kw = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, xs, jnp.float32).astype(jnp.bfloat16)
    w = jax.random.normal(kw, ws, jnp.float32).astype(jnp.bfloat16)
    ref = _xla(x.astype(jnp.float32), w.astype(jnp.float32), strides, padding, groups)
    got = onednn.conv2d(x, w, strides, padding, groups)
    assert got.dtype == jnp.bfloat16
    assert _relerr(got.astype(jnp.float32), ref) < 2 ** -7
    dy = jax.random.normal(kx, ref.shape, jnp.float32).astype(jnp.bfloat16)
    _, pull = jax.vjp(lambda x: _xla(x, w.astype(jnp.float32), strides, padding, groups),
                      x.astype(jnp.float32))
    dref = pull(dy.astype(jnp.float32))[0]
    _, pull = jax.vjp(lambda x: onednn.conv2d(x, w, strides, padding, groups), x)
    assert _relerr(pull(dy)[0].astype(jnp.float32), dref) < 2 ** -7


def test_conv2d_refuses_bad_input():
    x = jnp.zeros((1, 8, 8, 4), jnp.float32)
    with pytest.raises(ValueError, match="both be float32 or both bfloat16"):
        onednn.conv2d(x, jnp.zeros((3, 3, 4, 4), jnp.bfloat16))
    with pytest.raises(ValueError, match="does not fit"):
        onednn.conv2d(x, jnp.zeros((3, 3, 3, 4), jnp.float32))
    with pytest.raises(ValueError, match="expects x"):
        onednn.conv2d(x[0], jnp.zeros((3, 3, 4, 4), jnp.float32))


def test_missing_wheels_say_what_to_install(monkeypatch):
    monkeypatch.setattr(onednn, "_dist_file", lambda dist, suffix: None)
    with pytest.raises(onednn.OneDnnUnavailable, match="pip install"):
        onednn._paths()


def _has_amx() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return cpuinfo.exists() and "amx_bf16" in cpuinfo.read_text()


@pytest.mark.skipif(not _has_amx(), reason="this CPU has no AMX-BF16")
def test_bf16_reaches_amx():
    """The reason this path exists: bf16 convolutions run on the AMX tiles (forward and input
    gradient), which XLA's own CPU convolutions never use."""
    args = ((8, 32, 32, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), 1, jnp.bfloat16)
    assert "amx" in onednn.kernel_name(*args)
    assert "amx" in onednn.kernel_name(*args, backward=True)


def test_accelerated_resnet_matches_xla_judge(resnet_uncalibrated, photos_256):
    """ResNet-50 with BN folded and every conv through oneDNN: same logits and same input
    gradient as the XLA judge in f32; same top-1 in bf16 on real photos.

    The input gradient is compared in norm (tighter against the folded XLA judge, the same
    arithmetic): on real photos max-pool ties and ReLUs at zero make single elements flip
    under any float reordering, folding alone included."""
    from ppjax.fold import fold_bn

    resnet_standin = resnet_uncalibrated  # engine parity: see the fixture
    x = jnp.asarray(photos_256[:2])
    fast = onednn.accelerate(resnet_standin)  # includes its own f32 check on a random image
    assert onednn.is_accelerated(fast) and not onednn.is_accelerated(resnet_standin)

    def loss(j, x):
        return jnp.sum(jax.nn.log_softmax(j(x).astype(jnp.float32))[:, 0])

    run = jax.jit(lambda j, x: (j(x), jax.grad(loss, argnums=1)(j, x)))
    ref_z, ref_g = run(resnet_standin, x)
    _, fold_g = run(fold_bn(resnet_standin, check=False), x)
    z, g = run(fast, x)
    assert _relerr(z, ref_z) < 1e-4
    g, ref_g, fold_g = (np.asarray(a, np.float64) for a in (g, ref_g, fold_g))
    assert np.linalg.norm(g - fold_g) / np.linalg.norm(fold_g) < 2e-3
    assert np.linalg.norm(g - ref_g) / np.linalg.norm(ref_g) < 1e-2
    assert np.mean(np.sign(g) == np.sign(ref_g)) > 0.999
    z16 = jax.jit(lambda j, x: j(x))(fast.with_dtype(jnp.bfloat16), x)
    assert z16.dtype == jnp.float32
    np.testing.assert_array_equal(np.argmax(z16, -1), np.argmax(ref_z, -1))
    assert _relerr(z16, ref_z) < 0.05


def test_accelerated_nima_mobilenetv2_matches_torch(tmp_path, photo_paths):
    """Depthwise (grouped) convolutions and folded BatchNorm through oneDNN against the torch
    replica of nima.pytorch (random weights, randomised BN statistics, the real file layout)."""
    import torch

    from converters import nima_mobilenetv2
    from ppjax import load_judge
    from tests.conftest import photos_at
    from tests.test_nima import BINS, _replica_state_dict
    from tests.torch_ref.mobilenet_v2 import NIMA, nima_probs

    x = photos_at(photo_paths, (224, 224), 2)
    sd = _replica_state_dict(seed=5)
    ref = NIMA()
    ref.load_state_dict(sd, strict=True)
    torch.save(sd, tmp_path / "nima224.pth")
    nima_mobilenetv2.convert(tmp_path / "nima224.pth", weights_dir=tmp_path)
    plain = load_judge("nima_mobilenetv2", weights_dir=tmp_path)
    judge = onednn.accelerate(plain)
    t_probs = nima_probs(ref, x).numpy()
    run = jax.jit(lambda j, x: j(x))
    probs = np.asarray(run(judge, x))
    assert np.abs(probs - t_probs).max() < 1e-5

    def score_err(j):  # bf16 against the f32 torch reference, in NIMA score units (1..10)
        p = np.asarray(run(j.with_dtype(jnp.bfloat16), x), np.float64)
        return np.abs((p * BINS).sum(-1) - (t_probs * BINS).sum(-1)).max()

    # bf16 operands with f32 accumulation and f32 activations: no worse than XLA's own bf16
    err, xla_err = score_err(judge), score_err(plain)
    print(f"bf16 NIMA score error vs torch f32: oneDNN {err:.4f}, XLA {xla_err:.4f}")
    assert err < max(1.5 * xla_err, 0.02)


def test_attack_backend_onednn_equals_xla(resnet_standin, photos_256):
    """The engine's oneDNN backend gives the XLA backend's attack in f32 (same steps, same
    pixels up to gradient-sign flips at float noise), and "auto" picks it on one CPU device."""
    import ppjax
    from ppjax.attacks.api import _use_onednn

    x = photos_256[:2]
    kw = dict(eps=4 / 255, steps=3, early_stop=False)
    a = ppjax.attack("ifgsm", resnet_standin, x, backend="xla", **kw)
    b = ppjax.attack("ifgsm", resnet_standin, x, backend="onednn", **kw)
    same = np.mean(np.asarray(a.images) == np.asarray(b.images))
    assert same > 0.99, same
    np.testing.assert_array_equal(np.asarray(a.success), np.asarray(b.success))
    assert _use_onednn("auto", jnp.bfloat16, None) and _use_onednn("auto", None, None)
    assert not _use_onednn("auto", jnp.float16, None) and not _use_onednn("xla", None, None)
    with pytest.raises(ValueError, match="backend must be one of"):
        _use_onednn("cuda", None, None)
