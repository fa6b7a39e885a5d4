"""The run-folder format of ``ppjax protect`` (the one owner; protect writes it, evaluate and
the sweep read it)::

    DIR/config.json          # ProtectConfig: the settings of the run; a resume with others is refused
    DIR/manifest.jsonl       # one JSON line per finished file (ok or error), appended + fsynced;
                             # a process of a distributed run writes manifest.<index>of<count>.jsonl
    DIR/images/<runcode>_<stem>.png   # lossless 8-bit PNGs at the task's size (output_name)
    DIR/<runcode>.zip        # the submission (STANDIN_<runcode>.zip on stand-in judges)
    DIR/summary.json         # counts, success rate, per-file errors of the last invocation
    DIR/.ppjax.lock          # held (flock) while a run works in DIR (OutputLock)

:func:`collect_run` reads such a folder, or a plain folder of ``<runcode>_<stem>.png`` files, for
``ppjax evaluate``; ``ppjax sweep`` holds its output folder with the same :class:`OutputLock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import time
import unicodedata
import zipfile
from pathlib import Path

from ppjax.errors import SetupError
from ppjax.runs import data
from ppjax.runs.report import write_json

MANIFEST = "manifest.jsonl"
CONFIG = "config.json"
IMAGES = "images"
RUN_SUFFIXES = (".png", ".jpg", ".jpeg")  # what a run folder may submit
SUMMARY = "summary.json"
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
    # zlib level of the PNGs (0-9); None: a resumed run's own level, else
    # ppjax.image.io.PNG_LEVEL (resolved by ppjax.runs.protect.validate_protect)
    png_level: int | None = None

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["overrides"] = [list(kv) for kv in self.overrides]
        return d


#: Settings added to :class:`ProtectConfig` after runs were made without them, with the value
#: those older runs used where it differs from the field's default (their PNGs were encoded
#: at zlib level 6).
LEGACY = {"png_level": 6}


def stored_config(out: Path) -> dict | None:
    """The settings of the run in ``out`` (``config.json``; keys it predates filled in with
    :data:`LEGACY`, then the defaults), None when ``out`` holds no run. Raises OSError or
    ValueError when the file is unreadable."""
    path = out / CONFIG
    if not path.exists():
        return None
    old = json.loads(path.read_text(encoding="utf-8"))
    defaults = {f.name: f.default for f in dataclasses.fields(ProtectConfig)
                if f.default is not dataclasses.MISSING}
    return {**defaults, **LEGACY, **old}


class ResumeMismatch(SetupError):
    """The output folder holds a run made with other settings."""


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


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (links resolved) lies inside ``folder``."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def file_sha256(path: Path) -> str | None:
    """The sha256 (hex) of the file's bytes, or None when it cannot be read."""
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


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One line of ``manifest.jsonl``: a finished file, ``ok`` (its PNG ``output`` is in place
    with ``sha256``) or ``error`` (with the ``error``). :meth:`to_json` writes the keys each
    kind has always had (an ok line's appeal and label keys only when set, an error line's
    ``notes`` only when known), so the lines are byte-identical to older runs'."""

    name: str
    status: str  # "ok" | "error"
    output: str | None
    notes: tuple[str, ...] | None = None
    error: str | None = None
    seed: int | None = None
    success: bool | None = None
    steps: int | None = None
    linf_levels: float | None = None
    sha256: str | None = None
    label: int | None = None
    label_source: str | None = None  # "list" | "clean prediction"
    appeal_before: float | None = None
    appeal_after: float | None = None
    # task faces (ppjax.runs.faces_protect): the photo's own size and its bucket [W, H], the
    # faces the cascade found on the clean photo, and whether there was anything to protect
    size: tuple[int, int] | None = None
    bucket: tuple[int, int] | None = None
    faces_clean: int | None = None
    no_face: bool | None = None
    protected: bool | None = None

    _OPTIONAL = ("label", "label_source", "appeal_before", "appeal_after", "size", "bucket",
                 "faces_clean", "no_face", "protected")

    @classmethod
    def failed(cls, name: str, error: str, notes=None, output: str | None = None
               ) -> ManifestEntry:
        return cls(name, "error", output, None if notes is None else tuple(notes), error)

    @classmethod
    def from_json(cls, d: dict) -> ManifestEntry:
        """The entry of a manifest line (keys it does not know are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("notes", "size", "bucket"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def to_json(self) -> dict:
        d = {"name": self.name, "status": self.status, "output": self.output}
        if self.status != "ok":
            d["error"] = self.error
            if self.notes is not None:
                d["notes"] = list(self.notes)
            return d
        d.update(notes=list(self.notes or ()), seed=self.seed, success=self.success,
                 steps=self.steps, linf_levels=self.linf_levels, sha256=self.sha256)
        d.update({k: list(v) if isinstance(v, tuple) else v
                  for k in self._OPTIONAL if (v := getattr(self, k)) is not None})
        return d

    def line(self) -> bytes:
        """The manifest line (utf-8, sorted keys, newline-terminated)."""
        return (json.dumps(self.to_json(), ensure_ascii=False, sort_keys=True) + "\n").encode()


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """``summary.json`` of a ``ppjax protect`` run: counts, success rate and per-file errors of
    the last invocation. :meth:`to_json` keeps the key order older runs were written in (the
    appeal keys only for a run with an appeal judge)."""

    standin: bool
    run_code: str
    task: int
    judge: str
    attack: str
    preset: str | None
    images: int
    protected: int
    done: int
    failed: int
    skipped_on_resume: int
    attack_success: int
    attack_success_rate: float | None
    zip: str
    errors: list[dict]
    compute: dict
    skipped_inputs: list[dict]
    seconds: float
    appeal_judge: str | None = None
    appeal_before_mean: float | None = None
    appeal_after_mean: float | None = None

    _APPEAL = ("appeal_judge", "appeal_before_mean", "appeal_after_mean")

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        if self.appeal_judge is None:
            for k in self._APPEAL:
                del d[k]
        return d


class Manifest:
    """Append-only JSON lines (:class:`ManifestEntry`), each fsynced before the next image is
    reported done.

    A write or fsync that fails (a full disk) rolls the file back to its last synced length,
    so no torn or unsynced line stays, and raises; the entries rolled back are in
    :attr:`rolled_back` (their caller removes their PNGs: the manifest lists exactly the whole
    files)."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists() and path.stat().st_size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            if torn:  # a kill left half a line: start the next entry on its own line
                with open(path, "ab") as f:
                    f.write(b"\n")
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        self._synced = os.fstat(self._fd).st_size
        self._unsynced: list[ManifestEntry] = []
        self.rolled_back: list[ManifestEntry] = []

    def append(self, entry: ManifestEntry, sync: bool = True) -> None:
        """Append ``entry`` as one line; with ``sync``, fsync it (else :meth:`sync` does, once
        for several lines)."""
        self._unsynced.append(entry)
        data = entry.line()
        try:
            while data:
                data = data[os.write(self._fd, data):]
        except OSError:
            self._roll_back()
            raise
        if sync:
            self.sync()

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError:
            self._roll_back()
            raise
        self._synced = os.fstat(self._fd).st_size
        self._unsynced = []

    def _roll_back(self) -> None:
        with contextlib.suppress(OSError):  # shrinking needs no space
            os.ftruncate(self._fd, self._synced)
        self.rolled_back, self._unsynced = self._unsynced, []

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: Keys of ``config.json`` that record what a run did (:mod:`ppjax.runs.provenance`) rather than
#: choose it: a resume with another ppjax commit is not another run.
RECORD_KEYS = ("attack_resolved", "ppjax")


