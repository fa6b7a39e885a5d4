"""ppjax.image.color against published data: Sharma, Wu & Dalal (2005) CIEDE2000 test pairs, and
sRGB -> CIELAB values computed by an independent float64 implementation of the formulas."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ppjax.image.color import ciede2000, ciede2000_l2, ciede2000_rgb, rgb_to_lab

# (L1, a1, b1, L2, a2, b2, dE00): Sharma et al. 2005, Table 1 (all 34 pairs).
SHARMA = np.array([
    [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
    [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
    [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
    [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
    [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
    [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
    [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
    [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
    [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
    [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
    [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
    [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
    [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
    [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
    [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
    [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
    [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
    [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
    [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
    [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
])


def test_ciede2000_matches_sharma_table():
    got = np.asarray(ciede2000(jnp.asarray(SHARMA[:, :3], jnp.float32),
                               jnp.asarray(SHARMA[:, 3:6], jnp.float32)))
    np.testing.assert_allclose(got, SHARMA[:, 6], atol=2e-4)
    # symmetric
    back = np.asarray(ciede2000(jnp.asarray(SHARMA[:, 3:6], jnp.float32),
                                jnp.asarray(SHARMA[:, :3], jnp.float32)))
    np.testing.assert_allclose(back, SHARMA[:, 6], atol=2e-4)


def _lab_reference(rgb: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 + CIE 1976 L*a*b*, float64, D65 white from the matrix's own row sums."""
    c = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = c @ m.T
    white = np.array([0.95047, 1.0, 1.08883])
    t = xyz / white
    d = 6 / 29
    f = np.where(t > d**3, np.cbrt(t), t / (3 * d * d) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                     200 * (f[..., 1] - f[..., 2])], -1)


def test_rgb_to_lab_reference_values():
    rng = np.random.default_rng(0)
    rgb = np.concatenate([rng.random((200, 3)), np.eye(3), np.zeros((1, 3)), np.ones((1, 3)),
                          np.full((1, 3), 0.02)])
    got = np.asarray(rgb_to_lab(jnp.asarray(rgb, jnp.float32)))
    np.testing.assert_allclose(got, _lab_reference(rgb), atol=2e-3)
    # textbook anchors: white and pure sRGB red under D65
    np.testing.assert_allclose(got[-2], [100.0, 0.0, 0.0], atol=1e-2)
    np.testing.assert_allclose(got[200], [53.24, 80.09, 67.20], atol=2e-2)


def test_gradients_are_finite_at_the_singular_points():
    """Identical images (dE = 0), neutral greys (C = 0, hue atan2(0, 0)) and black."""
    x = jnp.stack([jnp.full((4, 4, 3), v) for v in (0.0, 0.5, 1.0)])
    x = x.at[:, 0, 0].set(jnp.array([0.2, 0.4, 0.6]))

    grads = jax.jit(lambda y: (jax.grad(lambda z: jnp.sum(ciede2000_l2(z, x)))(y),
                               jax.grad(lambda z: jnp.sum(ciede2000_rgb(z, x)))(y)))
    for y in (x, x.at[:, 1, 1].add(1 / 255), jnp.clip(x + 1 / 255, 0, 1)):
        g1, g2 = grads(y)
        assert np.isfinite(np.asarray(g1)).all() and np.isfinite(np.asarray(g2)).all()
    # away from the singular points the gradient is the true one (central differences)
    y = jnp.clip(x + 3 / 255, 0, 1).at[:, 2, 2].set(jnp.array([0.7, 0.3, 0.1]))
    g = np.asarray(grads(y)[1])
    h = 1e-3
    e = jnp.zeros_like(y).at[1, 2, 2, 0].set(h)
    f = jax.jit(lambda z: jnp.sum(ciede2000_rgb(z, x)))
    fd = (float(f(y + e)) - float(f(y - e))) / (2 * h)
    np.testing.assert_allclose(g[1, 2, 2, 0], fd, rtol=2e-2)
    assert float(jnp.max(ciede2000_rgb(x, x))) == 0.0


def test_jit_vmap_and_plain_calls_agree():
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.random((3, 5, 5, 3)), jnp.float32)
    b = jnp.asarray(rng.random((3, 5, 5, 3)), jnp.float32)
    plain = ciede2000_rgb(a, b)
    np.testing.assert_allclose(jax.jit(ciede2000_rgb)(a, b), plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jax.vmap(ciede2000_rgb)(a, b), plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ciede2000_l2(a, b),
                               np.sqrt((np.asarray(plain) ** 2).reshape(3, -1).sum(1)), rtol=1e-5)


def test_hand_written_gradients_match_torch_autograd():
    """The hand-written VJPs against torch autograd in float64 of the independent reference
    (tests/torch_attack_ref.py): CIEDE2000 in both Lab arguments (the Sharma pairs, with
    their neutral colours and hue wraps, and random pairs), rgb_to_lab, and the PerC distance
    on an image pair with clipped pixels."""
    import torch

    from tests import torch_attack_ref as ref

    rng = np.random.default_rng(3)
    rand1 = rng.uniform([0, -90, -90], [100, 90, 90], (4000, 3))
    rand2 = rand1 + rng.normal(0, 4, rand1.shape)
    lab1 = np.concatenate([SHARMA[:, :3], rand1]).astype(np.float32)
    lab2 = np.concatenate([SHARMA[:, 3:6], rand2]).astype(np.float32)
    w = rng.uniform(0.5, 2, len(lab1)).astype(np.float32)           # a non-uniform cotangent
    gj = jax.jit(jax.grad(lambda a, b: jnp.sum(ciede2000(a, b) * w), argnums=(0, 1)))(lab1, lab2)
    t1, t2 = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (lab1, lab2))
    gt = torch.autograd.grad((ref.ciede2000(t1, t2) * torch.tensor(w, dtype=torch.float64)).sum(),
                             (t1, t2))
    for a, b in zip(gj, gt, strict=True):
        np.testing.assert_allclose(np.asarray(a), b.numpy(), rtol=2e-3, atol=2e-4)

    x = rng.uniform(0.0, 1.0, (2, 24, 24, 3)).astype(np.float32)
    cot = rng.normal(size=(2, 24, 24, 3)).astype(np.float32)
    g_lab = jax.grad(lambda v: jnp.sum(rgb_to_lab(v) * cot))(x)
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (t_lab,) = torch.autograd.grad((ref.rgb_to_lab(tx) * torch.tensor(cot, dtype=torch.float64)).sum(),
                                   tx)
    np.testing.assert_allclose(np.asarray(g_lab), t_lab.numpy(), rtol=1e-3, atol=1e-3)

    x0 = rng.uniform(0.05, 0.95, (2, 24, 24, 3)).astype(np.float32)
    xa = np.clip(x0 + rng.uniform(-0.1, 0.1, x0.shape), 0, 1).astype(np.float32)
    xa[0, 0, :4] = [1.0, 0.3, 0.0]                                   # clipped channels
    g = jax.jit(jax.grad(lambda v: jnp.sum(ciede2000_l2(v, jnp.asarray(x0)))))(xa)
    tx = torch.tensor(xa, dtype=torch.float64, requires_grad=True)
    (gt,) = torch.autograd.grad(ref.perc_distance(tx, torch.tensor(x0, dtype=torch.float64)).sum(),
                                tx)
    gt = gt.numpy()
    np.testing.assert_allclose(np.asarray(g), gt, rtol=2e-3, atol=2e-3 * np.abs(gt).max())
