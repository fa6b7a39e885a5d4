"""``ppjax protect``: turn a test set into a submission run, resumably.

The output folder (``--out DIR``) holds ``config.json``, the manifest, ``images/``, the zip and
``summary.json``; :mod:`ppjax.runs.layout` owns that format.

Guarantees:

* **Validation first** (:func:`validate_protect`): every setting, path, label and the output
  folder are checked before anything is written; all problems are reported at once
  (:class:`~ppjax.errors.SetupError`, exit code 2). ``config.json`` is written only after that,
  so a refused run never blocks its corrected rerun.
* **One run per folder**: an exclusive ``fcntl.flock`` on ``DIR/.ppjax.lock``; a second run on
  the same ``--out`` stops with exit code 2. The kernel drops the lock when a process dies (even
  by kill -9), so a stale lock never blocks a resume.
* **STAND-IN mark**: a run on stand-in judges names its zip ``STANDIN_<runcode>.zip``, puts a
  ``ppjax-standin`` text chunk in every PNG and ``"standin": true`` in ``summary.json``.
* **Atomic writes.** Every PNG, the zip and the JSON files are written to a temporary sibling,
  fsynced and renamed. A manifest line is appended (and fsynced) only after its PNG is in place,
  with the PNG's sha256.
* **Resume.** Rerunning the same command skips every file whose manifest entry is ``ok`` and whose
  PNG still has the recorded sha256; everything else is (re)done. Each image's attack seed is
  derived from its name (:func:`image_seed`) and the engine's results do not depend on an image's
  slot, neighbours or arrival (:mod:`ppjax.attacks.stream`): a resumed run is byte-identical to
  an uninterrupted one.
* **Streaming.** Decoding runs in a pool of worker processes ahead of the engine, the engine
  keeps ``--batch-size`` slots busy (continuous batching: a finished image's slot takes the next
  one at once), and PNGs are encoded, hashed and written by a writer pool behind it
  (:mod:`ppjax.runs.pipeline`). Memory is bounded whatever the set size. Progress moves per image.
* **Several processes** (``jax.distributed``; see :mod:`ppjax.parallel`): each process protects
  every ``count``-th image (by sorted name) into ``manifest.<index>of<count>.jsonl``; process 0
  waits for all and writes the zip and ``summary.json`` from every manifest.
* **Bad input** never stops the run: each failure is a manifest entry with its error, logged, and
  the exit code is 1 when any file failed.
* **Names** are sanitised (:func:`ppjax.runs.layout.output_name`): unicode is kept (NFC), path
  separators and other unsafe characters become ``_``, and the result is checked to lie inside
  the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from ppjax.errors import DiskFull, SetupError, is_disk_full
from ppjax.image import io as imageio
from ppjax.runs import data, provenance
from ppjax.runs.layout import (
    CONFIG,
    IMAGES,
    MANIFEST,
    RUN_CODE_RE,
    STANDIN_TEXT,
    SUMMARY,
    Manifest,
    ManifestEntry,
    OutputLock,
    ProtectConfig,
    RunSummary,
    Shard,
    check_or_store_config,
    config_mismatch,
    file_sha256,
    is_inside,
    output_name,
    read_manifests,
    stored_config,
    write_zip,
)
from ppjax.runs.progress import ProtectProgress, redirected
from ppjax.runs.report import write_json

log = logging.getLogger("ppjax.runs.protect")


def image_seed(name: str, seed: int = 0) -> int:
    """Stable per-image uint32 seed from the file name (sha256), independent of batch layout."""
    h = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def _output_problems(out: Path) -> list[str]:
    """Problems with ``--out`` as a folder this process can create and write, found without
    writing anything."""
    if out.exists() and not out.is_dir():
        return [f"--out {out} exists and is not a folder"]
    anc = out
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        return [f"--out {out}: {anc} is a file, not a folder"]
    if not os.access(anc, os.W_OK | os.X_OK):
        return [f"--out {out}: {anc} is not writable"]
    for sub in (out / IMAGES, out / MANIFEST, out / CONFIG):
        if sub.exists() and not os.access(sub, os.W_OK):
            return [f"--out {out}: {sub} is not writable"]
    return []


@dataclasses.dataclass
class ProtectPlan:
    """What :func:`validate_protect` found: the set to protect and the checked settings."""

    cfg: ProtectConfig
    out: Path
    items: list
    skipped: list
    attack: object


def validate_protect(cfg: ProtectConfig, out: str | os.PathLike, weights_dir=None,
                     batch_size: int = 4) -> ProtectPlan:
    """Check everything a run needs, writing nothing: the run code, task, judges and their
    weights, the attack's settings (kinds and ranges), the input paths, the set (not empty,
    labels inside the judge's classes), the output folder, and a resume's settings.

    Raises:
      SetupError: listing every problem found.
    """
    problems: list[str] = []
    if not RUN_CODE_RE.match(cfg.run_code):
        problems.append(f"run code {cfg.run_code!r} must be letters, digits, '_', '.', '-' "
                        f"(it names the zip and every file)")
    spec = _judge_problems(cfg, weights_dir, problems)
    acfg = _settings_problems(cfg, batch_size, problems)
    items, skipped = _set_problems(cfg, spec, problems)
    out = Path(out).resolve()
    problems += _output_problems(out)
    cfg = _resume_problems(cfg, spec, out, weights_dir, problems)
    if problems:
        raise SetupError(problems)
    return ProtectPlan(cfg=cfg, out=out, items=items, skipped=skipped, attack=acfg)


def _judge_problems(cfg: ProtectConfig, weights_dir, problems: list[str]):
    """The task and the judges (known, weights present, the judge at the task's size); returns
    the judge's spec (None when unknown)."""
    from ppjax.judges import get_spec, judge_dir
    from ppjax.judges.fetch import missing_weights_message

    task = spec = None
    try:
        task = data.get_task(cfg.task)
    except ValueError as e:
        problems.append(str(e))
    for name, role in ((cfg.judge, "judge"), (cfg.appeal, "appeal judge")):
        if name is None:
            continue
        try:
            s = get_spec(name)
        except KeyError as e:
            problems.append(str(e.args[0]))
            continue
        if role == "judge":
            spec = s
        if not cfg.standin and not (judge_dir(name, weights_dir) / "metadata.json").exists():
            problems.append(missing_weights_message(s, weights_dir))
    if task and spec and task.hw and tuple(spec.input_hw) != task.hw:
        problems.append(f"judge {cfg.judge} takes {spec.input_hw}, task {cfg.task} is {task.hw}")
    return spec


def _settings_problems(cfg: ProtectConfig, batch_size, problems: list[str]):
    """The attack's settings, the resize rule, the dtype and the batch size; returns the
    attack's config (None when refused)."""
    from ppjax.attacks import resolve_attack

    acfg = None
    try:
        acfg = resolve_attack(cfg.attack, cfg.preset, dict(cfg.overrides), cfg.appeal)
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"attack settings: {e.args[0] if e.args else e}")
    if cfg.resize not in imageio.RESIZE_RULES:
        problems.append(f"resize rule {cfg.resize!r}: use one of {imageio.RESIZE_RULES}")
    if cfg.dtype not in ("float32", "bfloat16"):
        problems.append(f"dtype {cfg.dtype!r}: use float32 or bfloat16")
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch size must be >= 1, got {batch_size!r}")
    return acfg


