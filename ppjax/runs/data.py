"""Datasets for protect/evaluate, streamed in batches (never the whole set in memory).

Three kinds of set:

* **2019 MEPP lists** (:func:`mepp_items`): a list file (``MEPP18val.csv`` with quoted
  ``"file","label"`` rows; ``MEPP18test.csv`` / ``MEPP19test.csv`` with names only;
  ``MEPP19test_manual.csv`` unquoted ``name,label``) plus an image folder. Missing labels come from
  Places365's ``places365_val.txt`` (lines ``Places365_val_00000001.jpg 165``).
* **2020 folder** of PNGs at 512x384 (:func:`folder_items`).
* **A plain folder of photos** with no labels (:func:`folder_items`): ``label`` is ``None`` and
  ``ppjax protect`` uses the judge's clean prediction in its place.

An :class:`Item` is only a name, a path and an optional label; pixels are decoded per batch by
:func:`iter_batches`, which turns every undecodable file into a per-item error.

Input folder rules (:func:`scan_folder`, :func:`mepp_items`), each logged and counted:

* **hidden files** (names starting with ``.``, ``..jpg`` included) are skipped and reported as
  skipped, as are sub-folders (not searched) and files whose extension is not an image's;
* a **symlink** is followed only when its target lies inside the image folder; a link leaving the
  folder (or a broken one, or a symlink loop) is refused as a per-file error with its reason. A
  name in a MEPP list is the user's explicit choice and is read where it points (``../x.jpg``
  included), unless it is such a symlink;
* an image-named entry that is not a regular file (a folder named ``x.jpg``, a FIFO, a device, a
  socket) or that this process may not read is a per-file error with its reason
  (:func:`ppjax.image.io.file_problem`), found without opening it: a FIFO or a device is never
  read, so nothing blocks.
"""

from __future__ import annotations

import csv
import dataclasses
import errno
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from ppjax.image import io as imageio

log = logging.getLogger("ppjax.runs.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".pbm", ".jfif")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What a Pixel Privacy task judges with (names in :data:`ppjax.judges.JUDGES`). ``year``
    is the task's key: a year (2019, 2020: images at the task's size) or a name ("faces":
    every photo at its own size, at most ``max_side`` px on the long side)."""

    year: int | str
    judge: str
    appeal_judge: str
    threshold: float | None = None  # score judges: an image "keeps its quality" if score > this
    jpeg_quality: int | None = None  # the organisers re-encode the submission with this quality
    alpha: str = "white"  # transparent pixels: composited on white, or dropped (``convert('RGB')``)
    max_side: int | None = None  # photos at their own size: longer ones first downscaled to this
    attack: str | None = None  # the default attack (None: ``--attack`` is required)

    @property
    def hw(self) -> tuple[int, int] | None:
        """(height, width) of the task's images; None: every photo at its own size."""
        return None if self.max_side else imageio.task_hw(self.year)


TASKS: dict[int | str, TaskSpec] = {
    2019: TaskSpec(2019, judge="resnet50_places365", appeal_judge="nima_mobilenet"),
    2020: TaskSpec(2020, judge="koncept512", appeal_judge="nima_mobilenet", threshold=50.0,
                   jpeg_quality=90, alpha="drop"),
    # hide faces from MTCNN (docs/faces.md); 2048: the long side uploads are commonly cut to
    "faces": TaskSpec("faces", judge="mtcnn", appeal_judge="nima_mobilenet", max_side=2048,
                      attack="faces"),
}


def task_key(task: int | str) -> int | str:
    """``task`` as a key of :data:`TASKS`: a year as an int ("2019" -> 2019), a name as is.

    Raises:
      ValueError: an unknown task, naming the known ones.
    """
    key = int(task) if str(task).strip().isdigit() else str(task).strip()
    if key not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: "
                         f"{', '.join(str(k) for k in TASKS)}")
    return key


def get_task(year: int | str) -> TaskSpec:
    return TASKS[task_key(year)]


@dataclasses.dataclass(frozen=True)
class Item:
    """One image of a set: ``name`` as listed (the original file name), its ``path``, and the
    ground-truth ``label`` (Places365 index) or ``None``."""

    name: str
    path: str
    label: int | None = None
    error: str | None = None  # refused before decoding (e.g. a symlink leaving the folder)


@dataclasses.dataclass
class Loaded:
    """An item after decoding: ``image`` [H, W, 3] uint8 at the task's size, or ``error``."""

    item: Item
    image: np.ndarray | None
    notes: list[str]
    error: str | None = None


def _read_text(path: str | os.PathLike) -> str:
    # utf-8-sig drops the byte-order mark some of the published lists start with.
    return Path(path).read_text(encoding="utf-8-sig")