def config_mismatch(out: Path, cfg: ProtectConfig) -> str | None:
    """Why ``out`` cannot hold ``cfg`` (its ``config.json`` has other settings), or None."""
    new = json.loads(json.dumps(cfg.to_json()))
    try:
        old = stored_config(out)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return f"{out / CONFIG} is unreadable ({e}); use another --out"
    if old is None:
        return None
    diff = sorted(k for k in set(old) | set(new)
                  if k not in RECORD_KEYS and old.get(k) != new.get(k))
    if not diff:
        return None
    lines = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
    return (f"{out} holds a run made with other settings ({lines}); use another --out, or "
            f"the same settings to resume")


def check_or_store_config(out: Path, cfg: ProtectConfig, record: dict | None = None) -> None:
    """Store ``cfg`` in ``out`` with ``record`` (:data:`RECORD_KEYS`: the resolved attack and
    ppjax's version); if a different ``cfg`` is there already, refuse (ResumeMismatch)."""
    why = config_mismatch(out, cfg)
    if why:
        raise ResumeMismatch(why)
    if not (out / CONFIG).exists():
        write_json(out / CONFIG, json.loads(json.dumps({**cfg.to_json(), **(record or {})})))


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


def write_zip(out: Path, run_code: str, files: list[Path], standin: bool = False) -> Path:
    """The submission zip ``<out>/<zip_name>``: deterministic (sorted, fixed timestamps,
    stored), flat, written atomically and streamed from disk, so memory does not grow with the
    set (:func:`ppjax.runs.pipeline.write_zip_atomic`)."""
    from ppjax.runs.pipeline import write_zip_atomic

    return write_zip_atomic(out / zip_name(run_code, standin), files)


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


@dataclasses.dataclass(frozen=True)
class RunFile:
    """One submitted image: its ``name`` (original name when known), the PNG ``path``, the
    matching original :class:`ppjax.runs.data.Item` (or None) and the label recorded by protect."""

    name: str
    path: str
    original: data.Item | None
    label: int | None = None
    label_source: str | None = None
    notes: tuple[str, ...] = ()