def _set_problems(cfg: ProtectConfig, spec, problems: list[str]):
    """The input paths and the set they name (not empty, labels inside the judge's classes);
    returns ``(items, skipped)``."""
    images_ok = Path(cfg.images).is_dir()
    if not images_ok:
        what = "is not a folder" if Path(cfg.images).exists() else "does not exist"
        problems.append(f"--images {cfg.images} {what}")
    for flag, f in (("--list", cfg.list_file), ("--labels", cfg.labels_file)):
        if f and not Path(f).is_file():
            problems.append(f"{flag} {f} {'is not a file' if Path(f).exists() else 'does not exist'}")
            images_ok = False
    if not images_ok:
        return [], []
    try:
        items, skipped = data.dataset_scan(cfg.images, cfg.list_file, cfg.labels_file)
    except (OSError, ValueError, UnicodeDecodeError) as e:
        problems.append(f"reading the set: {e}")
        return [], []
    if not items:
        where = f"listed in {cfg.list_file}" if cfg.list_file else f"in {cfg.images}"
        hint = f" ({len(skipped)} file(s) skipped: " + ", ".join(
            f"{n} ({r})" for n, r in skipped[:5]) + ")" if skipped else ""
        problems.append(f"no images to protect {where}{hint}")
    n_cls = dict(spec.model_kwargs).get("num_classes") if spec else None
    if spec is not None and spec.output == "logits" and n_cls:
        bad = [it for it in items if it.label is not None and not 0 <= it.label < n_cls]
        if bad:
            problems.append(
                f"{len(bad)} label(s) are not classes of {cfg.judge} (0..{n_cls - 1}): "
                + ", ".join(f"{it.name}: {it.label}" for it in bad[:10])
                + (" ..." if len(bad) > 10 else ""))
    return items, skipped


