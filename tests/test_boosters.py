"""Transfer boosters (DI, TI, VMI, SGM; MI's accumulation) against torchattacks 3.5.1 on the same
inputs, the random parts statistically, and each booster inside the one loop (EOT JPEG, the
appeal term, traced values without recompiling, the eps constraint after 8-bit rounding).

torchattacks' internals are observed, not re-implemented: its RNG calls are fed chosen values
(``unittest.mock``), and the values it computes are read where it hands them to ``torch.abs`` /
``Tensor.sign`` / ``torch.autograd.grad``."""

from __future__ import annotations

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchattacks

import ppjax
from ppjax.attacks import boosters, count_traces, get_attack, resolve_attack, steps
from ppjax.judges import Judge, JudgeSpec

HW = 16  # tiny images: the agreements are about arithmetic, not about networks


def _nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def _nhwc(t):
    return np.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


class TorchTiny(torch.nn.Module):
    """logits = W2 tanh(W1 x + b1) + b2 on the flattened NCHW image: non-linear, so gradients
    differ between neighbours."""

    def __init__(self, hw=HW, hidden=12, classes=5, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.l1 = torch.nn.Linear(3 * hw * hw, hidden)
        self.l2 = torch.nn.Linear(hidden, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.l2(torch.tanh(self.l1(x.reshape(x.shape[0], -1))))


def _jax_tiny(tm: TorchTiny):
    """The same function of an NHWC batch in JAX."""
    w1, b1 = (jnp.asarray(p.detach().numpy()) for p in (tm.l1.weight, tm.l1.bias))
    w2, b2 = (jnp.asarray(p.detach().numpy()) for p in (tm.l2.weight, tm.l2.bias))

    def f(x):
        flat = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
        hi = jax.lax.Precision.HIGHEST
        return jnp.dot(jnp.tanh(jnp.dot(flat, w1.T, precision=hi) + b1[None]), w2.T, precision=hi) + b2[None]

    return f


class _Record:
    """Wraps a torch function, keeping clones of its first positional argument."""

    def __init__(self, fn):
        self.fn, self.args = fn, []

    def __call__(self, *a, **k):
        self.args.append(a[0].detach().clone())
        return self.fn(*a, **k)


def _close(ours, ref, tol=1e-5):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * max(np.abs(ref).max(), 1e-12))


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    x = rng.integers(20, 236, (2, HW, HW, 3)).astype(np.float32) / 255.0
    return x, np.array([1, 3])


# ----------------------------------------------------------------------------- TI


def test_ti_kernel_and_smoothed_gradient_match_torchattacks(batch):
    x, y = batch
    tm = TorchTiny()
    atk = torchattacks.TIFGSM(tm, eps=8 / 255, alpha=2 / 255, steps=1, decay=0.0,
                              len_kernel=7, nsig=3, diversity_prob=0.0)
    theirs = atk.kernel_generation()  # [3, 1, 7, 7]
    ours = np.asarray(steps.gaussian_kernel(7, 3.0))
    _close(ours, theirs[0, 0], 1e-6)
    assert np.all(theirs == theirs[:1])
    _close(np.asarray(steps.gaussian_kernel(15, 3.0)), torchattacks.TIFGSM(tm).kernel_generation()[0, 0],
           1e-6)

    # the smoothed gradient as TIFGSM computes it: the argument of its torch.abs
    grads, absargs = _Record(torch.autograd.grad), _Record(torch.abs)
    with mock.patch("torch.autograd.grad", side_effect=lambda *a, **k: _grab(grads, a, k)), \
            mock.patch("torch.abs", side_effect=absargs):
        atk(_nchw(x), torch.from_numpy(y))
    g = _nhwc(grads.args[0])
    smoothed = _nhwc(absargs.args[0])
    rule = steps.translation_invariant(7, jnp.float32(3.0))
    out, _ = rule.update(jnp.asarray(g), rule.init(g))
    _close(out, smoothed)


def _grab(rec, a, k):
    out = rec.fn(*a, **k)
    rec.args.append(out[0].detach().clone())
    return out


# ----------------------------------------------------------------------------- MI


def test_mi_accumulation_matches_torchattacks(batch):
    """ppjax's momentum rule normalises by the L1 norm, torchattacks by the mean absolute value:
    the accumulations differ by the constant factor D = H W 3 and the directions are equal."""
    x, y = batch
    tm = TorchTiny(seed=1)
    atk = torchattacks.MIFGSM(tm, eps=8 / 255, alpha=1 / 255, steps=3, decay=0.7)
    grads, signed = _Record(torch.autograd.grad), _Record(torch.Tensor.sign)
    with mock.patch("torch.autograd.grad", side_effect=lambda *a, **k: _grab(grads, a, k)), \
            mock.patch.object(torch.Tensor, "sign", lambda self: _sign(signed, self)):
        atk(_nchw(x), torch.from_numpy(y))
    rule = steps.momentum_sign(jnp.float32(0.7))
    state = rule.init(jnp.zeros(x.shape))
    d = x[0].size
    for g, m in zip(grads.args, signed.args, strict=True):
        direction, state = rule.update(jnp.asarray(_nhwc(g)), state)
        _close(np.asarray(state[1].trace) * d, _nhwc(m))
        np.testing.assert_array_equal(np.asarray(direction), np.sign(_nhwc(m)))


_TORCH_SIGN = torch.Tensor.sign


def _sign(rec, t):
    rec.args.append(t.detach().clone())
    return _TORCH_SIGN(t)


# ----------------------------------------------------------------------------- VMI


def test_vmi_variance_term_matches_torchattacks(batch):
    """Same neighbour samples (read from torchattacks' ``randn_like(...).uniform_`` draws): our
    neighbour gradient and variance term, and the momentum it enters, equal its values."""
    x, y = batch
    tm = TorchTiny(seed=2)
    n = 3
    atk = torchattacks.VMIFGSM(tm, eps=8 / 255, alpha=2 / 255, steps=2, decay=1.0, N=n,
                               beta=1.5)
    noises, absargs, grads = [], _Record(torch.abs), _Record(torch.autograd.grad)
    signed = _Record(torch.Tensor.sign)
    real_randn_like = torch.randn_like

    def randn_like(t, *a, **k):
        out = real_randn_like(t, *a, **k)
        noises.append(out)  # filled in place by .uniform_ right after
        return out

    with mock.patch("torch.randn_like", side_effect=randn_like), \
            mock.patch("torch.abs", side_effect=absargs), \
            mock.patch("torch.autograd.grad", side_effect=lambda *a, **k: _grab(grads, a, k)), \
            mock.patch.object(torch.Tensor, "sign", lambda self: _sign(signed, self)):
        atk(_nchw(x), torch.from_numpy(y))
    assert len(noises) == 2 * n and len(grads.args) == 2 * (n + 1)
    g1, g2 = _nhwc(grads.args[0]), _nhwc(grads.args[n + 1])
    v1_theirs = _nhwc(absargs.args[1]) - g2  # step 2 normalises g2 + v1
    noise = jnp.asarray(np.stack([_nhwc(t) for t in noises[:n]]))
    assert float(jnp.max(jnp.abs(noise))) <= 1.5 * 8 / 255 + 1e-7

    f = _jax_tiny(tm)
    yj = jnp.asarray(y)
    b = len(y)

    def grad_at(x_img):  # torchattacks' gradient: of the batch-mean CE, ascended
        def loss(z):
            return jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(f(z)), yj[:, None], 1))
        return jax.grad(loss)(x_img)

    x1 = jnp.asarray(x)
    _close(grad_at(x1), g1)
    mean_nb = boosters.neighbour_gradient(lambda u, i: grad_at(x1 + u), noise)
    _close(mean_nb - grad_at(x1), v1_theirs)

    # the variance term inside the step rule, and the momentum it enters (ppjax minimises, so
    # its gradients are -B times torchattacks'; the direction is the same)
    rule = steps.make_step_rule(jax.tree.map(jnp.float32, get_attack("vmifgsm", vmi_samples=n,
                                                                      momentum=1.0)))
    state = rule.init(jnp.zeros(x.shape))
    assert len(tm.seen) == 2 * (n + 1)
    x2 = jnp.asarray(_nhwc(tm.seen[n + 1]))
    d = x[0].size
    # step 1: v = 0; the state now holds v1 (in ppjax's sign and scale)
    g = -b * grad_at(x1)
    direction, state = rule.update(g, state, None, neighbour_grad=-b * mean_nb)
    _close(np.asarray(state[0].v) / -b, v1_theirs)
    # step 2: g2 + v1 normalised and accumulated: torchattacks' momentum (what it signs)
    for m in signed.args:
        _close(-np.asarray(state[1][1].trace) * d, _nhwc(m), 1e-4)
        np.testing.assert_array_equal(np.asarray(direction), -np.sign(_nhwc(m)))
        g = -b * grad_at(x2)
        direction, state = rule.update(g, state, None, neighbour_grad=g)


