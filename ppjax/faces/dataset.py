"""The face set: photo-sized images with known face boxes, built offline from photos that
installed packages ship (``ppjax fetch-data faces``). Never committed; made on demand, the same
bytes for the same seed.

What it holds (:func:`build_face_set`, seed :data:`FACES_SEED`):

* **LFW composites.** scikit-image's ``lfw_subset()`` is 200 grey 25x25 crops: the first 100 are
  faces, the last 100 non-faces (its docstring). The 100 faces, in a seeded order, are upscaled
  (Pillow bicubic) to squares of 40-120 px and pasted, 2-6 per image and never overlapping (a gap
  of a quarter of the larger face between any two), on crops of real photos (scikit-image's
  ``coffee``, ``rocket``, ``stereo_motorcycle``, ``hubble_deep_field``, ``immunohistochemistry``,
  ``brick``, ``grass``, ``gravel``; none shows a face), resized to a photo size with a long side of
  256-1024 px and an aspect ratio among 1:1, 4:3, 3:4, 3:2, 16:9. A face's true box is the square
  where it was pasted.
* **Whole photos**, at their own size: scikit-image's ``astronaut`` (512x512) and ``camera``
  (512x512 grey, made RGB), matplotlib's ``grace_hopper.jpg`` (512x600). One face each; its box
  was drawn by hand and checked by eye (the astronaut's and Grace Hopper's agree with OpenCV's
  Haar cascade; the cameraman is in three-quarter profile, which the frontal cascade misses).

About 103 faces in all (100 + 3; the exact count is in the manifest and printed by the command).

Boxes are ``[x0, y0, x1, y1]`` in pixels of the image, ``x1``/``y1`` exclusive (a face pasted at
column 10 with side 40 is ``[10, ., 50, .]``). The manifest ``faces.json`` is a :class:`FaceSet`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ppjax.image.io import DecodeError, atomic_write_bytes, load_rgb, save_png_atomic

__all__ = ["FACES_SEED", "MANIFEST", "FaceBox", "FaceImage", "FaceSet", "FaceSetError",
           "build_face_set", "load_face_images", "read_face_set", "write_face_set"]

FACES_SEED = 0
MANIFEST = "faces.json"
FORMAT_VERSION = 1

#: Face squares' side range in px (inclusive), long-side range of a composite, aspect ratios (w/h).
FACE_PX = (40, 120)
LONG_SIDE_PX = (256, 1024)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 16 / 9)
FACES_PER_IMAGE = (2, 6)
#: scikit-image photos used as backgrounds (none shows a face; cats are left out too).
BACKGROUNDS = ("coffee", "rocket", "stereo_motorcycle", "hubble_deep_field",
               "immunohistochemistry", "brick", "grass", "gravel")
#: The whole photos and their hand-drawn face boxes [x0, y0, x1, y1].
WHOLE_PHOTOS = {
    "astronaut": ("skimage.data.astronaut()", (177, 66, 272, 161)),
    "camera": ("skimage.data.camera()", (176, 92, 262, 192)),
    "grace_hopper": ("matplotlib.cbook.get_sample_data('grace_hopper.jpg')", (152, 103, 380, 331)),
}


class FaceSetError(RuntimeError):
    """A face set directory without a readable manifest (or with a file missing)."""


@dataclass(frozen=True)
class FaceBox:
    """One true face: its box ``[x0, y0, x1, y1)`` in pixels and where the face came from."""

    x0: int
    y0: int
    x1: int
    y1: int
    source: str


@dataclass(frozen=True)
class FaceImage:
    """One image of the set: its PNG's name, size, origin, true faces and the PNG's sha256."""

    file: str
    width: int
    height: int
    source: str
    faces: tuple[FaceBox, ...]
    sha256: str = ""

    def boxes(self) -> np.ndarray:
        """The true boxes, ``[N, 4]`` float32 ``x0, y0, x1, y1``."""
        return np.array([[f.x0, f.y0, f.x1, f.y1] for f in self.faces], np.float32).reshape(-1, 4)


@dataclass(frozen=True)
class FaceSet:
    """The manifest ``faces.json``: the seed it was built with and its images."""

    seed: int
    images: tuple[FaceImage, ...]
    version: int = FORMAT_VERSION

    @property
    def n_faces(self) -> int:
        return sum(len(im.faces) for im in self.images)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "n_faces": self.n_faces}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> FaceSet:
        d = json.loads(text)
        images = tuple(FaceImage(**{**im, "faces": tuple(FaceBox(**f) for f in im["faces"])})
                       for im in d["images"])
        return cls(seed=int(d["seed"]), images=images, version=int(d["version"]))


# ----------------------------------------------------------------------------- sources


def _skimage_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as [H, W, 3] uint8 (grey made RGB)."""
    import skimage.data

    a = getattr(skimage.data, name)()
    a = a[0] if isinstance(a, tuple) else a
    a = np.asarray(a, np.uint8)
    return np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a[..., :3]


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f, Image.open(f) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


def lfw_faces() -> np.ndarray:
    """The 100 faces of scikit-image's ``lfw_subset`` (its first 100 crops), [100, 25, 25] uint8."""
    import skimage.data

    a = np.asarray(skimage.data.lfw_subset()[:100])
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8) if a.dtype != np.uint8 else a


# ----------------------------------------------------------------------------- composites


def _photo_size(rng: np.random.Generator) -> tuple[int, int]:
    long = int(rng.integers(LONG_SIDE_PX[0], LONG_SIDE_PX[1] + 1))
    aspect = float(ASPECTS[int(rng.integers(len(ASPECTS)))])
    if aspect >= 1.0:
        return int(round(long / aspect)), long
    return long, int(round(long * aspect))