def read_mepp_list(path: str | os.PathLike) -> list[tuple[str, int | None]]:
    """Parse a MEPP list: rows ``name`` or ``name,label`` (fields optionally quoted, CRLF or LF,
    BOM tolerated, blank lines skipped). Returns ``[(name, label or None)]`` in file order."""
    rows = []
    for n, row in enumerate(csv.reader(io.StringIO(_read_text(path))), 1):
        row = [c.strip() for c in row]
        if not row or not row[0]:
            continue
        if row[0].lower() in ("file", "filename", "name") and n == 1:
            continue  # header
        label = None
        if len(row) > 1 and row[1] != "":
            try:
                label = int(row[1])
            except ValueError:
                raise ValueError(f"{path}:{n}: label {row[1]!r} is not an integer") from None
        rows.append((row[0], label))
    return rows


def read_places365_labels(path: str | os.PathLike) -> dict[str, int]:
    """Parse Places365's ``places365_val.txt``: ``{file name: class index}``."""
    out = {}
    for n, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected '<file> <label>', got {line!r}")
        out[os.path.basename(parts[0])] = int(parts[1])
    return out


def mepp_items(images_dir: str | os.PathLike, list_file: str | os.PathLike,
               labels_file: str | os.PathLike | None = None) -> list[Item]:
    """Items of a MEPP list whose images live in ``images_dir``. Labels come from the list's
    second column when present, else from ``labels_file`` (``places365_val.txt``), else None."""
    images_dir = Path(images_dir)
    labels = read_places365_labels(labels_file) if labels_file else {}
    items = []
    for name, label in read_mepp_list(list_file):
        if label is None:
            label = labels.get(os.path.basename(name))
        path = images_dir / name
        # a listed name is the user's explicit choice (``../x.jpg`` included); a symlink is not
        items.append(Item(name=name, path=str(path), label=label,
                          error=refusal_reason(path, images_dir) if path.is_symlink() else None))
    if labels_file and any(it.label is None for it in items):
        missing = [it.name for it in items if it.label is None]
        log.warning("%d listed images have no label in %s (first: %s)", len(missing), labels_file,
                    missing[0])
    return items


def refusal_reason(path: Path, folder: Path) -> str | None:
    """Why ``path`` (a file named in ``folder``) is refused, or None: a link or name that
    leaves the folder, or a broken link."""
    try:
        target = path.resolve(strict=False)
        target.relative_to(folder.resolve())
    except ValueError:
        kind = "symlink" if path.is_symlink() else "name"
        return (f"refused: {kind} leads outside the image folder (to {path.resolve()}); only files "
                f"inside {folder} are read")
    except RuntimeError as e:  # a symlink loop (an OSError from Python 3.13)
        return f"refused: symlink loop, the link cannot be resolved ({e})"
    except OSError as e:
        what = "symlink loop" if e.errno == errno.ELOOP else "the link cannot be resolved"
        return f"refused: {what} ({e})"
    if path.is_symlink() and not target.exists():
        return f"refused: broken symlink (to {target})"
    return None