def _png_level(cfg: ProtectConfig, out: Path, problems: list[str]) -> int | None:
    """``cfg.png_level`` checked; when None, the level of the run ``out`` holds (a resume keeps
    its files byte-identical), else :data:`ppjax.image.io.PNG_LEVEL`."""
    if cfg.png_level is not None:
        try:
            return imageio.check_png_level(cfg.png_level)
        except ValueError as e:
            problems.append(str(e))
            return cfg.png_level
    try:
        old = stored_config(out) if out.is_dir() else None
    except (OSError, ValueError):
        old = None  # config_mismatch reports the unreadable file
    return imageio.PNG_LEVEL if old is None else old["png_level"]


def _resume_problems(cfg: ProtectConfig, spec, out: Path, weights_dir, problems: list[str]
                     ) -> ProtectConfig:
    """A resume's settings: ``cfg`` with the judge's weights hash, refused when ``out`` holds a
    run made with other settings."""
    from ppjax.judges import judge_dir
    from ppjax.judges.checkpoint import BrokenCheckpoint, checked_metadata
    from ppjax.judges.spec import broken_weights_message

    sha = None
    if cfg.judge and spec is not None:
        where = judge_dir(cfg.judge, weights_dir, cfg.standin)
        try:
            sha = (checked_metadata(where, cfg.judge).get("sha256")
                   if (where / "metadata.json").exists() else None)
        except BrokenCheckpoint as e:
            problems.append(broken_weights_message(spec, str(e), weights_dir, cfg.standin))
    cfg = dataclasses.replace(cfg, judge_sha256=sha, png_level=_png_level(cfg, out, problems))
    if out.is_dir() and not (cfg.standin and sha is None):
        why = config_mismatch(out, cfg)
        if why:
            problems.append(why)
    return cfg