def _background(rng: np.random.Generator, photo: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A random crop of ``photo`` with the aspect of ``hw`` (60-100% of the largest such crop),
    resized to ``hw`` with Pillow's bicubic filter."""
    h, w = hw
    ph, pw = photo.shape[:2]
    full = min(ph / h, pw / w)
    s = full * float(rng.uniform(0.6, 1.0))
    ch, cw = max(1, int(h * s)), max(1, int(w * s))
    top, left = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    crop = Image.fromarray(photo[top:top + ch, left:left + cw])
    return np.array(crop.resize((w, h), Image.BICUBIC), np.uint8)


def _place(rng: np.random.Generator, hw: tuple[int, int], n: int, tries: int = 200
           ) -> list[tuple[int, int, int]]:
    """Up to ``n`` squares ``(x0, y0, side)`` inside ``hw``, no two closer than a quarter of the
    larger side."""
    h, w = hw
    hi = min(FACE_PX[1], min(h, w) // 3)
    out: list[tuple[int, int, int]] = []
    for _ in range(n):
        s = int(rng.integers(FACE_PX[0], max(FACE_PX[0], hi) + 1))
        for _ in range(tries):
            x, y = int(rng.integers(w - s + 1)), int(rng.integers(h - s + 1))
            if all(_apart((x, y, s), b) for b in out):
                out.append((x, y, s))
                break
    return out


def _apart(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    gap = max(a[2], b[2]) // 4
    return (a[0] + a[2] + gap <= b[0] or b[0] + b[2] + gap <= a[0]
            or a[1] + a[2] + gap <= b[1] or b[1] + b[2] + gap <= a[1])


def _paste(canvas: np.ndarray, face: np.ndarray, x: int, y: int, s: int) -> None:
    up = np.asarray(Image.fromarray(face).resize((s, s), Image.BICUBIC), np.uint8)
    canvas[y:y + s, x:x + s] = up[..., None]


def _composites(seed: int) -> list[tuple[FaceImage, np.ndarray]]:
    rng = np.random.default_rng(seed)
    faces = lfw_faces()
    order = [int(i) for i in rng.permutation(len(faces))]
    photos = {name: _skimage_photo(name) for name in BACKGROUNDS}
    out = []
    while order:
        hw = _photo_size(rng)
        want = min(int(rng.integers(FACES_PER_IMAGE[0], FACES_PER_IMAGE[1] + 1)), len(order))
        spots = _place(rng, hw, want)
        if not spots:
            continue
        bg_name = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        canvas = _background(rng, photos[bg_name], hw)
        boxes = []
        for x, y, s in spots:
            i = order.pop(0)
            _paste(canvas, faces[i], x, y, s)
            boxes.append(FaceBox(x, y, x + s, y + s, f"skimage.data.lfw_subset()[{i}]"))
        item = FaceImage(f"lfw_{len(out):02d}.png", hw[1], hw[0],
                         f"LFW faces on skimage.data.{bg_name}()", tuple(boxes))
        out.append((item, canvas))
    return out


def _whole_photos() -> list[tuple[FaceImage, np.ndarray]]:
    out = []
    for name, (source, box) in WHOLE_PHOTOS.items():
        img = _grace_hopper() if name == "grace_hopper" else _skimage_photo(name)
        face = FaceBox(*box, source=f"{source} (box drawn by hand)")
        out.append((FaceImage(f"{name}.png", img.shape[1], img.shape[0], source, (face,)), img))
    return out


def build_face_set(seed: int = FACES_SEED) -> list[tuple[FaceImage, np.ndarray]]:
    """The face set in memory: ``[(item, img [H, W, 3] uint8), ...]``, LFW composites first,
    then the whole photos. Deterministic for a given ``seed`` (``item.sha256`` is left empty;
    :func:`write_face_set` fills it)."""
    return _composites(seed) + _whole_photos()


def write_face_set(out_dir, seed: int = FACES_SEED) -> FaceSet:
    """Write the set's PNGs and ``faces.json`` into ``out_dir`` (created; files replaced
    atomically) and return the manifest."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = []
    for item, img in build_face_set(seed):
        data = save_png_atomic(out / item.file, img)
        items.append(dataclasses.replace(item, sha256=hashlib.sha256(data).hexdigest()))
    fs = FaceSet(seed=seed, images=tuple(items))
    atomic_write_bytes(out / MANIFEST, (fs.to_json() + "\n").encode())
    return fs


def read_face_set(root) -> FaceSet:
    """The manifest of a face set directory; :class:`FaceSetError` when it is missing or bad."""
    path = Path(root) / MANIFEST
    try:
        return FaceSet.from_json(path.read_text())
    except FileNotFoundError:
        raise FaceSetError(f"{path} not found; make the set with `ppjax fetch-data faces "
                           f"--out {root}`") from None
    except (ValueError, KeyError, TypeError) as e:
        raise FaceSetError(f"{path} is not a face set manifest ({e})") from None


def load_face_images(root) -> list[tuple[FaceImage, np.ndarray]]:
    """Every image of the set at ``root`` with its manifest entry: ``[(item, img uint8), ...]``."""
    out = []
    for item in read_face_set(root).images:
        try:
            img, _ = load_rgb(Path(root) / item.file)
        except (OSError, DecodeError) as e:
            raise FaceSetError(f"{Path(root) / item.file}: {e}") from None
        out.append((item, img))
    return out
