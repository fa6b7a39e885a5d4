"""Decoding rules of ppjax.image.io against independent references (numpy formulas, Pillow)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ppjax.image import io as imageio


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def png_raw(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None) -> bytes:
    """A PNG written by hand (independent of Pillow's encoder). ``rows=None`` writes a header
    only plus an empty IDAT: a decompression-bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    idat = zlib.compress(rows if rows is not None else b"")
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def png16_rgb(a: np.ndarray) -> bytes:
    """16-bit RGB PNG of ``a`` [H, W, 3] uint16 (filter 0 per row)."""
    h, w, _ = a.shape
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    return png_raw(w, h, 16, 2, rows)


def deep16(base: np.ndarray) -> np.ndarray:
    """16-bit values whose low byte is noise: [H, W, 3] uint16."""
    noise = (np.arange(base.size).reshape(base.shape) * 37) % 256
    return (base.astype(np.uint16) << 8) | noise.astype(np.uint16)


def make_broken_folder(d: Path, base: np.ndarray) -> dict[str, str]:
    """Write the unusual and bad files used by the tests into ``d``, from ``base`` [H, W, 3]
    uint8. Returns ``{file name: "ok" | "error"}`` (what must happen to each)."""
    d.mkdir(parents=True, exist_ok=True)
    h, w, _ = base.shape
    kinds = {}
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    kinds["truncated.jpg"] = "error"
    (d / "notes.jpg").write_text("this is not an image\n")
    kinds["notes.jpg"] = "error"
    (d / "bomb.png").write_bytes(png_raw(100_000, 100_000, 8, 2, None))
    kinds["bomb.png"] = "error"
    Image.fromarray(base).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    kinds["cmyk.jpg"] = "ok"
    Image.fromarray(base).convert("L").save(d / "grey.png")
    kinds["grey.png"] = "ok"
    rgba = np.concatenate([base, np.full((h, w, 1), 128, np.uint8)], -1)
    rgba[: h // 4, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(d / "rgba.png")
    kinds["rgba.png"] = "ok"
    (d / "deep16.png").write_bytes(png16_rgb(deep16(base)))
    kinds["deep16.png"] = "ok"
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(base[:, : w // 2]).save(d / "rotated.jpg", quality=95, exif=ex)
    kinds["rotated.jpg"] = "ok"
    Image.fromarray(base).save(d / "ünïcode 写真.png")
    kinds["ünïcode 写真.png"] = "ok"
    return kinds


@pytest.fixture(scope="module")
def base(photos_256):
    return (photos_256[0, :64, :96] * 255).round().astype(np.uint8)


def test_unusual_inputs_follow_documented_rules(tmp_path, base):
    kinds = make_broken_folder(tmp_path, base)
    results = {}
    for name in kinds:
        try:
            results[name] = imageio.load_rgb(tmp_path / name)
        except imageio.DecodeError as e:
            results[name] = e
    for name, kind in kinds.items():
        assert isinstance(results[name], imageio.DecodeError) == (kind == "error"), name
    assert "truncated" in str(results["truncated.jpg"])
    assert "not an image" in str(results["notes.jpg"])
    assert "decompression bomb" in str(results["bomb.png"])

    img, notes = results["cmyk.jpg"]
    ref = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    np.testing.assert_array_equal(img, ref)
    assert any("CMYK" in n for n in notes)

    img, notes = results["grey.png"]
    grey = np.asarray(Image.open(tmp_path / "grey.png"))
    np.testing.assert_array_equal(img, np.repeat(grey[..., None], 3, -1))

    img, notes = results["rgba.png"]  # composited on white: c*a + 255*(1-a)
    a = rgba_alpha = np.full(base.shape[:2] + (1,), 128 / 255.0)
    rgba_alpha[: base.shape[0] // 4] = 0.0
    ref = np.rint(base * a + 255.0 * (1 - a)).astype(np.uint8)
    np.testing.assert_array_equal(img, ref)
    assert (img[: base.shape[0] // 4] == 255).all() and any("white" in n for n in notes)

    img, notes = results["deep16.png"]  # the documented rule: the high byte
    np.testing.assert_array_equal(img, (deep16(base) >> 8).astype(np.uint8))
    assert any("16-bit" in n for n in notes)

    img, notes = results["rotated.jpg"]  # orientation 6: rotate 90 degrees clockwise
    raw = np.asarray(Image.open(tmp_path / "rotated.jpg").convert("RGB"))
    np.testing.assert_array_equal(img, np.rot90(raw, k=-1))
    assert img.shape[:2] == (raw.shape[1], raw.shape[0]) and any("EXIF" in n for n in notes)

    img, notes = results["ünïcode 写真.png"]
    np.testing.assert_array_equal(img, base)
    assert notes == []


def test_16bit_grey_is_rescaled(tmp_path):
    v = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    rows = b"".join(b"\x00" + v[y].astype(">u2").tobytes() for y in range(30))
    (tmp_path / "g16.png").write_bytes(png_raw(40, 30, 16, 0, rows))
    img, notes = imageio.load_rgb(tmp_path / "g16.png")
    ref = np.floor(v.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(img, np.repeat(ref[..., None], 3, -1))
    assert any("16-bit" in n for n in notes)


def test_small_pixel_limit_guards(tmp_path, base):
    Image.fromarray(base).save(tmp_path / "a.png")
    with pytest.raises(imageio.DecodeError, match="decompression bomb"):
        imageio.load_rgb(tmp_path / "a.png", max_pixels=base.shape[0] * base.shape[1] - 1)
    imageio.load_rgb(tmp_path / "a.png", max_pixels=base.shape[0] * base.shape[1])


def test_to_task_size_rules(base):
    same = np.zeros((256, 256, 3), np.uint8)
    out, notes = imageio.to_task_size(same, 2019)
    assert out is same and notes == []
    for rule in ("squash", "resize"):  # "resize": squash's older name, in older runs' configs
        out, notes = imageio.to_task_size(base, 2019, rule)
        ref = np.asarray(Image.fromarray(base).resize((256, 256), Image.BICUBIC))
        np.testing.assert_array_equal(out, ref)
        assert notes and "96x64->256x256" in notes[0] and "aspect ratio not kept" in notes[0]
    # the default keeps the aspect ratio: shorter side (64) to 256, then a centre crop
    out, notes = imageio.to_task_size(base, 2019)
    big = np.asarray(Image.fromarray(base).resize((384, 256), Image.BICUBIC))
    np.testing.assert_array_equal(out, big[:, 64:320])
    assert notes == ["resized 96x64->384x256 (bicubic) and centre-cropped to 256x256"]
    out, notes = imageio.to_task_size(base, 2020, "crop")  # 96x64 -> 576x384, crop 512 wide
    big = Image.fromarray(base).resize((576, 384), Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(big)[:, 32:544])
    assert out.shape == (384, 512, 3)
    with pytest.raises(imageio.DecodeError, match="reject"):
        imageio.to_task_size(base, 2019, "reject")


def test_png_levels_are_lossless_and_level_6_is_pillows_default(base):
    """Every zlib level decodes to the same pixels; level 6 gives exactly the bytes of Pillow's
    own default save; the default (level 1) is a different, larger file; bad levels raise."""
    import io

    from PIL import PngImagePlugin

    text = {"ppjax": "STAND-IN"}
    info = PngImagePlugin.PngInfo()
    info.add_text("ppjax", "STAND-IN")
    buf = io.BytesIO()
    Image.fromarray(base).save(buf, "PNG", pnginfo=info)  # Pillow's default compress_level
    assert imageio.encode_png(base, text, level=6) == buf.getvalue()
    assert imageio.encode_png(base, text) == imageio.encode_png(base, text, imageio.PNG_LEVEL)
    by_level = {k: imageio.encode_png(base, text, k) for k in (0, 1, 6, 9)}
    assert len(set(by_level.values())) == 4
    assert len(by_level[1]) >= len(by_level[6]) >= len(by_level[9])
    for data in by_level.values():
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), base)
    for bad in (-1, 10, 1.5, True, "6"):
        with pytest.raises(ValueError, match="0-9"):
            imageio.encode_png(base, level=bad)


def test_png_roundtrip_is_lossless_and_atomic(tmp_path, base):
    p = tmp_path / "x.png"
    data = imageio.save_png_atomic(p, base)
    assert p.read_bytes() == data == imageio.encode_png(base)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), base)
    assert [q.name for q in tmp_path.iterdir()] == ["x.png"]  # no temporary left behind