# ----------------------------------------------------------------------------- DI


@pytest.mark.parametrize("rnd,top,left", [(57, 3, 0), (60, 0, 3), (63, 0, 0)])
def test_di_transform_matches_torchattacks(rnd, top, left):
    x = np.random.default_rng(1).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    atk = torchattacks.DIFGSM(TorchTiny(hw=64), resize_rate=0.9, diversity_prob=0.5)
    draws = [torch.tensor([rnd], dtype=torch.int32), torch.tensor([top], dtype=torch.int32),
             torch.tensor([left], dtype=torch.int32)]
    with mock.patch("torch.randint", side_effect=draws), \
            mock.patch("torch.rand", return_value=torch.tensor([0.1])):
        theirs = _nhwc(atk.input_diversity(_nchw(x)))
    ours = boosters.diverse_input(jnp.asarray(x), jnp.array([rnd]), jnp.array([top]),
                                  jnp.array([left]), jnp.array([True]))
    _close(ours, theirs)
    kept = boosters.diverse_input(jnp.asarray(x), jnp.array([rnd]), jnp.array([top]),
                                  jnp.array([left]), jnp.array([False]))
    np.testing.assert_array_equal(np.asarray(kept), x)


def test_di_and_ti_transforms_jit_batch_and_gradient():
    """Same results jitted and plain, batched and one image at a time; finite gradients."""
    x = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (3, 24, 20, 3)).astype(np.float32))
    choice = (jnp.array([21, 22, 23]), jnp.array([1, 0, 0]), jnp.array([2, 1, 0]),
              jnp.array([True, True, False]))
    plain = boosters.diverse_input(x, *choice)
    np.testing.assert_allclose(jax.jit(boosters.diverse_input)(x, *choice), plain, atol=1e-6)
    for i in range(3):
        one = boosters.diverse_input(x[i:i + 1], *(c[i:i + 1] for c in choice))
        np.testing.assert_allclose(one[0], plain[i], atol=1e-6)
    assert plain.shape == x.shape and np.all(np.asarray(plain[0, 0]) == 0)  # the padded top row
    g = jax.grad(lambda a: jnp.sum(boosters.diverse_input(a, *choice) ** 2))(x)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.abs(g).sum()) > 0
    k = steps.gaussian_kernel(5, 2.0)
    sm = steps.smooth(x, k)
    np.testing.assert_allclose(jax.jit(steps.smooth)(x, k), sm, atol=1e-6)
    np.testing.assert_allclose(steps.smooth(x[1:2], k)[0], sm[1], atol=1e-6)
    g = jax.grad(lambda a: jnp.sum(steps.smooth(a, k) ** 2))(x)
    assert np.all(np.isfinite(np.asarray(g)))


