"""``ppjax protect``: turn a test set into a submission run, resumably.

Output directory layout (``--out DIR``)::

    DIR/config.json          # the settings of the run; a resume with other settings is refused
    DIR/manifest.jsonl       # one JSON line per finished file (ok or error), appended + fsynced
    DIR/images/<runcode>_<stem>.png   # lossless 8-bit PNGs at the task's size
    DIR/<runcode>.zip        # the submission: every protected PNG, flat, as the organisers ask
    DIR/summary.json         # counts, success rate, per-file errors of the last invocation
    DIR/.ppjax.lock          # held (flock) while a run works in DIR

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
* **Names** are sanitised (:func:`output_name`): unicode is kept (NFC), path separators and other
  unsafe characters become ``_``, and the result is checked to lie inside the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import sys
import time
import unicodedata
from pathlib import Path

import numpy as np

from ppjax.errors import SetupError
from ppjax.image import io as imageio
from ppjax.runs import data
from ppjax.runs.report import write_json

log = logging.getLogger("ppjax.runs.protect")

MANIFEST = "manifest.jsonl"
CONFIG = "config.json"
IMAGES = "images"
LOCK = ".ppjax.lock"
STANDIN_PREFIX = "STANDIN_"
STANDIN_TEXT = {"ppjax-standin": "STAND-IN: made with random-weight stand-in judges; this image "
                                 "exercises the pipeline and protects nothing"}
RUN_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


@dataclasses.dataclass(frozen=True)
class ProtectConfig:
    """Everything that determines the output bytes of a run (stored as ``config.json``).
    ``batch_size`` is deliberately absent: it does not change results."""

    task: int
    attack: str
    run_code: str
    images: str
    judge: str
    list_file: str | None = None
    labels_file: str | None = None
    preset: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    seed: int = 0
    standin: bool = False
    resize: str = "auto"  # 2020: centre crop without resizing when large enough (the organisers)
    judge_sha256: str | None = None
    appeal: str | None = None  # appeal judge (e.g. "nima_mobilenet") of an appeal-aware attack
    dtype: str = "float32"  # judge compute dtype; "bfloat16" takes the oneDNN/AMX path on CPU

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = [list(kv) for kv in self.overrides]
        return d


class ResumeMismatch(SetupError):
    """The output folder holds a run made with other settings."""


def parse_overrides(pairs) -> tuple[tuple[str, object], ...]:
    """``["eps=0.03", "steps=10", "loss=ce"]`` -> sorted ``(("eps", 0.03), ...)``; values are
    parsed as JSON when possible (numbers, booleans), ``a/b`` as a fraction (``eps=8/255``), else
    kept as strings."""
    out = {}
    for s in pairs or ():
        if "=" not in s:
            raise ValueError(f"--set expects key=value, got {s!r}")
        k, v = s.split("=", 1)
        k = k.strip()
        if not k.isidentifier():
            raise ValueError(f"--set key {k!r} is not a valid name")
        frac = re.fullmatch(r"\s*(-?\d+(?:\.\d*)?)\s*/\s*(\d+(?:\.\d*)?)\s*", v)
        if frac and float(frac.group(2)) != 0:  # eps=8/255
            out[k] = float(frac.group(1)) / float(frac.group(2))
            continue
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return tuple(sorted(out.items()))


def image_seed(name: str, seed: int = 0) -> int:
    """Stable per-image uint32 seed from the file name (sha256), independent of batch layout."""
    h = hashlib.sha256(f"{int(seed)}\x00{name}".encode()).digest()
    return int.from_bytes(h[:4], "little")


_UNSAFE = re.compile(r"[^\w.\-]+", re.UNICODE)


def safe_stem(name: str) -> str:
    """A file-name-safe stem of ``name`` (an original file name, possibly with directories):
    NFC unicode, every run of characters other than letters, digits, ``_ . -`` (including path
    separators) replaced by ``_``, no leading dots, at most 150 characters."""
    stem = name
    base = os.path.basename(stem.replace("\\", "/"))
    if "." in base.strip("."):
        stem = stem[: len(stem) - len(base)] + base.rsplit(".", 1)[0]
    stem = unicodedata.normalize("NFC", stem)
    stem = "".join(ch for ch in stem if unicodedata.category(ch)[0] != "C")
    stem = _UNSAFE.sub("_", stem).lstrip(".") or "image"
    stem = re.sub(r"\.{2,}", "_", stem)
    return stem[:150]


def output_name(run_code: str, name: str) -> str:
    """``<runcode>_<safe stem of name>.png``."""
    return f"{run_code}_{safe_stem(name)}.png"


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def read_manifest(path: Path) -> dict[str, dict]:
    """Last entry per name; a torn last line (a kill mid-write) is ignored."""
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(e, dict) and "name" in e:
            out[e["name"]] = e
    return out


class Manifest:
    """Append-only JSON lines, each fsynced before the next image is reported done."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # a kill left half a line: start the next entry on its own line
                with open(path, "ab") as f:
                    f.write(b"\n")
        self._f = open(path, "a", encoding="utf-8")

    def append(self, entry: dict) -> None:
        self._f.write(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


def config_mismatch(out: Path, cfg: ProtectConfig) -> str | None:
    """Why ``out`` cannot hold ``cfg`` (its ``config.json`` has other settings), or None."""
    path = out / CONFIG
    if not path.exists():
        return None
    new = json.loads(json.dumps(cfg.to_json()))
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path} is unreadable ({e}); use another --out"
    # a key added to ProtectConfig later reads as its default in an older run's config
    defaults = {f.name: f.default for f in dataclasses.fields(ProtectConfig)
                if f.default is not dataclasses.MISSING}
    old = {**{k: v for k, v in defaults.items() if k not in old}, **old}
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if not diff:
        return None
    lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
    return (f"{out} holds a run made with other settings ({lines}); use another --out, or "
            f"the same settings to resume")


