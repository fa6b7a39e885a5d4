"""Reading photos the way ppjax's tasks need them: 8-bit RGB at the task's size, or a clear error.

Decoding rules (:func:`load_rgb`), each applied conversion is returned as a human-readable note
that ``ppjax protect`` records per file in its manifest and report:

* **EXIF orientation** is applied (``ImageOps.exif_transpose``), so the pixels are what a viewer
  shows.
* **Grey** (``L``, ``1``), **palette** (``P``), **CMYK** and other 8-bit modes are converted to RGB
  with Pillow's own conversion (CMYK uses Pillow's plain formula; an embedded ICC profile is not
  applied).
* **Alpha** (``RGBA``, ``LA``, ``PA``, palette transparency) is **composited on white**
  (``alpha="white"``, the 2019 default): a transparent pixel becomes what a viewer shows on a white
  page. ``alpha="drop"`` follows the 2020 organisers, whose scorer calls ``convert('RGB')`` and so
  keeps whatever colours hide under transparent pixels; :func:`ppjax.runs.data.load_item` uses it for
  2020. The note says which rule was applied.
* **16-bit** images are reduced to 8 bits: 16-bit grey by ``round(v / 257)`` (exact rescaling of
  0..65535 to 0..255); 16-bit RGB(A) PNGs are delivered by Pillow as their high byte.
* 32-bit float images have no defined display range and are rejected.

Errors (:class:`DecodeError`, a per-file error, never a crash of the whole run):

* corrupt or truncated files (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never switched on);
* files that are not images (a text file named ``.jpg``);
* decompression bombs: more pixels than ``max_pixels`` (default Pillow's ``MAX_IMAGE_PIXELS``,
  about 89.5 Mpx; Pillow itself refuses twice its limit, so a larger ``max_pixels`` stops
  there); the check happens on the header, before any pixel is decoded, and the message names
  the limit applied.

Task size (:func:`to_task_size`):

* 2019: 256x256 (the Places365 "small images"); 2020: 512x384 (width x height).
* Images already at the task's size are untouched. Others, by default (``rule="auto"``), keep
  their aspect ratio: ``rule="crop"`` resizes the shorter side to the task's (Pillow bicubic) and
  centre-crops the longer one, so no photo is squashed. ``rule="squash"`` (``"resize"`` is its
  older name, kept for runs that recorded it) resizes to the task's size **without keeping the
  aspect ratio**: that is how the Places365 small images were made (the Places365 site: images
  resized to 256x256 regardless of their aspect ratio). ``rule="centre"`` centre-crops **without
  resizing**, as the 2020 organisers made their test set from ``val_large``
  (``preprocess_data.py``) and as their scorer does (``CenterCrop((384, 512))``), and needs an
  image at least that large; ``rule="reject"`` turns a wrong size into a per-file error.
  ``rule="auto"`` (the default of :func:`to_task_size`) is ``"centre"`` for a 2020 image at least
  512x384, ``"squash"`` for a smaller 2020 image, and ``"crop"`` for 2019 (before issue 24 it
  squashed 2019 images too). Whatever happens is recorded as a note.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ppjax.names import RESIZE_RULES  # one list, which the CLI reads without this module

# (height, width) of each task's images.
TASK_HW: dict[int, tuple[int, int]] = {2019: (256, 256), 2020: (384, 512)}
ALPHA_RULES = ("white", "drop")


class DecodeError(Exception):
    """A file that cannot become an 8-bit RGB image under a sound rule (per-file error)."""


def task_hw(task: int) -> tuple[int, int]:
    """(height, width) of the task's images."""
    try:
        return TASK_HW[int(task)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASK_HW)}") from None


def _raw_bit_depth(im: Image.Image) -> int | None:
    """16 when the file stores 16-bit samples that Pillow will deliver as 8-bit (read from the
    decoder tile before ``load()``, which discards it), else None."""
    for t in getattr(im, "tile", None) or ():
        raw = t.args if isinstance(t.args, str) else (t.args[0] if t.args else "")
        if isinstance(raw, str) and raw.endswith(("16", "16B", "16L")) and im.mode != raw:
            return 16
    return None


