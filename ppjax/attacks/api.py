"""The simple call: ``ppjax.attack("pgd", judge, images, labels, eps=8/255)``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Hashable, Iterable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ppjax import parallel
from ppjax.attacks.classes import class_mask
from ppjax.attacks.config import AttackConfig
from ppjax.attacks.iterate import parts
from ppjax.attacks.loop import run
from ppjax.attacks.presets import resolve_attack
from ppjax.attacks.stream import StreamItem, run_slots, to_grid
from ppjax.judges import as_judge


class AttackResult(NamedTuple):
    """Per-image results of an attack (a pytree of arrays).

    images: [B, H, W, 3] float32 on the 8-bit grid (k/255): the kept image per image (best
      success, or the last iterate if it never succeeded).
    success: [B] bool, judged on ``images`` (after the exact-forward JPEG if the config judges
      after JPEG).
    steps: [B] int32 updates applied. success_step: [B] int32, updates applied when the image
      first succeeded (-1 if never). Where no judgement before the last can change the result
      and judging is a pass of its own (:func:`ppjax.attacks.probes.judges_between`), only the
      last iterate is judged: success_step is then ``steps`` or -1.
    linf, l2: [B] float32 distortion of ``images`` in [0, 1] pixel units.
    extras: dict of [B] arrays: score_before / score_after (label margin z_y - max_other for
      classifiers, the score for score judges), tracked_success, labels, iterations, const (C&W),
      final_iterate ([B, H, W, 3] float32: the continuous iterate the loop ended with, frozen
      where an image stopped early, before 8-bit rounding).
    """

    images: Any
    success: Any
    steps: Any
    success_step: Any
    linf: Any
    l2: Any
    extras: dict


def default_seeds(batch: int, seed: int = 0, offset: int = 0) -> np.ndarray:
    """[batch] uint32 per-image seeds ``hash(seed) + offset + index``. Pass your own seeds (e.g.
    derived from file names) when results must not depend on how images are batched."""
    base = (int(seed) * 0x9E3779B1) & 0xFFFFFFFF
    return ((base + offset + np.arange(batch, dtype=np.uint64)) & 0xFFFFFFFF).astype(np.uint32)


BACKENDS = ("auto", "xla", "onednn")
log = logging.getLogger("ppjax.attacks")
_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


class Backend(NamedTuple):
    """The execution path :func:`attack` takes (:func:`choose_backend`).

    name: "xla" or "onednn". dtype: the compute dtype actually used (None = the judge's own,
    float32). note: one line when the path differs from what was asked (logged once per
    process, and written to ``ppjax protect``'s summary), else None.
    """

    name: str
    dtype: Any
    note: str | None = None


def choose_backend(backend: str = "auto", dtype=None, mesh=None) -> Backend:
    """Which path a judge's convolutions take, by what this CPU can run natively.

    * "xla": XLA, in ``dtype``.
    * "onednn": :mod:`ppjax.accel.onednn`; raises :class:`ppjax.accel.onednn.OneDnnUnavailable` when the
      extension cannot be built, or for bfloat16 on a CPU without native bf16 kernels (the
      message names the missing feature: AVX512_BF16 or AMX).
    * "auto": oneDNN in a process with a single CPU device when the extension is available
      (faster than XLA on every CPU class measured, see ``benchmarks/RESULTS.md``). bfloat16
      runs on oneDNN where this CPU has native bf16 kernels; elsewhere the attack runs in
      float32 on oneDNN, and one line says so. Several devices, GPUs, other dtypes, or no
      oneDNN (no compiler, not x86-64: the reason is logged once) take XLA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"attack: backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dt = None if dtype is None else jnp.dtype(dtype)
    if backend == "xla":
        return Backend("xla", dt)
    from ppjax.accel.onednn import cpu

    if backend == "onednn":
        cpu.require_native(jnp.float32 if dt is None else dt)
        return Backend("onednn", dt)
    # one CPU device only: under GSPMD the FFI call would be replicated, and a process with
    # several (forced) CPU devices should give the same numbers on a 1-device mesh as on all
    single = (mesh is None or mesh.size == 1) and jax.local_device_count() == 1
    if not (single and jax.default_backend() == "cpu") or dt not in (None, jnp.float32,
                                                                     jnp.bfloat16):
        return Backend("xla", dt)
    caps = cpu.capabilities()
    if not caps.available:
        note = f"oneDNN convolutions unavailable, running on XLA: {caps.reason.splitlines()[0]}"
        _say_once(note)
        return Backend("xla", dt, note)
    if dt == jnp.bfloat16 and not caps.native(dt):
        note = f"bfloat16 requested, running float32 on oneDNN instead: {caps.bf16_missing}"
        _say_once(note)
        return Backend("onednn", jnp.dtype(jnp.float32), note)
    return Backend("onednn", dt)


def prepare_models(judge, extra_judges=None, dtype=None, backend: str = "auto",
                   mesh=None) -> dict:
    """``{"judge": judge, **extra_judges}`` on the execution path :func:`choose_backend` picks
    (oneDNN-accelerated, or cast to ``dtype``): done once per run."""
    models = {"judge": judge, **(extra_judges or {})}
    if backend == "auto" and not getattr(judge, "registered", True):
        backend = "xla"  # oneDNN's BatchNorm folding reads a registered judge's model
    path = choose_backend(backend, dtype, mesh)
    if path.name == "onednn":
        from ppjax.accel.onednn.judge import accelerate

        models["judge"] = accelerate(models["judge"], dtype=path.dtype, check=False)
        # the other judges (appeal, ensemble members) take oneDNN's float32 convolutions too:
        # left on XLA, NIMA's gradient cost more than the attacked judge's (docs/bench.md)
        for key, other in models.items():
            if key != "judge" and getattr(other, "registered", False):
                models[key] = accelerate(other, check=False)
    elif path.dtype is not None:
        models["judge"] = models["judge"].with_dtype(path.dtype)
    return models


def group_mask(judge, group) -> jnp.ndarray:
    """Objective "group"'s class set as a [C] bool mask (from indices or a mask)."""
    if group is None:
        raise ValueError("attack: objective 'group' needs group= (class indices or a mask)")
    g = np.asarray(group)
    if g.dtype != bool:
        num_classes = getattr(judge.module, "num_classes", None)
        if num_classes is None:
            raise ValueError("attack: pass group as a [C] bool mask for this judge")
        g = class_mask(g.tolist(), num_classes)
    return jnp.asarray(g)


def num_classes(judge, hw: tuple[int, int]) -> int | None:
    """The number of classes of a logits judge (None for a score judge, or an unknown one)."""
    spec = getattr(judge, "spec", None)
    if spec is None or spec.output != "logits":
        return None
    n = getattr(getattr(judge, "module", None), "num_classes", None)
    if n is None:
        n = jax.eval_shape(judge, jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)).shape[-1]
    return int(n)