def check_or_store_config(out: Path, cfg: ProtectConfig) -> None:
    """Store ``cfg`` in ``out``; if a different one is there already, refuse (ResumeMismatch)."""
    why = config_mismatch(out, cfg)
    if why:
        raise ResumeMismatch(why)
    if not (out / CONFIG).exists():
        write_json(out / CONFIG, json.loads(json.dumps(cfg.to_json())))


def zip_name(run_code: str, standin: bool) -> str:
    """``<runcode>.zip``, or ``STANDIN_<runcode>.zip`` for a run on stand-in judges."""
    return f"{STANDIN_PREFIX if standin else ''}{run_code}.zip"


class OutputLock:
    """Exclusive ``fcntl.flock`` on ``<out>/.ppjax.lock`` for the life of a run (a context
    manager). The kernel releases it when the process ends in any way, kill -9 included. Each
    process of a distributed run locks its own shard (``.ppjax.lock.<index>of<count>``)."""

    def __init__(self, out: Path, shard: Shard | None = None):
        suffix = "" if shard is None or shard.count == 1 else f".{shard.index}of{shard.count}"
        self.path = Path(out) / (LOCK + suffix)
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise SetupError(f"cannot create the lock file {self.path}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise SetupError(f"another ppjax run is working in {self.path.parent} ({holder or 'pid ?'}"
                             f"); wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                  .encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (harmless, reused)
            self._fd = None


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
    from ppjax.attacks import get_attack
    from ppjax.judges import get_spec, judge_dir
    from ppjax.judges.fetch import missing_weights_message

    problems: list[str] = []
    if not RUN_CODE_RE.match(cfg.run_code):
        problems.append(f"run code {cfg.run_code!r} must be letters, digits, '_', '.', '-' "
                        f"(it names the zip and every file)")
    task = spec = acfg = None
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
    if task and spec and tuple(spec.input_hw) != task.hw:
        problems.append(f"judge {cfg.judge} takes {spec.input_hw}, task {cfg.task} is {task.hw}")
    try:
        acfg = get_attack(cfg.attack, cfg.preset, appeal=bool(cfg.appeal), **dict(cfg.overrides))
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"attack settings: {e.args[0] if e.args else e}")
    if cfg.resize not in imageio.RESIZE_RULES:
        problems.append(f"resize rule {cfg.resize!r}: use one of {imageio.RESIZE_RULES}")
    if cfg.dtype not in ("float32", "bfloat16"):
        problems.append(f"dtype {cfg.dtype!r}: use float32 or bfloat16")
    if not isinstance(batch_size, int) or batch_size < 1:
        problems.append(f"batch size must be >= 1, got {batch_size!r}")
    images_ok = Path(cfg.images).is_dir()
    if not images_ok:
        what = "is not a folder" if Path(cfg.images).exists() else "does not exist"
        problems.append(f"--images {cfg.images} {what}")
    for flag, f in (("--list", cfg.list_file), ("--labels", cfg.labels_file)):
        if f and not Path(f).is_file():
            problems.append(f"{flag} {f} {'is not a file' if Path(f).exists() else 'does not exist'}")
            images_ok = False
    items, skipped = [], []
    if images_ok:
        try:
            items, skipped = data.dataset_scan(cfg.images, cfg.list_file, cfg.labels_file)
        except (OSError, ValueError, UnicodeDecodeError) as e:
            problems.append(f"reading the set: {e}")
        else:
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
    out = Path(out).resolve()
    problems += _output_problems(out)
    sha = None
    if cfg.judge and spec is not None:
        meta = judge_dir(cfg.judge, weights_dir, cfg.standin) / "metadata.json"
        try:
            sha = json.loads(meta.read_text()).get("sha256") if meta.exists() else None
        except (OSError, ValueError) as e:
            problems.append(f"{meta} is unreadable: {e}")
    cfg = dataclasses.replace(cfg, judge_sha256=sha)
    if out.is_dir() and not (cfg.standin and sha is None):
        why = config_mismatch(out, cfg)
        if why:
            problems.append(why)
    if problems:
        raise SetupError(problems)
    return ProtectPlan(cfg=cfg, out=out, items=items, skipped=skipped, attack=acfg)


def write_zip(out: Path, run_code: str, files: list[Path], standin: bool = False) -> Path:
    """The submission zip ``<out>/<zip_name>``: deterministic (sorted, fixed timestamps,
    stored), flat, written atomically and streamed from disk, so memory does not grow with the
    set (:func:`ppjax.runs.pipeline.write_zip_atomic`)."""
    from ppjax.runs.pipeline import write_zip_atomic

    return write_zip_atomic(out / zip_name(run_code, standin), files)


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
    with OutputLock(out, shard):
        return _run_locked(plan, weights_dir, batch_size, progress, max_pixels, workers, shard)


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of a run: every ``count``-th image from ``index`` (one process:
    all of them). Its manifest is ``manifest.jsonl``, or ``manifest.<index>of<count>.jsonl``."""

    index: int = 0
    count: int = 1

    @staticmethod
    def current() -> Shard:
        import jax

        return Shard(jax.process_index(), jax.process_count())

    @property
    def manifest(self) -> str:
        return MANIFEST if self.count == 1 else f"manifest.{self.index}of{self.count}.jsonl"

    @property
    def done_marker(self) -> str:
        return f".done.{self.index}of{self.count}"

    def take(self, items: list) -> list:
        return items if self.count == 1 else items[self.index::self.count]


def read_manifests(out: Path) -> dict[str, dict]:
    """Every manifest in ``out`` (the single-process one and any process shards), merged: the
    last entry per name, shards read after the main file."""
    merged = read_manifest(out / MANIFEST)
    for p in sorted(out.glob("manifest.*of*.jsonl")):
        merged.update(read_manifest(p))
    return merged


class _Progress:
    """The run's counters, manifest and progress bar: one place records each finished file."""

    def __init__(self, L, manifest: Manifest, total: int, tag: str, desc: str, enabled: bool):
        from tqdm import tqdm

        self.L, self.manifest, self.tag = L, manifest, tag
        self.n_fail = self.n_ok = self.n_succ = self.n_new = 0
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, unit="img", disable=not enabled, desc=desc,
                        file=sys.stderr, dynamic_ncols=True)

    def error(self, name: str, err: str, notes=None, output=None) -> None:
        self.L.error("%s: %s", name, err)
        entry = {"name": name, "status": "error", "error": err, "output": output}
        if notes is not None:
            entry["notes"] = notes
        self.manifest.append(entry)
        self.n_fail += 1
        self.bar.update(1)

    def ok(self, entry: dict) -> None:
        self.manifest.append(entry)
        for note in entry.get("notes") or ():
            self.L.info("%s: %s", entry["name"], note)
        self.n_ok += 1
        self.n_new += 1
        self.n_succ += bool(entry["success"])
        self.bar.update(1)
        dt = time.perf_counter() - self.t0
        self.bar.set_postfix_str(f"{self.tag}success {self.n_succ}/{self.n_ok} "
                                 f"({100.0 * self.n_succ / self.n_ok:.1f}%), "
                                 f"{self.n_new / max(dt, 1e-9):.2f} img/s")

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
        elif not _inside(img_dir / oname, img_dir):
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
    check_or_store_config(plan.out, cfg)  # validated: the run may now leave its settings behind
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
                     f"{tag}protect {cfg.run_code}", progress)
    try:
        for name, err, oname in pre_errors:
            prog.error(name, err, output=oname)
        _stream(cfg, judge, extra, todo, img_dir, prog, slots, max_pixels, workers)
    finally:
        prog.close()
    (out / shard.done_marker).write_text("done\n")
    if shard.index != 0:
        L.info("process %d done: %d protected, %d failed; process 0 writes the zip",
               shard.index, prog.n_ok, prog.n_fail)
        return {"standin": cfg.standin, "run_code": cfg.run_code, "process": shard.index,
                "protected": prog.n_ok, "failed": prog.n_fail, "images": len(todo),
                "zip": None, "errors": []}
    _wait_for_shards(out, shard, L)
    return _summarise(plan, cfg, judge, extra, compute, n_skip, prog.t0, L, n_all)