def _strip_run_code(stem: str, run_code: str | None) -> str:
    if run_code and stem.startswith(run_code + "_"):
        return stem[len(run_code) + 1:]
    return stem


def collect_run(run: Path, images=None, list_file=None, labels_file=None, run_code=None
                ) -> tuple[list[RunFile], list[dict], dict]:
    """The files of a run folder: a ``ppjax protect`` output (``config.json`` + manifest) or a
    plain folder of ``<runcode>_<stem>.png``. Returns ``(files, errors, config)``."""
    cfg = {}
    if (run / CONFIG).exists():
        cfg = json.loads((run / CONFIG).read_text(encoding="utf-8"))
    images = images or cfg.get("images")
    if images and not (list_file or labels_file) and images == cfg.get("images"):
        list_file, labels_file = cfg.get("list_file"), cfg.get("labels_file")
    originals = data.dataset_items(images, list_file, labels_file) if images else []
    run_code = run_code or cfg.get("run_code")
    errors: list[dict] = []
    files: list[RunFile] = []
    manifest = read_manifests(run)
    if cfg and manifest:
        by_name = {it.name: it for it in originals}
        for name, e in sorted(manifest.items()):
            if e.get("status") != "ok":
                errors.append({"name": name, "error": f"not in the run (protect: {e.get('error')})"})
                continue
            files.append(RunFile(name, str(run / IMAGES / e["output"]), by_name.get(name),
                                 e.get("label"), e.get("label_source"),
                                 tuple(e.get("notes") or ())))
        files.sort(key=lambda f: f.name)
        return files, errors, cfg
    folder = run / IMAGES if (run / IMAGES).is_dir() else run
    by_stem = {safe_stem(it.name): it for it in originals}
    found = [q for q in folder.iterdir() if q.is_file() and q.suffix.lower() in RUN_SUFFIXES]
    for p in sorted(found, key=lambda q: q.name):
        stem = _strip_run_code(p.stem, run_code)
        orig = by_stem.get(stem)
        if orig is None and not run_code:
            # unknown run code: the longest suffix after an underscore that names an original
            parts = p.stem.split("_")
            for k in range(1, len(parts)):
                orig = by_stem.get("_".join(parts[k:]))
                if orig is not None:
                    break
        files.append(RunFile(orig.name if orig else p.name, str(p), orig))
    return files, errors, cfg


def _zip_entry_sha256(z: zipfile.ZipFile, name: str) -> str:
    h = hashlib.sha256()
    with z.open(name) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify_run(run: Path, files: list[RunFile], cfg: dict) -> tuple[list[RunFile], list[dict]]:
    """Check the files of a ``ppjax protect`` run against what it recorded: each PNG's sha256
    against its manifest line, and the zip's entries against the PNGs (each PNG in the zip,
    byte for byte, and nothing else there). Returns ``(the files that pass, an error
    {"name", "error"} per file that does not)``; a run without its zip (not finished) is
    checked against the manifest only."""
    recorded = {e.get("output"): e.get("sha256") for e in read_manifests(run).values()
                if e.get("status") == "ok"}
    good, errors, shas = [], [], {}
    for f in files:
        out = Path(f.path).name
        got = file_sha256(Path(f.path))
        if got is None:
            errors.append({"name": f.name, "error": f"{out} is missing or unreadable"})
        elif recorded.get(out) and got != recorded[out]:
            errors.append({"name": f.name, "error": f"{out} changed after protect wrote it "
                                                    f"(its sha256 differs from the manifest's)"})
        else:
            good.append(f)
            shas[out] = got
    zpath = run / zip_name(cfg.get("run_code") or "", bool(cfg.get("standin")))
    if not zpath.exists():
        return good, errors
    try:
        with zipfile.ZipFile(zpath) as z:
            entries = set(z.namelist())
            zipped = {}
            for n in sorted(entries & set(shas)):
                try:
                    zipped[n] = _zip_entry_sha256(z, n)
                except (zipfile.BadZipFile, OSError, EOFError) as e:
                    zipped[n] = f"unreadable ({e})"
    except (zipfile.BadZipFile, OSError) as e:
        return [], errors + [{"name": zpath.name, "error": f"the zip is unreadable: {e}"}]
    kept = []
    for f in good:
        out = Path(f.path).name
        if out not in zipped:
            errors.append({"name": f.name, "error": f"{out} is missing from {zpath.name}"})
        elif zipped[out] != shas[out]:
            errors.append({"name": f.name, "error": f"{zpath.name}'s copy of {out} differs "
                                                    f"from the PNG"})
        else:
            kept.append(f)
    known = {Path(f.path).name for f in files}
    errors += [{"name": n, "error": f"in {zpath.name} but not a file of the run"}
               for n in sorted(entries - known)]
    return kept, errors