def _composite_on_white(rgba: Image.Image) -> np.ndarray:
    a = np.asarray(rgba, np.float32)
    alpha = a[..., 3:4] / 255.0
    out = a[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _to_rgb8(im: Image.Image, notes: list[str], depth: int | None, alpha: str = "white"
             ) -> np.ndarray:
    mode = im.mode
    if mode == "RGB":
        if depth == 16:
            notes.append("16-bit RGB reduced to 8 bits (high byte)")
        return np.asarray(im, np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        v = np.asarray(im).astype(np.float64)
        if v.min() < 0 or v.max() > 65535:
            raise DecodeError(f"{mode} image with values outside 0..65535 has no 8-bit rule")
        g = np.clip(np.rint(v / 257.0), 0, 255).astype(np.uint8)
        notes.append(f"converted 16-bit grey ({mode})->8-bit RGB (v/257)")
        return np.repeat(g[..., None], 3, axis=-1)
    if mode == "F":
        raise DecodeError("32-bit float image has no defined display range")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode == "P" and "transparency" in im.info
    ) or (mode in ("L", "RGB") and "transparency" in im.info)
    if has_alpha:
        if depth == 16:
            notes.append("16-bit reduced to 8 bits (high byte)")
        if alpha == "drop":
            notes.append(f"converted {mode}->RGB, alpha dropped (as the 2020 organisers' "
                         "convert('RGB'))")
            return np.asarray(im.convert("RGBA"), np.uint8)[..., :3]
        notes.append(f"converted {mode}->RGB, alpha composited on white")
        return _composite_on_white(im.convert("RGBA"))
    names = {"L": "grey", "1": "bilevel", "P": "palette"}
    notes.append(f"converted {names.get(mode, mode)} ({mode})->RGB")
    try:
        return np.asarray(im.convert("RGB"), np.uint8)
    except (ValueError, OSError) as e:
        raise DecodeError(f"cannot convert mode {mode} to RGB: {e}") from None


def _bomb_error(pixels, limit: int | None, max_pixels: int | None) -> DecodeError:
    """The decompression-bomb refusal, naming the limit that applied. Pillow refuses files over
    twice its own limit inside ``Image.open``, naming that doubled limit; the limit applied here
    is ``limit`` (or Pillow's hard one when it is lower)."""
    hard = 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None
    applied = min(limit, hard) if (limit and hard) else (limit or hard)
    src_name = "max_pixels" if max_pixels is not None and applied == limit else \
        "Pillow MAX_IMAGE_PIXELS" if applied == limit else "2 x Pillow MAX_IMAGE_PIXELS"
    return DecodeError(f"decompression bomb guard: {pixels} pixels exceeds the limit of "
                       f"{applied} pixels ({src_name}); not decoded")


def _open_rgb8(src, limit: int | None, max_pixels: int | None, alpha: str,
               notes: list[str]) -> tuple[np.ndarray, str | None]:
    """``(img, format)``: the file opened, size-checked, EXIF-oriented and converted to 8-bit RGB
    (conversions appended to ``notes``); Pillow's own errors pass through."""
    with warnings.catch_warnings():
        # our own check below applies ``limit``; Pillow's warning would name its own
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(src) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise _bomb_error(f"{w}x{h} = {w * h}", limit, max_pixels)
            depth = _raw_bit_depth(im)
            im.load()
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (None, 1):
                im2 = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            else:
                im2 = im
            return _to_rgb8(im2, notes, depth, alpha), im.format


def decode_rgb(data: bytes | str | os.PathLike, max_pixels: int | None = None,
               alpha: str = "white") -> tuple[np.ndarray, list[str]]:
    """Decode an image file (path or bytes) to 8-bit RGB under the module's rules (``alpha``:
    "white" composites transparency on white, "drop" discards the alpha channel).

    Returns:
      ``(img, notes)``: ``img`` [H, W, 3] uint8; ``notes`` lists every conversion applied.
    Raises:
      DecodeError: corrupt, truncated, non-image, decompression bomb, or no sound rule.
    """
    if alpha not in ALPHA_RULES:
        raise ValueError(f"unknown alpha rule {alpha!r}; use one of {ALPHA_RULES}")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    src = io.BytesIO(data) if isinstance(data, bytes | bytearray) else data
    notes: list[str] = []
    try:
        img, fmt = _open_rgb8(src, limit, max_pixels, alpha, notes)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        import re

        m = re.search(r"\((\d+) pixels\)", str(e))
        raise _bomb_error(m.group(1) if m else "the image's", limit, max_pixels) from None
    except PermissionError as e:
        raise DecodeError(f"unreadable: {e.strerror}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (Pillow cannot identify the file)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        raise DecodeError(f"{kind} image file: {msg}") from None
    if img.ndim != 3 or img.shape[-1] != 3 or img.size == 0:
        raise DecodeError(f"decoded to an unexpected shape {img.shape}")
    if fmt and notes == [] and fmt not in ("JPEG", "PNG"):
        notes.append(f"decoded from {fmt}")
    return np.ascontiguousarray(img), notes


def load_rgb(path: str | os.PathLike, max_pixels: int | None = None, alpha: str = "white"
             ) -> tuple[np.ndarray, list[str]]:
    """Read ``path`` as 8-bit RGB; see :func:`decode_rgb`. Missing files are a DecodeError too."""
    p = Path(path)
    why = file_problem(p)
    if why:
        raise DecodeError(why)
    return decode_rgb(p, max_pixels=max_pixels, alpha=alpha)


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as an image file, found without opening it (a FIFO or a
    device would block or never end), or None: missing, a broken link or a symlink loop, a
    folder, a FIFO, a device or socket, or not readable by this process."""
    import errno
    import stat

    p = Path(path)
    try:
        st = os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"symlink loop: {p} cannot be resolved"
        if e.errno == errno.ENOENT:
            return f"broken symlink: {p}" if p.is_symlink() else f"no such file: {p}"
        return f"cannot read {p}: {e.strerror}"
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    for test, what in kinds:
        if test(st.st_mode):
            return f"{what}, not a regular file; not read"
    if not os.access(p, os.R_OK):
        return "unreadable: permission denied"
    return None


def to_task_size(img: np.ndarray, task: int, rule: str = "auto") -> tuple[np.ndarray, list[str]]:
    """Bring ``img`` ([H, W, 3] uint8) to the task's size (see the module docstring).

    Returns:
      ``(img, notes)``: [h, w, 3] uint8 at :data:`TASK_HW`; ``notes`` is empty when the image was
      already at the task's size.
    Raises:
      DecodeError: with ``rule="reject"`` and a wrong size, or ``rule="centre"`` and an image
        smaller than the task's size.
    """
    h, w = task_hw(task)
    if rule not in RESIZE_RULES:
        raise ValueError(f"unknown resize rule {rule!r}; use one of {RESIZE_RULES}")
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img, []
    if rule == "reject":
        raise DecodeError(f"image is {iw}x{ih} (WxH), task {task} needs {w}x{h}; rule is reject")
    if rule == "auto":
        # 2020: the organisers centre-crop without resizing; a photo too small for that is
        # resized to the size (as before issue 24); 2019: short side resized, centre crop
        rule = ("centre" if ih >= h and iw >= w else "squash") if task == 2020 else "crop"
    if rule == "centre":
        if ih < h or iw < w:
            raise DecodeError(f"image is {iw}x{ih} (WxH), smaller than task {task}'s {w}x{h}: a "
                              "centre crop without resizing needs at least that size")
        # torchvision CenterCrop's offsets: round((size - crop) / 2)
        top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
        return np.ascontiguousarray(img[top:top + h, left:left + w]), [
            f"centre-cropped {iw}x{ih}->{w}x{h} without resizing (2020 organisers' rule)"
        ]
    im = Image.fromarray(img)
    if rule in ("squash", "resize"):
        out = im.resize((w, h), Image.BICUBIC)
        return np.asarray(out, np.uint8), [
            f"resized {iw}x{ih}->{w}x{h} (bicubic, aspect ratio not kept)"
        ]
    return resize_crop(img, (h, w))


def resize_crop(img: np.ndarray, hw: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """``img`` [H, W, 3] uint8 to ``hw`` keeping its aspect ratio: the shorter side resized to
    fit (Pillow bicubic), the longer one centre-cropped. Returns ``(img, notes)``."""
    h, w = hw
    ih, iw = img.shape[:2]
    scale = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * scale)), max(h, round(ih * scale))
    big = Image.fromarray(img).resize((nw, nh), Image.BICUBIC)
    left, top = (nw - w) // 2, (nh - h) // 2
    out = big.crop((left, top, left + w, top + h))
    return np.asarray(out, np.uint8), [
        f"resized {iw}x{ih}->{nw}x{nh} (bicubic) and centre-cropped to {w}x{h}"
    ]


def cap_long_side(img: np.ndarray, max_side: int) -> tuple[np.ndarray, list[str]]:
    """``img`` [H, W, 3] uint8 downscaled (Pillow Lanczos, aspect ratio kept, as an upload
    would) so that its long side is at most ``max_side``; untouched (no note) when it is."""
    ih, iw = img.shape[:2]
    if max(ih, iw) <= max_side:
        return img, []
    s = max_side / max(ih, iw)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    out = Image.fromarray(img).resize((nw, nh), Image.LANCZOS)
    return np.asarray(out, np.uint8), [
        f"downscaled {iw}x{ih}->{nw}x{nh} (Lanczos): long side over {max_side} px"]


def resize_plain(x: np.ndarray, hw: tuple[int, int], resample=Image.NEAREST) -> np.ndarray:
    """Plain resize of uint8 images ``[B, H, W, 3]`` (or one ``[H, W, 3]``) to ``hw``; nearest by
    default, as Keras ``load_img(target_size=...)`` does (NIMA's evaluation script)."""
    h, w = hw
    if x.ndim == 3:
        return np.asarray(Image.fromarray(x).resize((w, h), resample), np.uint8)
    return np.stack([resize_plain(a, hw, resample) for a in x])


#: zlib level of the PNGs ppjax writes. Level 1 encodes ~3.7x faster than Pillow's default 6
#: for ~7% more bytes (RESULTS.md ``pipeline_host``): PNG encoding is the host's slowest job
#: and caps a run's rate when the device is fast. Runs made before the level was a setting
#: used 6 (:data:`ppjax.runs.layout.LEGACY`).
PNG_LEVEL = 1


def encode_png(img: np.ndarray, text: dict[str, str] | None = None, level: int = PNG_LEVEL
               ) -> bytes:
    """Lossless, deterministic PNG bytes of ``img`` [H, W, 3] uint8 (no timestamps; zlib
    ``level`` 0-9, the same bytes for the same level); ``text`` entries become ``tEXt`` chunks
    (e.g. the STAND-IN mark)."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"encode_png expects [H, W, 3] uint8, got {img.shape} {img.dtype}")
    check_png_level(level)
    info = None
    if text:
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        for k, v in sorted(text.items()):
            info.add_text(k, v)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "PNG", compress_level=int(level), pnginfo=info)
    return buf.getvalue()


def check_png_level(level) -> int:
    """``level`` as an int in 0-9 (zlib's levels), else ValueError."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 9:
        raise ValueError(f"PNG level must be an integer 0-9 (zlib), got {level!r}")
    return int(level)


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary sibling, fsync, then ``os.replace``.
    A kill at any point leaves either the old file, no file, or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_png_atomic(path: str | os.PathLike, img: np.ndarray, text: dict[str, str] | None = None,
                    level: int = PNG_LEVEL) -> bytes:
    """Atomically write ``img`` [H, W, 3] uint8 as PNG (``text``, ``level``: see
    :func:`encode_png`); returns the bytes written."""
    data = encode_png(img, text, level)
    atomic_write_bytes(path, data)
    return data


def to_float01(x: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 in [0, 1] (8-bit grid)."""
    return np.asarray(x, np.float32) / 255.0


def to_uint8(x) -> np.ndarray:
    """float in [0, 1] -> uint8, rounding to the nearest 8-bit level."""
    return np.clip(np.rint(np.asarray(x, np.float32) * 255.0), 0, 255).astype(np.uint8)