def scan_folder(images_dir: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                extensions: Sequence[str] = IMAGE_EXTENSIONS
                ) -> tuple[list[Item], list[tuple[str, str]]]:
    """Every image-named file directly in ``images_dir`` (sorted by name), under the module's
    input folder rules. Returns ``(items, skipped)``: ``skipped`` is ``[(name, reason)]`` for
    hidden files, sub-folders and non-image files (each logged). Symlinks leaving the folder are
    items with an ``error``."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"image folder not found: {images_dir}")
    labels = read_places365_labels(labels_file) if labels_file else {}
    items, skipped = [], []
    for p in sorted(images_dir.iterdir(), key=lambda q: q.name):
        if p.name.startswith("."):
            skipped.append((p.name, "hidden file"))
        elif p.is_dir() and not p.is_symlink() and p.suffix.lower() not in extensions:
            skipped.append((p.name, "folder (not searched)"))
        elif p.suffix.lower() not in extensions:
            skipped.append((p.name, "not an image extension"))
        else:
            items.append(Item(name=p.name, path=str(p), label=labels.get(p.name),
                              error=refusal_reason(p, images_dir)))
    for reason in sorted({r for _, r in skipped}):
        names = [n for n, r in skipped if r == reason]
        log.warning("skipped %d %s(s) in %s: %s%s", len(names), reason, images_dir,
                    ", ".join(names[:5]), " ..." if len(names) > 5 else "")
    return items, skipped


def folder_items(images_dir: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Item]:
    """The items of :func:`scan_folder` (the skipped files are logged there)."""
    return scan_folder(images_dir, labels_file, extensions)[0]


def dataset_scan(images_dir, list_file=None, labels_file=None
                 ) -> tuple[list[Item], list[tuple[str, str]]]:
    """``(items, skipped)``: a MEPP list when ``list_file`` is given (nothing skipped), else the
    plain folder (:func:`scan_folder`)."""
    if list_file:
        return mepp_items(images_dir, list_file, labels_file), []
    return scan_folder(images_dir, labels_file)


def dataset_items(images_dir, list_file=None, labels_file=None) -> list[Item]:
    """A MEPP list when ``list_file`` is given, else the plain folder."""
    return dataset_scan(images_dir, list_file, labels_file)[0]


def load_item(item: Item, task: int | None, rule: str = "auto", max_pixels: int | None = None,
              *, hw: tuple[int, int] | None = None) -> Loaded:
    """Decode one item to the task's size (by ``rule``), or to ``hw`` (a judge's size, by a plain
    bicubic resize, as ``ppjax sweep`` feeds its judge) when given; every failure becomes
    ``Loaded.error``. Alpha as the task says (:attr:`TaskSpec.alpha`: 2020 drops it, as the
    organisers' ``convert('RGB')``; otherwise, and at a judge's size, composited on white)."""
    if item.error:
        return Loaded(item, None, [], item.error)
    try:
        spec = None if task is None else get_task(task)
        alpha = "white" if spec is None else spec.alpha
        img, notes = imageio.load_rgb(item.path, max_pixels=max_pixels, alpha=alpha)
        if hw is None and spec is not None and spec.hw is None:
            img, more = imageio.cap_long_side(img, spec.max_side)
        else:
            img, more = imageio.to_task_size(img, task, rule) if hw is None else _to_hw(img, hw)
        return Loaded(item, img, notes + more)
    except imageio.DecodeError as e:
        return Loaded(item, None, [], str(e))
    except MemoryError:
        return Loaded(item, None, [], "out of memory while decoding")


def _to_hw(img: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    # a judge's size: the aspect ratio kept, as the 2019 task's default (imageio.to_task_size)
    if img.shape[:2] == tuple(hw):
        return img, []
    return imageio.resize_crop(img, hw)


def path_items(paths: Iterable[str | os.PathLike]) -> list[Item]:
    """The images named by ``paths``: files, or folders under this module's folder rules (hidden
    files and non-images skipped and logged); each item is named by its path.

    Raises:
      SetupError: a path that does not exist (all of them), or no image at all.
    """
    from ppjax.errors import SetupError

    paths = [Path(p) for p in paths]
    out, missing = [], []
    for p in paths:
        if p.is_dir():
            out += [dataclasses.replace(it, name=it.path) for it in scan_folder(p)[0]]
        elif p.is_file():
            out.append(Item(name=str(p), path=str(p), error=refusal_reason(p, p.parent)))
        else:
            missing.append(f"no such image or folder: {p}")
    if missing:
        raise SetupError(missing)
    if not out:
        raise SetupError(f"no images found in {', '.join(map(str, paths))}")
    return out


def load_images(paths, hw: tuple[int, int], limit: int, errors: list | None = None
                ) -> np.ndarray:
    """[N, H, W, 3] float32 in [0, 1] on the 8-bit grid: the first ``limit`` readable images of
    ``paths`` (:func:`path_items`), each by :func:`load_item` at ``hw``. A file that cannot be
    read is logged and appended to ``errors`` as ``{"name", "error"}``.

    Raises:
      SetupError: as :func:`path_items`, or when no image could be read.
    """
    from ppjax.errors import SetupError

    out = []
    for it in path_items(paths):
        if len(out) == limit:
            break
        lo = load_item(it, None, hw=hw)
        if lo.error:
            log.error("%s: %s", it.name, lo.error)
            if errors is not None:
                errors.append({"name": it.name, "error": lo.error})
            continue
        out.append(imageio.to_float01(lo.image))
    if not out:
        raise SetupError(f"none of the images could be read ({len(errors or [])} failed)")
    return np.stack(out)


def batched(xs: Iterable, n: int) -> Iterator[list]:
    """Consecutive chunks of ``n`` (the last may be shorter)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    chunk = []
    for x in xs:
        chunk.append(x)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def iter_batches(items: Iterable[Item], task: int, batch_size: int, rule: str = "auto",
                 max_pixels: int | None = None) -> Iterator[list[Loaded]]:
    """Stream ``items`` as lists of :class:`Loaded` of up to ``batch_size``; only one batch of
    pixels is held at a time."""
    for chunk in batched(items, batch_size):
        yield [load_item(it, task, rule, max_pixels) for it in chunk]


def stack_ok(batch: Sequence[Loaded], pad_to: int | None = None
             ) -> tuple[list[Loaded], np.ndarray | None]:
    """The decodable members of ``batch`` and their images ``[n, H, W, 3]`` uint8, padded
    (:func:`ppjax.parallel.pad_batch`) to ``pad_to`` rows so every batch has one shape."""
    ok = [b for b in batch if b.image is not None]
    if not ok:
        return ok, None
    from ppjax.parallel import pad_batch  # here: this module is preloaded without JAX

    x = np.stack([b.image for b in ok])
    return ok, pad_batch(x, pad_to) if pad_to and len(ok) < pad_to else x