class _Tag(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return (f"{self.extra['tag']}{msg}", kwargs)


def _clean_tmp(folder: Path) -> None:
    for p in folder.glob(".*.tmp"):
        try:
            p.unlink()
        except OSError:
            pass


def _compute_path(dtype: str) -> dict:
    """How the judge will run (``ppjax.attack``'s backend="auto"), logged and kept in the
    summary: bfloat16 on a CPU without native bf16 kernels runs float32, and says so."""
    import jax.numpy as jnp

    from ppjax.attacks import choose_backend

    path = choose_backend("auto", jnp.bfloat16 if dtype == "bfloat16" else None)
    used = "float32" if path.dtype is None else jnp.dtype(path.dtype).name
    return {"requested_dtype": dtype, "dtype": used, "backend": path.name, "note": path.note}


def run_protect(cfg: ProtectConfig, out: str | os.PathLike, weights_dir=None, batch_size: int = 8,
                progress: bool = True, max_pixels: int | None = None,
                workers: int | None = None) -> dict:
    """Protect every image of the set described by ``cfg`` into ``out`` (see the module
    docstring). Returns the summary dict (also written to ``out/summary.json``); its ``failed``
    count is non-zero when any file failed.

    ``batch_size`` is the number of slots of the streaming engine (images on the device at
    once); ``workers`` the decode and write pools' size (default: one per CPU, at most 8).
    Neither changes the results. Under ``jax.distributed`` each process protects its share
    (every ``process_count``-th image) and writes its own manifest shard; process 0 waits for
    the others and writes the zip and the summary.

    Raises:
      SetupError: a usage or setup problem (every one found, before anything is written), or
        ``out`` held by another run.
    """
    plan = validate_protect(cfg, out, weights_dir, batch_size)
    out = plan.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create the output folder {out}: {e.strerror}") from None
    shard = Shard.current()
    try:
        with OutputLock(out, shard):
            return _run_locked(plan, weights_dir, batch_size, progress, max_pixels, workers,
                               shard)
    except OSError as e:
        if not is_disk_full(e):
            raise
        raise DiskFull(_disk_full_message(out, shard, e)) from None


def _disk_full_message(out: Path, shard: Shard, e: OSError) -> str:
    n = sum(1 for x in read_manifests(out).values() if x.get("status") == "ok")
    return (f"{e.strerror or e} writing to {out}: the run stopped. It keeps only whole files: "
            f"{out / shard.manifest} lists the {n} image(s) done, each PNG intact. Free some "
            f"space and rerun the same command to resume.")


class _Progress:
    """The run's counters, manifest and progress bar (:class:`ProtectProgress`): one place
    records each finished file. When the manifest cannot be written (a full disk), the PNGs of
    the lines it rolled back are removed, so the folder holds exactly the files it lists."""

    def __init__(self, L, manifest: Manifest, total: int, tag: str, desc: str, enabled: bool,
                 img_dir: Path):
        self.L, self.manifest, self.tag, self.img_dir = L, manifest, tag, img_dir
        self.n_fail = self.n_ok = self.n_succ = self.n_new = 0
        self.t0 = time.perf_counter()
        self.bar = ProtectProgress(total, desc, tag, enabled)

    def error(self, name: str, err: str, notes=None, output=None) -> None:
        self.L.error("%s: %s", name, err)
        self._record(ManifestEntry.failed(name, err, notes, output))
        self.n_fail += 1
        self.bar.image(ok=False)

    def _record(self, entry: ManifestEntry | None, sync: bool = True) -> None:
        """Append ``entry`` (None: only fsync the lines appended); on failure remove the PNGs
        of the lines rolled back, and raise."""
        try:
            if entry is None:
                self.manifest.sync()
            else:
                self.manifest.append(entry, sync)
        except OSError:
            for e in self.manifest.rolled_back:
                if e.status == "ok" and e.output:
                    (self.img_dir / e.output).unlink(missing_ok=True)
            raise

    def sync(self) -> None:
        self._record(None)

    def ok(self, entry: ManifestEntry, sync: bool = True) -> None:
        self._record(entry, sync)
        for note in entry.notes or ():
            self.L.info("%s: %s", entry.name, note)
        self.n_ok += 1
        self.n_new += 1
        self.n_succ += bool(entry.success)
        self.bar.image(ok=True, success=bool(entry.success))

    def close(self) -> None:
        self.bar.close()
        self.manifest.close()


def _todo(cfg, items, out: Path, img_dir: Path, shard: Shard, L):
    """(items to protect now, skipped-as-done count, pre-attack errors, distinct names) of
    this process's share: names listed twice are protected once, colliding or unsafe output
    names are errors, and files done (manifest ok, PNG sha256 intact) are skipped."""
    done = read_manifests(out)
    unique, seen = [], set()
    for it in items:  # the first listing wins
        if it.name in seen:
            L.warning("%s: listed more than once; protected once", it.name)
            continue
        seen.add(it.name)
        unique.append(it)
    mine = set(shard.take(sorted(it.name for it in unique)))
    by_output: dict[str, str] = {}
    todo, errors, n_skip = [], [], 0
    for it in unique:
        oname = output_name(cfg.run_code, it.name)
        problem = None
        if oname in by_output:
            problem = f"output name {oname} collides with that of {by_output[oname]!r}"
        elif not is_inside(img_dir / oname, img_dir):
            problem = "unsafe name: output would leave the output folder"
        by_output.setdefault(oname, it.name)
        e = done.get(it.name)
        if problem is None and (e and e.get("status") == "ok" and e.get("output") == oname
                                and file_sha256(img_dir / oname) == e.get("sha256")):
            n_skip += 1
        elif it.name in mine:
            (errors.append((it.name, problem, oname)) if problem else todo.append(it))
    return todo, n_skip, errors, len(unique)


def _setup(plan: ProtectPlan, weights_dir, shard: Shard):
    """Load the judges once, store the run's config, and log the compute path."""
    import ppjax
    from ppjax.judges import judge_dir

    cfg = plan.cfg
    L = _Tag(log, {"tag": "STAND-IN: " if cfg.standin else ""})
    judge = ppjax.load_judge(cfg.judge, weights_dir, standin=cfg.standin)  # a stand-in: made once
    meta_path = judge_dir(cfg.judge, weights_dir, cfg.standin) / "metadata.json"
    sha = json.loads(meta_path.read_text()).get("sha256") if meta_path.exists() else None
    cfg = dataclasses.replace(cfg, judge_sha256=sha)
    record = {"attack_resolved": provenance.attack_record(plan.attack, cfg.attack, cfg.preset,
                                                          cfg.overrides),
              "ppjax": provenance.ppjax_version()}
    check_or_store_config(plan.out, cfg, record)  # validated: the run may now leave its settings
    compute = _compute_path(cfg.dtype)
    L.info("compute: %s on %s%s", compute["dtype"], compute["backend"],
           f" ({compute['note']})" if compute["note"] else "")
    extra = {}
    if cfg.appeal:  # the appeal term's judge (a stand-in too when the run uses stand-ins)
        extra["appeal"] = ppjax.load_judge(cfg.appeal, weights_dir, standin=cfg.standin)
    if shard.count > 1:
        L.info("process %d of %d: every %d-th image, manifest %s", shard.index, shard.count,
               shard.count, shard.manifest)
    return cfg, L, judge, extra, compute


def _run_locked(plan: ProtectPlan, weights_dir, slots, progress, max_pixels, workers,
                shard: Shard) -> dict:
    cfg, L, judge, extra, compute = _setup(plan, weights_dir, shard)
    out, tag = plan.out, "STAND-IN: " if cfg.standin else ""
    img_dir = out / IMAGES
    img_dir.mkdir(exist_ok=True)
    if shard.count == 1:  # several processes share the folders: a stale temp file is harmless
        _clean_tmp(img_dir)
        _clean_tmp(out)
    (out / shard.done_marker).unlink(missing_ok=True)
    todo, n_skip, pre_errors, n_all = _todo(cfg, plan.items, out, img_dir, shard, L)
    if n_skip:
        L.info("resuming: %d of %d images already done, skipped", n_skip, len(plan.items))
    prog = _Progress(L, Manifest(out / shard.manifest), len(todo) + len(pre_errors), tag,
                     f"{tag}protect {cfg.run_code}", progress, img_dir)
    try:
        with redirected(progress):  # log lines above the bar, not onto its line
            for name, err, oname in pre_errors:
                prog.error(name, err, output=oname)
            if data.get_task(cfg.task).hw is None:  # photos at their own size (task faces)
                from ppjax.runs.faces_protect import stream_faces

                stream_faces(cfg, plan.attack, judge, extra, todo, img_dir, prog, slots,
                             max_pixels, workers, lambda name: image_seed(name, cfg.seed))
            else:
                _stream(cfg, plan.attack, judge, extra, todo, img_dir, prog, slots, max_pixels,
                        workers)
    finally:
        prog.close()
    if prog.bar.compile_seconds is not None:
        L.info("compiling the attack took %.1f s (not counted in the ETA)", prog.bar.compile_seconds)
    (out / shard.done_marker).write_text("done\n")
    if shard.index != 0:
        L.info("process %d done: %d protected, %d failed; process 0 writes the zip",
               shard.index, prog.n_ok, prog.n_fail)
        return {"standin": cfg.standin, "run_code": cfg.run_code, "process": shard.index,
                "protected": prog.n_ok, "failed": prog.n_fail, "images": len(todo),
                "zip": None, "errors": []}
    _wait_for_shards(out, shard, L)
    return _summarise(plan, cfg, judge, extra, compute, n_skip, prog.t0, L, n_all)


def _stream(cfg, acfg, judge, extra, todo, img_dir, prog: _Progress, slots, max_pixels, workers):
    """Decode (worker pool) -> attack ``acfg`` (the config :func:`validate_protect` resolved;
    continuous batching) -> encode + write (worker pool); a manifest line is appended, in
    completion order, once its PNG is in place (looked for after every compiled chunk too, so
    lines and progress do not wait for the next finished image)."""
    import jax.numpy as jnp

    import ppjax
    from ppjax.attacks import StreamItem
    from ppjax.runs import pipeline

    held: dict[str, data.Loaded] = {}
    logits = judge.spec.output == "logits"

    decoded = pipeline.prefetch(todo, cfg.task, cfg.resize, max_pixels, workers=workers)
    finished = [0]  # images returned by the attack or refused at decoding

    def items():
        for b in decoded:
            if b.error is not None:
                prog.error(b.item.name, b.error, notes=b.notes)
                finished[0] += 1
                continue
            held[b.item.name] = b
            label = b.item.label if (logits and b.item.label is not None) else -1
            yield StreamItem(b.item.name, b.image, image_seed(b.item.name, cfg.seed), label)

    writes = pipeline.RecordedWrites(prog)
    drain = writes.drain

    def on_chunk() -> None:  # one iteration (chunk=1) of every busy slot, at most ``slots``
        prog.bar.chunk(max(0, min(max(slots, 2), len(todo) - finished[0])))
        drain(block=False)

    png_text = STANDIN_TEXT if cfg.standin else None
    with pipeline.Writer(workers=workers) as writer, contextlib.closing(decoded):
        try:
            for name, res in ppjax.attacks.stream(  # finished writes recorded every chunk
                    acfg, judge, items(), slots=slots, extra_judges=extra,
                    dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else None,
                    on_chunk=on_chunk):
                finished[0] += 1
                b = held.pop(name)
                entry = _entry(cfg, b, res, logits)
                writes.add(writer.submit(img_dir / entry.output, imageio.to_uint8(res.images),
                                         png_text, cfg.png_level), entry)
                drain(block=False)
        finally:
            writes.drain(block=True)  # the writes in flight are finished and recorded
    writes.raise_if_full()


def _entry(cfg, b: data.Loaded, res, logits: bool) -> ManifestEntry:
    """The manifest line of an attacked image (its ``sha256`` is filled in once written)."""
    name = b.item.name
    extra = {k: round(float(res.extras[k]), 6) for k in ("appeal_before", "appeal_after")
             if k in res.extras}
    if logits:
        extra["label"] = int(res.extras["labels"])
        extra["label_source"] = "list" if b.item.label is not None else "clean prediction"
    return ManifestEntry(name, "ok", output_name(cfg.run_code, name), tuple(b.notes),
                         seed=image_seed(name, cfg.seed), success=bool(res.success),
                         steps=int(res.steps), linf_levels=round(float(res.linf) * 255.0, 3),
                         **extra)


def _wait_for_shards(out: Path, shard: Shard, L, poll_s: float = 0.5) -> None:
    """Process 0 waits until every process of the run has finished its share."""
    if shard.count == 1:
        return
    markers = [out / Shard(k, shard.count).done_marker for k in range(shard.count)]
    said = False
    while not all(m.exists() for m in markers):
        if not said:
            L.info("waiting for the other %d process(es) to finish their shares",
                   shard.count - 1)
            said = True
        time.sleep(poll_s)


def _summarise(plan, cfg, judge, extra, compute, n_skip, t0, L, n_all) -> dict:
    """The zip and summary.json, from every manifest in the folder."""
    out, items = plan.out, plan.items
    img_dir = out / IMAGES
    final = read_manifests(out)
    wanted = {it.name for it in items}
    okd = {n: e for n, e in final.items() if n in wanted and e.get("status") == "ok"}
    errors = [{"name": n, "error": e.get("error")} for n, e in sorted(final.items())
              if n in wanted and e.get("status") != "ok"]
    for n, e in sorted(okd.items()):  # the zip holds only files verified against the manifest
        if file_sha256(img_dir / e["output"]) != e.get("sha256"):
            del okd[n]
            errors.append({"name": n, "error": f"{e['output']} changed after it was written "
                                               f"(sha256 differs from the manifest's); rerun "
                                               f"to redo it"})
            L.error("%s: %s", n, errors[-1]["error"])
    ok_files = [img_dir / e["output"] for e in okd.values()]
    zpath = write_zip(out, cfg.run_code, ok_files, cfg.standin)
    n_ok, n_succ = len(okd), sum(bool(e.get("success")) for e in okd.values())
    appeal = {}
    if cfg.appeal:
        appeal["appeal_judge"] = extra["appeal"].label
        for k in ("appeal_before", "appeal_after"):
            v = [e[k] for e in okd.values() if e.get(k) is not None]
            appeal[f"{k}_mean"] = float(np.mean(v)) if v else None
    summary = RunSummary(
        standin=cfg.standin, run_code=cfg.run_code, task=cfg.task, judge=judge.label,
        attack=cfg.attack, preset=cfg.preset, images=n_all, protected=n_ok, done=n_ok,
        failed=len(errors), skipped_on_resume=n_skip, attack_success=n_succ,
        attack_success_rate=n_succ / n_ok if n_ok else None, zip=zpath.name, errors=errors,
        compute=compute, skipped_inputs=[{"name": n, "reason": r} for n, r in plan.skipped],
        seconds=round(time.perf_counter() - t0, 3), **appeal).to_json()
    if data.get_task(cfg.task).hw is None:  # photos at their own size (task faces)
        from ppjax.runs.faces_protect import amend_summary

        amend_summary(summary, okd)
    write_json(out / SUMMARY, summary)
    rate = f"{100.0 * n_succ / n_ok:.1f}%" if n_ok else "n/a"
    L.info("done: %d protected, %d failed, attack success %s; zip %s", n_ok, len(errors), rate,
           zpath)
    return summary