def test_di_choices_distribution():
    """Sizes uniform on [floor(0.9 H), H), offsets uniform on [0, H - size), applied with
    probability p: counts within 5 binomial standard deviations."""
    n, h = 6000, 64
    keys = jax.vmap(jax.random.key)(jnp.arange(n))
    size, top, left, apply = (np.asarray(a) for a in jax.jit(
        boosters.diversity_choices, static_argnums=1)(keys, (h, h), 0.9, 0.3))
    assert size.min() == 57 and size.max() == 63
    counts = np.bincount(size - 57, minlength=7)
    p = 1 / 7
    assert np.all(np.abs(counts - n * p) < 5 * np.sqrt(n * p * (1 - p))), counts
    assert np.all(top < h - size) and np.all(left < h - size) and top.min() == 0
    for s in (57, 63):  # offsets uniform given the size
        t = top[size == s]
        assert len(np.unique(t)) == h - s
    assert abs(apply.mean() - 0.3) < 5 * np.sqrt(0.3 * 0.7 / n)
    sel = size == 57  # given the size, the two offsets are independent draws
    assert abs(np.corrcoef(top[sel], left[sel])[0, 1]) < 5 / np.sqrt(sel.sum())


# ----------------------------------------------------------------------------- SGM


@pytest.fixture(scope="module")
def resnet18(tmp_path_factory):
    from benchmarks.torch_ref.places365_zoo import build
    from ppjax import load_judge
    from ppjax.convert import resnet18_places365

    d = tmp_path_factory.mktemp("r18")
    model = build("resnet18_places365")
    src = d / "resnet18_places365.pth.tar"
    torch.save(resnet18_places365.csail_layout(model.state_dict()), src)
    resnet18_places365.convert(src, weights_dir=d)
    return model, load_judge("resnet18_places365", weights_dir=d)