def _stream(cfg, judge, extra, todo, img_dir, prog: _Progress, slots, max_pixels, workers):
    """Decode (worker pool) -> attack (continuous batching) -> encode + write (worker pool); a
    manifest line is appended, in completion order, once its PNG is in place."""
    import collections

    import jax.numpy as jnp

    import ppjax
    from ppjax.attacks import StreamItem
    from ppjax.runs import pipeline

    held: dict[str, data.Loaded] = {}
    logits = judge.spec.output == "logits"

    decoded = pipeline.prefetch(todo, cfg.task, cfg.resize, max_pixels, workers=workers)

    def items():
        for b in decoded:
            if b.error is not None:
                prog.error(b.item.name, b.error, notes=b.notes)
                continue
            held[b.item.name] = b
            label = b.item.label if (logits and b.item.label is not None) else -1
            yield StreamItem(b.item.name, b.image, image_seed(b.item.name, cfg.seed), label)

    writes: collections.deque = collections.deque()

    def drain(block: bool) -> None:
        while writes and (block or writes[0][0].done()):
            fut, entry = writes.popleft()
            try:
                entry["sha256"] = fut.result()
            except Exception as e:  # this file failed to write; the run goes on
                prog.error(entry["name"], f"writing {entry['output']}: {e}", entry["notes"])
                continue
            prog.ok(entry)

    png_text = STANDIN_TEXT if cfg.standin else None
    with pipeline.Writer(workers=workers) as writer, contextlib.closing(decoded):
        try:
            for name, res in ppjax.attacks.stream(
                    cfg.attack, judge, items(), preset=cfg.preset, slots=slots,
                    appeal_judge=extra.get("appeal"), extra_judges=extra,
                    dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else None,
                    **dict(cfg.overrides)):
                b = held.pop(name)
                entry = _entry(cfg, b, res, logits)
                writes.append((writer.submit(img_dir / entry["output"],
                                             imageio.to_uint8(res.images), png_text), entry))
                drain(block=False)
        finally:
            drain(block=True)