def class_problems(what: str, values, classes: int | None) -> list[str]:
    """``values`` (labels or targets) outside the judge's ``classes``: only -1 ("none given":
    the clean top-1 for a label) may lie outside [0, classes)."""
    v = np.asarray(values).reshape(-1).astype(np.int64)
    bad = (v < -1) | ((v >= classes) if classes is not None else False)
    if not bad.any():
        return []
    rng = f"[0, {classes})" if classes is not None else ">= 0"
    shown = ", ".join(str(int(i)) for i in list(dict.fromkeys(v[bad].tolist()))[:8])
    return [f"{what} must be class indices in {rng} or -1 (none: the clean top-1), got {shown}"]


def per_image_inputs(cfg: AttackConfig, b: int, given: dict, who: str = "attack") -> dict:
    """The per-image arrays ``cfg``'s objective declares (``Objective.inputs``): each
    [B, *shape] from ``given`` (name -> values; None = not given) or filled with its ``fill``.
    An input the objective does not read is refused."""
    declared = {i.name: i for i in parts(cfg).obj.inputs}
    unknown = sorted(k for k, v in given.items() if v is not None and k not in declared)
    if unknown:
        raise ValueError(f"{who}: objective {cfg.objective!r} reads no per-image "
                         f"{', '.join(unknown)} (it reads: {', '.join(declared) or 'none'})")
    out = {}
    for name, inp in declared.items():
        v = given.get(name)
        v = np.full((b, *inp.shape), inp.fill) if v is None else v
        v = jnp.asarray(v).astype(inp.dtype).reshape((-1, *inp.shape))
        if v.shape != (b, *inp.shape):
            raise ValueError(f"{who}: {name} must have shape {list((b, *inp.shape))}, "
                             f"got {v.shape}")
        out[name] = v
    return out