def test_sgm_forward_unchanged_gradient_matches_torch_hooks(resnet18):
    """Forward bit for bit unchanged; the input gradient equals torch's with every residual
    branch's output gradient (after ``bn2``) scaled by gamma (a tensor hook)."""
    model, judge = resnet18
    gamma = 0.2
    x = np.random.default_rng(2).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225],
                                                                       np.float32)
    sgm = boosters.skip_gradient(judge, gamma)

    def f(j):
        return jax.jit(jax.value_and_grad(lambda v: j.module.apply(j.variables, v)[0, 7]))

    (z0, g0), (z1, g1) = f(judge)(jnp.asarray(x)), f(sgm)(jnp.asarray(x))
    assert float(z0) == float(z1)
    assert not np.allclose(np.asarray(g0), np.asarray(g1), rtol=0.1)

    from benchmarks.torch_ref.places365_zoo import BasicBlock

    def decay(module, inputs, out):  # the residual branch's output: its gradient times gamma
        out.register_hook(lambda g: g * gamma)

    hooks = [m.bn2.register_forward_hook(decay) for m in model.modules()
             if isinstance(m, BasicBlock)]
    try:
        xt = _nchw((x - mean) / std).requires_grad_(True)
        model(xt)[0, 7].backward()
    finally:
        for hk in hooks:
            hk.remove()
    # d/dx01 = d/dxn / std
    theirs = _nhwc(xt.grad) / std
    np.testing.assert_allclose(np.asarray(g1), theirs, rtol=1e-3, atol=1e-4 * np.abs(theirs).max())


def test_sgm_through_the_onednn_engine(resnet18):
    """The attack's default CPU path wraps the judge (folded BatchNorm, oneDNN convolutions):
    SGM reaches the ResNet inside and gives the XLA path's gradient."""
    from ppjax.accel import onednn

    if not onednn.capabilities().available:
        pytest.skip(f"oneDNN unavailable: {onednn.capabilities().reason}")
    _, judge = resnet18
    fast = boosters.skip_gradient(onednn.accelerate(judge, check=False), 0.2)
    assert onednn.is_accelerated(fast)
    x = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (1, 64, 64, 3)).astype(np.float32))

    def grad(j):
        return np.asarray(jax.jit(jax.grad(lambda v: j.module.apply(j.variables, v)[0, 3]))(x))

    ref, plain, got = grad(boosters.skip_gradient(judge, 0.2)), grad(judge), grad(fast)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < 2e-2 < np.linalg.norm(plain - ref) / np.linalg.norm(ref), err


def test_sgm_refuses_judges_without_residual_blocks():
    with pytest.raises(ValueError, match="residual blocks"):
        boosters.skip_gradient(_tiny_judge(), 0.2)
    with pytest.raises(ValueError, match="residual blocks"):
        ppjax.attack("pgd", _tiny_judge(), jnp.zeros((1, HW, HW, 3)), preset="sgm")