def _entry(cfg, b: data.Loaded, res, logits: bool) -> dict:
    name = b.item.name
    entry = {"name": name, "status": "ok", "output": output_name(cfg.run_code, name),
             "notes": b.notes, "seed": image_seed(name, cfg.seed), "success": bool(res.success),
             "steps": int(res.steps), "linf_levels": round(float(res.linf) * 255.0, 3)}
    for k in ("appeal_before", "appeal_after"):
        if k in res.extras:
            entry[k] = round(float(res.extras[k]), 6)
    if logits:
        entry["label"] = int(res.extras["labels"])
        entry["label_source"] = "list" if b.item.label is not None else "clean prediction"
    return entry


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
    ok_files = [img_dir / e["output"] for e in okd.values()]
    errors = [{"name": n, "error": e.get("error")} for n, e in sorted(final.items())
              if n in wanted and e.get("status") != "ok"]
    zpath = write_zip(out, cfg.run_code, ok_files, cfg.standin)
    n_ok, n_succ = len(okd), sum(bool(e.get("success")) for e in okd.values())
    summary = {
        "standin": cfg.standin, "run_code": cfg.run_code, "task": cfg.task,
        "judge": judge.label, "attack": cfg.attack, "preset": cfg.preset,
        "images": n_all, "protected": n_ok, "done": n_ok, "failed": len(errors),
        "skipped_on_resume": n_skip, "attack_success": n_succ,
        "attack_success_rate": n_succ / n_ok if n_ok else None,
        "zip": zpath.name, "errors": errors, "compute": compute,
        "skipped_inputs": [{"name": n, "reason": r} for n, r in plan.skipped],
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if cfg.appeal:
        summary["appeal_judge"] = extra["appeal"].label
        for k in ("appeal_before", "appeal_after"):
            v = [e[k] for e in okd.values() if e.get(k) is not None]
            summary[f"{k}_mean"] = float(np.mean(v)) if v else None
    write_json(out / "summary.json", summary)
    rate = f"{100.0 * n_succ / n_ok:.1f}%" if n_ok else "n/a"
    L.info("done: %d protected, %d failed, attack success %s; zip %s", n_ok, len(errors), rate,
           zpath)
    return summary


# ---------------------------------------------------------------- CLI

def _cmd(args) -> int:
    from ppjax import parallel as sharding

    if args.workers is not None and args.workers < 1:
        raise SetupError(f"--workers must be >= 1, got {args.workers}")
    sharding.init_distributed()  # several processes: PPJAX_COORDINATOR_ADDRESS etc., or SLURM
    task = data.TASKS.get(int(args.task))
    judge = args.judge or (task.judge if task else "")
    try:
        overrides = parse_overrides(args.set)
    except ValueError as e:
        raise SetupError(str(e)) from None
    cfg = ProtectConfig(
        task=int(args.task), attack=args.attack, run_code=args.run_code,
        images=str(Path(args.images).resolve()), judge=judge,
        list_file=str(Path(args.list).resolve()) if args.list else None,
        labels_file=str(Path(args.labels).resolve()) if args.labels else None,
        preset=args.preset, overrides=overrides, seed=int(args.seed),
        standin=bool(args.standin), resize=args.resize, appeal=args.appeal,
        dtype=args.dtype,
    )
    summary = run_protect(cfg, args.out, weights_dir=args.weights_dir,
                          batch_size=args.batch_size, progress=not args.no_progress,
                          workers=args.workers)
    if summary.get("zip") is None:  # a distributed run's process > 0: process 0 reports
        print(f"process {summary['process']}: {summary['protected']} protected, "
              f"{summary['failed']} failed")
        return 1 if summary["failed"] else 0
    tag = "STAND-IN " if summary["standin"] else ""
    print(f"{tag}{summary['run_code']}: {summary['protected']}/{summary['images']} protected, "
          f"{summary['failed']} failed -> {Path(args.out) / summary['zip']}")
    for e in summary["errors"]:
        print(f"{tag}error: {e['name']}: {e['error']}", file=sys.stderr)
    return 1 if summary["failed"] else 0


def attack_catalogue() -> str:
    """``name: preset, preset, ...`` per attack, one per line (for ``--help``)."""
    from ppjax.attacks.registry import ALIASES, ATTACKS

    lines = [f"  {name:13s} presets: {', '.join(presets)}" for name, presets in ATTACKS.items()]
    return ("attacks (--attack NAME --preset PRESET; 'default' when --preset is not given):\n"
            + "\n".join(lines) + "\n  aliases: "
            + ", ".join(f"{a}={n}" for a, n in sorted(ALIASES.items())))


def add_parser(sub) -> None:
    import argparse

    from ppjax import config

    class Fmt(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    p = sub.add_parser(
        "protect", help="protect a test set and write a submission run (resumable)",
        formatter_class=Fmt, epilog=attack_catalogue() + "\n\nexit codes: 0 all done, 1 some "
        "files failed (each listed), 2 usage/setup error (nothing done), 3 unexpected error")
    p.add_argument("--task", type=int, required=True, choices=sorted(data.TASKS),
                   help="Pixel Privacy task: 2019 (ResNet50-Places365, 256x256) or 2020 "
                        "(KonCept512, 512x384, JPEG-90)")
    p.add_argument("--attack", required=True, metavar="NAME",
                   help="attack name (listed below with its presets)")
    p.add_argument("--preset", default=None, help="named preset of the attack (None: 'default')")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an attack setting (repeatable), e.g. --set steps=20 --set "
                        "eps=8/255; KEY is an AttackConfig field")
    p.add_argument("--images", required=True, help="folder of the images")
    p.add_argument("--list", default=None, help="MEPP list (CSV) naming the images to use")
    p.add_argument("--labels", default=None, help="Places365 places365_val.txt for labels "
                   "(None: labels from the list, else the judge's clean prediction)")
    p.add_argument("--out", required=True, help="output folder (created; resumable; one run at "
                   "a time)")
    p.add_argument("--run-code", required=True, help="TEAM_RUN: names the zip and each PNG")
    p.add_argument("--judge", default=None, help="override the task's judge (None: the task's)")
    p.add_argument("--standin", action="store_true",
                   help="use a random-weight STAND-IN judge (tests/demos only; outputs are "
                        "marked STAND-IN)")
    p.add_argument("--weights-dir", default=None,
                   help=f"converted weights (None: $PPJAX_WEIGHTS_DIR or {config.weights_dir()})")
    p.add_argument("--batch-size", type=int, default=8, help="slots of the streaming engine: "
                   "images attacked at once (does not change results)")
    p.add_argument("--workers", type=int, default=None, help="decode and write pools' size "
                   "(None: one per CPU, at most 8)")
    p.add_argument("--seed", type=int, default=0, help="base seed; per-image seeds derive from it")
    p.add_argument("--resize", default="auto", choices=imageio.RESIZE_RULES,
                   help="rule for images not at the task's size (see ppjax.image.io); auto: 2020 "
                        "centre-crops to 512x384 without resizing when the image is large enough, "
                        "as the organisers did, else resizes (default: %(default)s)")
    p.add_argument("--appeal", default=None, metavar="JUDGE",
                   help="add an appeal term scored by this judge (e.g. nima_mobilenet; a stand-in "
                        "with --standin); its weight: --set appeal_weight=W")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="judge compute dtype; bfloat16 runs the convolutions through oneDNN on "
                        "AMX CPUs (ppjax.accel.onednn) and tensor cores on GPUs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd)