def _batch_inputs(cfg: AttackConfig, judge, images, given: dict, group, seeds, seed):
    """``(x, aux, seeds)`` checked: the images on the 8-bit grid, the per-image inputs the
    objective declares (labels and targets for a classifier; :func:`per_image_inputs`) and
    the group mask, per-image seeds."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"attack: images must be [B, H, W, 3] in [0, 1], got shape {x.shape}")
    judge.check_input(x)
    b = x.shape[0]

    def per_image(v, what, dtype=jnp.int32):
        v = jnp.asarray(v).astype(dtype).reshape(-1)
        if v.shape != (b,):
            raise ValueError(f"attack: {what} must have shape [{b}], got {v.shape}")
        return v

    aux = per_image_inputs(cfg, b, given)
    classes = num_classes(judge, x.shape[1:3])
    bad = [p for k in ("labels", "targets") if k in aux
           for p in class_problems(k, aux[k], classes)]
    if bad:
        raise ValueError("attack: " + "; ".join(bad))
    if cfg.objective == "targeted" and given.get("targets") is None:
        raise ValueError("attack: objective 'targeted' needs targets=[B] class indices")
    if cfg.objective == "group":
        aux["group"] = group_mask(judge, group)
    seeds = per_image(default_seeds(b, seed) if seeds is None else seeds, "seeds", jnp.uint32)
    return jnp.asarray(to_grid(x)), aux, seeds


def _config(name: str | AttackConfig, preset: str | None, settings: dict,
            appeal: bool) -> AttackConfig:
    """The attack's config: ``name`` itself when it is a config with nothing to add (no preset,
    settings or appeal judge: a caller that resolved it already, as ``ppjax protect`` does in
    its validation, passes it on), else :func:`~ppjax.attacks.presets.resolve_attack`. Names
    are resolved once per run."""
    if isinstance(name, AttackConfig) and preset is None and not settings and not appeal:
        return name
    return resolve_attack(name, preset, settings, appeal)


def _with_appeal(extra_judges: dict | None, appeal_judge) -> dict:
    extra = dict(extra_judges or {})
    if appeal_judge is not None:
        extra["appeal"] = appeal_judge
    return extra


def _run_sharded(cfg: AttackConfig, models, x, aux, seeds, mesh, driver, chunk) -> dict:
    """:func:`ppjax.attacks.loop.run` with the batch split over ``mesh``'s devices."""
    names = {i.name for i in parts(cfg).obj.inputs}
    per_image = {"x": x, "seeds": seeds, **{k: v for k, v in aux.items() if k in names}}
    shared = {"models": models, "aux": {k: v for k, v in aux.items() if k not in names}}

    def go(shared, batched):
        batched = dict(batched)
        x, seeds = batched.pop("x"), batched.pop("seeds")
        return run(cfg, shared["models"], x, {**batched, **shared["aux"]}, seeds, driver=driver,
                   chunk=chunk)

    return parallel.run_data_parallel(go, shared, per_image, mesh)


def attack(name: str | AttackConfig, judge, images, labels=None, *, preset: str | None = None,
           seeds=None, targets=None, group=None, dtype=None, driver: str = "auto",
           chunk: int = 1, seed: int = 0, extra_judges: dict | None = None,
           appeal_judge=None, mesh=None, backend: str = "auto", inputs: dict | None = None,
           **settings) -> AttackResult:
    """Run a named attack (or an :class:`AttackConfig`) on a batch.

    Args:
      name: a key of :data:`ppjax.attacks.ATTACKS` (or an alias), or an ``AttackConfig`` (e.g.
        from :func:`ppjax.attacks.resolve_attack`, which also adds an appeal term).
      judge: a :class:`ppjax.Judge`: a registered one (:func:`ppjax.load_judge`) or your own
        model (:meth:`ppjax.Judge.from_fn`; a plain callable is taken as logits of any size).
      images: [B, H, W, 3] uint8, or float in [0, 1]; snapped to the 8-bit grid on entry (the
        result's images are float32 k/255 either way).
      labels: [B] int true classes for classifier judges; None (or -1 entries) = the judge's
        clean top-1.
      preset: preset name of the attack (default "default").
      seeds: [B] uint32 per-image seeds (default :func:`default_seeds` of ``seed``).
      targets: [B] int target classes (objective "targeted").
      group: class set of objective "group": indices or a [C] bool mask.
      inputs: more per-image inputs by name, for an objective that declares them
        (``Objective.inputs``; e.g. a box per image), each [B, ...].
      dtype: compute dtype of the judge (e.g. ``jnp.bfloat16``); loss and bookkeeping stay f32.
      driver: "auto" | "python" | "scan" | "while" (see :mod:`ppjax.attacks.loop`).
      chunk: iterations per compiled call with the Python driver.
      extra_judges: more judges for the objective, e.g. ``{"appeal": nima}``.
      appeal_judge: a score judge (e.g. a NIMA): adds the appeal term to the attack
        (:func:`ppjax.attacks.resolve_attack`) and this judge as ``extra_judges["appeal"]``.
      mesh: a 1-D ``jax.sharding.Mesh`` (see :mod:`ppjax.parallel`) to split the batch over;
        default: every device when there are several, else none. Results equal one device's;
        with several hosts each host passes its own images and gets all hosts' results back.
      backend: how the judge's convolutions run: "xla", "onednn" (:mod:`ppjax.accel.onednn`:
        BatchNorm folded, convolutions through oneDNN, AMX or AVX512_BF16 in bfloat16), or
        "auto"; see :func:`choose_backend` (bfloat16 on a CPU without native bf16 kernels runs
        float32).
      **settings: :class:`AttackConfig` fields (``eps=4/255``, ``steps=20``, ...) and the
        config's ``hyper`` values; anything else is an error naming the valid settings.
    """
    judge, cfg = as_judge(judge), _config(name, preset, settings, appeal_judge is not None)
    given = {"labels": labels, "targets": targets, **(inputs or {})}
    x, aux, seeds = _batch_inputs(cfg, judge, images, given, group, seeds, seed)
    if mesh is None and jax.device_count() > 1:
        mesh = parallel.batch_mesh()
    models = prepare_models(judge, _with_appeal(extra_judges, appeal_judge), dtype, backend, mesh)
    if mesh is None or mesh.size == 1:
        return AttackResult(**run(cfg, models, x, aux, seeds, driver=driver, chunk=chunk))
    return AttackResult(**_run_sharded(cfg, models, x, aux, seeds, mesh, driver, chunk))