# ----------------------------------------------------------------------------- in the loop


class _Avg(nn.Module):
    classes: int = 5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        b = x.shape[0]
        z = nn.Conv(4, (3, 3), name="conv")(x - 0.5)
        return nn.Dense(self.classes, name="fc")(jnp.tanh(z).reshape(b, 4, -1, 4).mean(2)
                                                 .reshape(b, -1))


def _tiny_judge(seed=0):
    spec = JudgeSpec(name="tiny", model="-", input_hw=(HW, HW), output="logits", filename="-",
                     url="-", converter="-", architecture="test", preprocessing="none")
    mod = _Avg()
    v = mod.init(jax.random.key(seed), jnp.zeros((1, HW, HW, 3)))
    return Judge(variables=jax.tree.map(lambda a: a * 4.0, v), module=mod, spec=spec)


class _Appeal(nn.Module):
    """A stand-in appeal judge: a 10-bin distribution (as NIMA) from mean colours."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jax.nn.softmax(nn.Dense(10, name="fc")(jnp.mean(x, (1, 2))), -1)


def _appeal_judge():
    spec = JudgeSpec(name="appeal", model="-", input_hw=(HW, HW), output="distribution",
                     filename="-", url="-", converter="-", architecture="test",
                     preprocessing="none")
    mod = _Appeal()
    return Judge(variables=mod.init(jax.random.key(5), jnp.zeros((1, HW, HW, 3))), module=mod,
                 spec=spec)


def test_boosters_with_eot_jpeg_and_appeal_stay_in_eps_and_do_not_recompile(batch):
    x, _ = batch
    judge, appeal = _tiny_judge(), _appeal_judge()
    base = dict(steps=3, eot="jpeg", eot_samples=2, subsampling="444", sgm_gamma=1.0)
    r1 = ppjax.attack(resolve_attack("mifgsm", "all", base, appeal_judge=True), judge, x,
                      driver="python", extra_judges={"appeal": appeal})
    more = dict(di_prob=0.9, di_resize_rate=0.8, ti_nsig=2.0, vmi_beta=1.0, appeal_weight=2.0,
                eps=6 / 255)
    with count_traces() as second:
        r2 = ppjax.attack(resolve_attack("mifgsm", "all", {**base, **more}, appeal_judge=True),
                          judge, x, driver="python", extra_judges={"appeal": appeal})
    assert second["step"] == 0, "a traced booster value recompiled"
    for r, eps in ((r1, 8), (r2, 6)):
        assert np.all(np.asarray(r.linf) * 255 <= eps + 1e-3)
        imgs = np.asarray(r.images) * 255
        np.testing.assert_allclose(imgs, np.round(imgs), atol=1e-3)
        assert "appeal_after" in r.extras
    assert not np.array_equal(np.asarray(r1.images), np.asarray(r2.images))


def test_boosters_reduce_to_their_base_at_neutral_values(batch):
    """DI with p = 0 is PGD; VMI with beta = 0 is MI (v = g(x) - g(x) = 0); TI with a 1x1 kernel
    is no smoothing: the same images bit for bit."""
    x, _ = batch
    j = _tiny_judge(1)
    kw = dict(steps=4, driver="python", fused_eval=False)
    pairs = [
        (("pgd", "di", dict(di_prob=0.0)), ("pgd", "di", dict(di=False))),
        (("mifgsm", "vmi", dict(vmi_beta=0.0)), ("mifgsm", "vmi", dict(vmi_samples=0))),
        (("pgd", "ti", dict(ti_kernel=1)), ("pgd", "ti", dict(ti_kernel=0))),
    ]
    for (n1, p1, o1), (n2, p2, o2) in pairs:
        a = ppjax.attack(n1, j, x, preset=p1, **o1, **kw)
        b = ppjax.attack(n2, j, x, preset=p2, **o2, **kw)
        np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images), err_msg=p1)
    c = ppjax.attack("pgd", j, x, preset="di", di_prob=1.0, **kw)
    assert not np.array_equal(np.asarray(c.images), np.asarray(b.images))
