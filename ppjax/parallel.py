"""Data parallelism: the batch split over every device (all hosts), the judge replicated.

Attacks are per-image computations, so sharding is pure data parallelism: a 1-D
:class:`jax.sharding.Mesh` with axis ``"batch"`` over ``jax.devices()``, images and every other
per-image array placed with ``NamedSharding(mesh, P("batch"))``, weights with ``P()``
(replicated). A jitted function called on such arrays is partitioned by XLA; nothing inside the
attack changes. The batch is padded up to a multiple of the device count by repeating its last
image (:func:`pad_batch`, the one padding of ppjax; results for the pad are dropped), so any batch
size works.

Several hosts: call :func:`init_distributed` first on every host (it wraps
``jax.distributed.initialize``); then ``jax.devices()`` lists the devices of all hosts, each host
passes *its own* slice of the batch to :func:`shard_batch`, and :func:`gather` brings results
back to every host.

    from ppjax.parallel import init_distributed, sharded_call
    init_distributed()                       # no-op on a single host
    out = sharded_call(step, judge, x)       # x: [B, ...] split over all devices
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger("ppjax")

AXIS = "batch"

# Environment read by init_distributed (PPJAX_* first, then JAX's own names).
ENV_COORDINATOR = ("PPJAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_ADDRESS")
ENV_NUM_PROCESSES = ("PPJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES")
ENV_PROCESS_ID = ("PPJAX_PROCESS_ID", "JAX_PROCESS_ID")
# Cluster managers that jax.distributed.initialize() detects by itself.
AUTO_DETECTED = ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMI_SIZE")


def _env(names: tuple[str, ...]) -> str | None:
    for n in names:
        if os.environ.get(n):
            return os.environ[n]
    return None


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None,
                     local_device_ids: list[int] | None = None) -> bool:
    """Join a multi-host run; returns True when ``jax.distributed`` was initialised.

    Arguments win over the environment: ``PPJAX_COORDINATOR_ADDRESS`` (``host:port`` of
    process 0), ``PPJAX_NUM_PROCESSES``, ``PPJAX_PROCESS_ID`` (or the ``JAX_*`` names). Under
    SLURM or Open MPI with none of them set, JAX detects everything itself. With nothing set
    this is a single-host run and nothing happens. Must run before any other JAX call.
    """
    coordinator_address = coordinator_address or _env(ENV_COORDINATOR)
    if num_processes is None and _env(ENV_NUM_PROCESSES):
        num_processes = int(_env(ENV_NUM_PROCESSES))
    if process_id is None and _env(ENV_PROCESS_ID):
        process_id = int(_env(ENV_PROCESS_ID))
    explicit = coordinator_address or num_processes is not None or process_id is not None
    if not explicit and not any(os.environ.get(n) for n in AUTO_DETECTED):
        return False
    if explicit and (coordinator_address is None or num_processes is None or process_id is None):
        raise ValueError(
            "init_distributed: set all three of coordinator address, number of processes and "
            f"process id (got {coordinator_address!r}, {num_processes!r}, {process_id!r}); env: "
            f"{ENV_COORDINATOR[0]}, {ENV_NUM_PROCESSES[0]}, {ENV_PROCESS_ID[0]}"
        )
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=local_device_ids)
    log.info("jax.distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


def batch_mesh(devices=None) -> Mesh:
    """1-D mesh ``("batch",)`` over ``devices`` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def padded_size(batch: int, mesh: Mesh) -> int:
    """Smallest multiple of the mesh size that holds ``batch`` images."""
    n = mesh.size
    return -(-batch // n) * n


def pad_batch(x, size: int):
    """Pad axis 0 of ``x`` [B, ...] to ``size`` by repeating the last entry."""
    x = np.asarray(x)
    if x.shape[0] == size:
        return x
    if x.shape[0] == 0 or x.shape[0] > size:
        raise ValueError(f"pad_batch: cannot pad a batch of {x.shape[0]} to {size}")
    reps = np.repeat(x[-1:], size - x.shape[0], axis=0)
    return np.concatenate([x, reps], axis=0)


def shard_batch(tree, mesh: Mesh):
    """Place every leaf of ``tree`` (arrays [B_local, ...], this host's part of the batch) as one
    global array split over ``mesh`` along axis 0. Local batches must divide evenly over the
    host's devices (see :func:`pad_batch`)."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)),
                        tree)


def replicate(tree, mesh: Mesh):
    """Place every leaf of ``tree`` (e.g. a :class:`~ppjax.judges.Judge`) on every device."""
    return jax.device_put(tree, replicated(mesh))


def gather(tree) -> Any:
    """Every leaf as a full numpy array on this host (all hosts' parts)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def run_data_parallel(fn: Callable, replicated_args, batched, mesh: Mesh | None = None):
    """``fn(replicated_args, batched)`` with the batch split over all devices: the one
    implementation of padding, placing, gathering and cutting back (:func:`sharded_call` is it
    with ``fn`` jitted).

    Args:
      fn: called with the placed arguments; not jitted here (it may drive jitted programs from
        Python, which follow their inputs' shardings: computation follows data).
      replicated_args: pytree put on every device (a judge, hyperparameters).
      batched: pytree whose leaves are [B, ...] arrays (this host's images, labels, seeds),
        padded to a multiple of the host's device count with :func:`pad_batch`.
      mesh: default :func:`batch_mesh` (every device of every host).
    Returns ``fn``'s outputs as numpy arrays; each leaf whose leading axis is the (padded) batch
    is cut back to the real images: [B] on one host, [num_hosts * B] (host-major) on several,
    where every host passes the same B.
    """
    mesh = mesh or batch_mesh()
    local = mesh.size // jax.process_count()
    sizes = {np.shape(leaf)[0] for leaf in jax.tree.leaves(batched)}
    if len(sizes) != 1:
        raise ValueError(f"batched arguments disagree on the batch size: {sorted(sizes)}")
    (b,) = sizes
    size = -(-b // local) * local
    placed = shard_batch(jax.tree.map(lambda a: pad_batch(a, size), batched), mesh)
    return unpad_batch(gather(fn(replicate(replicated_args, mesh), placed)), b, size)


def sharded_call(fn: Callable, replicated_args, *batched, mesh: Mesh | None = None):
    """``jax.jit(fn)(replicated_args, *batched)`` with the batch split over all devices
    (:func:`run_data_parallel`; pass an already jitted ``fn`` to reuse its cache)."""
    jitted = jax.jit(fn)
    return run_data_parallel(lambda r, b: jitted(r, *b), replicated_args, batched, mesh)


def unpad_batch(tree, b: int, size: int):
    """Cut every gathered leaf whose leading axis is the padded global batch
    (``num_hosts * size``) back to the real images: [num_hosts * b] (host-major)."""
    hosts = jax.process_count()

    def unpad(a):
        if np.ndim(a) == 0 or a.shape[0] != size * hosts:
            return a
        return a.reshape(hosts, size, *a.shape[1:])[:, :b].reshape(hosts * b, *a.shape[1:])

    return jax.tree.map(unpad, tree)


def describe(x: jnp.ndarray) -> str:
    """How ``x`` is laid out, e.g. ``"8 shards of [1, 256, 256, 3] on cpu"`` (logs, tests)."""
    shards = x.addressable_shards
    return f"{len(shards)} shards of {list(shards[0].data.shape)} on {shards[0].device.platform}"
