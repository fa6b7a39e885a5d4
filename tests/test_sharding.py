"""Batch sharding over 8 forced CPU devices gives the results of one device.

``--xla_force_host_platform_device_count`` only acts before JAX starts, so the sharded run lives
in a child process; it computes the single-device reference too (same process, same compiler),
and the parent compares. The batch (6) does not divide over 8 devices: the padding path runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppjax import parallel as sharding

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, json, sys
import jax, jax.numpy as jnp, numpy as np
from ppjax.judges import Judge, get_spec
from ppjax.models.resnet import ResNet18
from ppjax import parallel as sharding

spec = dataclasses.replace(get_spec("resnet50_places365"), name="tiny_resnet18",
                           model="ppjax.models.resnet:ResNet18", input_hw=(32, 32))
module = ResNet18(num_classes=10)
x = np.random.default_rng(0).random((6, 32, 32, 3), np.float32)
judge = Judge(module.init(jax.random.key(0), x[:1]), module, spec)
labels = np.arange(6, dtype=np.int32) % 10

def step(judge, x, labels):
    def loss(x):
        ll = jax.nn.log_softmax(judge(x))
        return -jnp.sum(jnp.take_along_axis(ll, labels[:, None], axis=1))
    g = jax.grad(loss)(x)
    return {"logits": judge(x), "grad": g,
            "x_next": jnp.clip(x + (2 / 255) * jnp.sign(g), 0.0, 1.0)}

with jax.default_device(jax.devices()[0]):
    ref = jax.tree.map(np.asarray, jax.jit(step)(judge, jnp.asarray(x), jnp.asarray(labels)))
mesh = sharding.batch_mesh()
got = sharding.sharded_call(step, judge, x, labels, mesh=mesh)
placed = sharding.shard_batch(sharding.pad_batch(x, sharding.padded_size(6, mesh)), mesh)
import ppjax
one = ppjax.attack("pgd", judge, x, labels, steps=3, mesh=sharding.batch_mesh(jax.devices()[:1]))
eight = ppjax.attack("pgd", judge, x, labels, steps=3)  # default: every device
attack = {k: [np.asarray(getattr(r, k)).tolist() for r in (one, eight)]
          for k in ("images", "success", "steps", "linf")}
from ppjax.attacks import StreamItem, stream
items = lambda: [StreamItem(i, x[i], 100 + i, int(labels[i])) for i in range(6)]
runs = [dict(stream("pgd", judge, items(), slots=3, steps=3, mesh=m))
        for m in (sharding.batch_mesh(jax.devices()[:1]), None)]  # None: slots over all 8
streamed = {k: [[np.asarray(getattr(r[i], k)).tolist() for i in range(6)] for r in runs]
            for k in ("images", "success", "steps", "linf")}
json.dump({
    "attack": attack,
    "stream": streamed,
    "devices": jax.device_count(),
    "layout": sharding.describe(placed),
    "distributed": sharding.init_distributed(),
    "ref": {k: v.tolist() for k, v in ref.items()},
    "got": {k: np.asarray(v).tolist() for k, v in got.items()},
}, sys.stdout)
"""


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PPJAX_", "JAX_", "SLURM"))}
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_batch_is_split_over_eight_devices(eight_devices):
    assert eight_devices["devices"] == 8
    assert eight_devices["layout"] == "8 shards of [1, 32, 32, 3] on cpu"
    assert eight_devices["distributed"] is False  # nothing set: single host, no-op


@pytest.mark.parametrize("key", ["logits", "grad", "x_next"])
def test_sharded_equals_one_device(eight_devices, key):
    ref = np.asarray(eight_devices["ref"][key], np.float32)
    got = np.asarray(eight_devices["got"][key], np.float32)
    assert got.shape == ref.shape and got.shape[0] == 6  # padding cut off
    scale = np.max(np.abs(ref))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("what", ["attack", "stream"])
@pytest.mark.parametrize("key", ["images", "success", "steps", "linf"])
def test_attack_entry_point_shards_and_equals_one_device(eight_devices, key, what):
    """``ppjax.attack`` and the streaming engine (slots rounded up to 8 and split over the 8
    devices) give one device's results."""
    one, eight = (np.asarray(v) for v in eight_devices[what][key])
    assert one.shape == eight.shape and one.shape[0] == 6  # padding cut off
    if key == "images":  # 8-bit outputs: a reduction-order difference may flip a rare rounding
        assert np.mean(np.abs(one - eight) < 0.5 / 255) >= 0.999
    else:
        np.testing.assert_allclose(eight, one, rtol=0, atol=1e-6)


def test_pad_batch_repeats_last_image():
    x = np.arange(3 * 2, dtype=np.float32).reshape(3, 2)
    np.testing.assert_array_equal(sharding.pad_batch(x, 5), np.concatenate([x, x[-1:], x[-1:]]))
    with pytest.raises(ValueError, match="cannot pad"):
        sharding.pad_batch(x, 2)


def test_init_distributed_rejects_partial_settings(monkeypatch):
    monkeypatch.setenv("PPJAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    for name in sharding.ENV_NUM_PROCESSES + sharding.ENV_PROCESS_ID:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="set all three"):
        sharding.init_distributed()


def test_data_parallel_pads_cuts_back_and_refuses_mixed_batches():
    """One device here: a Python driver sees its batch placed (and padded to the local device
    count), gets the judge-like shared tree as is, and its outputs come back cut to the batch;
    ``sharded_call`` is the same path with ``fn`` jitted. Batches of different sizes are refused."""
    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    seen = {}

    def driver(shared, batched):
        seen["shape"] = batched["x"].shape
        return {"y": batched["x"] * shared, "n": np.int32(7)}

    out = sharding.run_data_parallel(driver, np.float32(3), {"x": x})
    assert seen["shape"][0] % sharding.batch_mesh().size == 0 and seen["shape"][0] >= 5
    np.testing.assert_array_equal(out["y"], 3 * x)
    assert out["n"] == 7
    np.testing.assert_array_equal(sharding.sharded_call(lambda s, a, b: a * s + b, np.float32(2),
                                                        x, x), 3 * x)
    with pytest.raises(ValueError, match="disagree on the batch size: \\[3, 5\\]"):
        sharding.sharded_call(lambda s, a, b: a + b, np.float32(2), x, x[:3])