def stream(name: str | AttackConfig, judge, items: Iterable[StreamItem], *,
           preset: str | None = None, slots: int = 8, chunk: int = 1, group=None, dtype=None,
           extra_judges: dict | None = None, appeal_judge=None, mesh=None,
           backend: str = "auto", on_chunk=None, **settings
           ) -> Iterator[tuple[Hashable, AttackResult]]:
    """Attack a stream of images with continuous batching (:mod:`ppjax.attacks.stream`).

    Yields ``(key, AttackResult)`` per image, in completion order, each field for ONE image
    (numpy; ``images`` [H, W, 3]). The attack is resolved, the judge prepared and the programs
    compiled once for the whole stream; ``items`` (:class:`StreamItem`) is consumed lazily, so
    memory stays bounded whatever its length. Each image's result equals
    ``attack(..., images=[its image], labels=[label], seeds=[seed])``, byte for byte.

    Args:
      slots: images on the device at once (the batch the engine runs; at least 2). With
        several devices it is rounded up to a multiple of their number and the slots are
        split over them.
      chunk: iterations per compiled call between refills.
      on_chunk: called after each chunk is dispatched, while the device computes (host work
        of the consumer's that should not wait for the next finished image).
      Others: as :func:`attack`.
    """
    judge, cfg = as_judge(judge), _config(name, preset, settings, appeal_judge is not None)
    g = group_mask(judge, group) if cfg.objective == "group" else None
    if mesh is None and jax.local_device_count() > 1:  # this process's devices: each process
        mesh = parallel.batch_mesh(jax.local_devices())  # of a distributed run streams its share
    models = prepare_models(judge, _with_appeal(extra_judges, appeal_judge), dtype, backend, mesh)
    put = None
    if mesh is not None and mesh.size > 1:
        slots = -(-max(slots, 2) // mesh.size) * mesh.size
        models = parallel.replicate(models, mesh)
        put = functools.partial(jax.device_put, device=parallel.batch_sharding(mesh))

    def checked(items):
        seen = {}  # shapes already checked (one check per shape, not per image): classes
        for it in items:
            if np.shape(it.image) not in seen:
                judge.check_input(np.zeros((1,) + np.shape(it.image), np.float32))
                seen[np.shape(it.image)] = num_classes(judge, np.shape(it.image)[:2])
            bad = class_problems("label", it.label, seen[np.shape(it.image)]) + class_problems(
                "target", it.target, seen[np.shape(it.image)])
            if bad:
                raise ValueError(f"stream: image {it.key!r}: " + "; ".join(bad))
            if it.inputs:
                per_image_inputs(cfg, 1, {k: [v] for k, v in it.inputs.items()},
                                 f"stream: image {it.key!r}")
            if cfg.objective == "targeted" and int(it.target) < 0:
                raise ValueError(f"stream: objective 'targeted' needs a target for {it.key!r}")
            yield it

    for key, row in run_slots(cfg, models, checked(items), slots=slots, chunk=chunk, group=g,
                              put=put, on_chunk=on_chunk):
        yield key, AttackResult(**row)
