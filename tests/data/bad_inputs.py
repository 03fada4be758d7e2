"""A generator of every awkward and bad input an image folder can hold (issue 14, item 5).

``write_bad_inputs(root)`` writes an ImageFolder split ``root/<class>/...`` and returns a
:class:`BadInputs` record saying which paths are good images (with the RGB pixels a reader
must produce), which are bad files (with the reason they must be skipped for), and which
entries are not samples at all (a directory named ``x.jpg``, symlink loops).

Imported by the tests as ``from bad_inputs import write_bad_inputs`` (pytest puts this
folder on sys.path).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

#: The bomb's claimed size: 144 Mpx, above the 89.5 Mpx default limit, ~20 KB on disk.
BOMB_SIDE = 12000


@dataclass
class BadInputs:
    root: Path
    good: dict[str, Path] = field(default_factory=dict)  # kind -> file that must load
    bad: dict[str, Path] = field(default_factory=dict)  # kind -> file that must be skipped
    not_samples: dict[str, Path] = field(default_factory=dict)  # kind -> entry that is no sample
    expected_rgb: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> (H, W, 3) uint8


def _rng_rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 1-bit greyscale PNG of ``side x side`` zeros: tiny on disk, huge decoded."""
    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def write_bad_inputs(root: Path, fifo: bool = True) -> BadInputs:
    """Write the split; ``fifo=False`` leaves the FIFO out (platforms without ``mkfifo``)."""
    out = BadInputs(root=root)
    good, odd = root / "good", root / "odd"
    good.mkdir(parents=True)
    odd.mkdir(parents=True)

    def keep(kind: str, path: Path, rgb: np.ndarray | None) -> None:
        out.good[kind] = path
        if rgb is not None:
            out.expected_rgb[kind] = rgb

    # ---------------------------------------------------------------- plain good images
    for i in range(4):
        a = _rng_rgb(20 + i, 24, seed=i)
        Image.fromarray(a).save(good / f"plain_{i}.png")
        keep(f"plain_{i}", good / f"plain_{i}.png", a)

    # ---------------------------------------------------------------- awkward but valid
    gray = np.tile(np.arange(0, 240, 10, dtype=np.uint8), (20, 1))
    Image.fromarray(gray, mode="L").save(odd / "mode_L.png")
    keep("L", odd / "mode_L.png", np.repeat(gray[..., None], 3, axis=2))

    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))  # left half red (index 1), right half index 0 = transparent
    pal.save(odd / "palette_transparent.png", transparency=0)
    exp = np.full((20, 20, 3), 255, np.uint8)  # transparent -> white background
    exp[:, :10] = (255, 0, 0)
    keep("P_transparency", odd / "palette_transparent.png", exp)

    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(odd / "cmyk.jpg", quality=100)
    keep("CMYK", odd / "cmyk.jpg", None)  # JPEG: colour only approximately cyan

    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (0, 0, 255, 255)
    Image.fromarray(rgba, mode="RGBA").save(odd / "rgba.png")
    exp = np.full((20, 20, 3), 255, np.uint8)
    exp[:, :10] = (0, 0, 255)
    keep("RGBA", odd / "rgba.png", exp)

    g16 = np.tile(np.array([0, 257, 32896, 65535], np.uint16), (4, 1))
    Image.fromarray(g16).save(odd / "gray16.png")
    keep("I;16", odd / "gray16.png", np.repeat(np.array([[0, 1, 128, 255]] * 4, np.uint8)[..., None], 3, 2))

    f = np.tile(np.array([0.0, 0.5, 1.0], np.float32), (3, 1))
    Image.fromarray(f, mode="F").save(odd / "float.tiff")
    keep("F_tiff", odd / "float.tiff", np.repeat(np.array([[0, 128, 255]] * 3, np.uint8)[..., None], 3, 2))

    src = np.zeros((10, 30, 3), np.uint8)
    src[:, :15] = (255, 0, 0)  # stored: left red, right blue; orientation 6 = rotate 90 CW
    src[:, 15:] = (0, 0, 255)
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(src).save(odd / "exif6.png", exif=ex)
    keep("EXIF_6", odd / "exif6.png", np.rot90(src, k=-1).copy())  # red on top after rotation

    one = _rng_rgb(1, 1, seed=11)
    Image.fromarray(one).save(odd / "one_px.png")
    keep("1x1", odd / "one_px.png", one)
    thin = _rng_rgb(2000, 3, seed=12)  # width 3, height 2000
    Image.fromarray(thin).save(odd / "thin_3x2000.png")
    keep("3x2000", odd / "thin_3x2000.png", thin)

    w = _rng_rgb(16, 16, seed=13)
    Image.fromarray(w).save(odd / "lossless.webp", lossless=True)
    keep("WebP", odd / "lossless.webp", w)
    Image.fromarray(_rng_rgb(32, 32, seed=14)).save(odd / "progressive.jpg", progressive=True, quality=90)
    keep("progressive_JPEG", odd / "progressive.jpg", None)
    up = _rng_rgb(12, 12, seed=15)
    Image.fromarray(up).save(odd / "UPPER.PNG", format="PNG")
    keep("upper_case_ext", odd / "UPPER.PNG", up)

    # a directory named like an image: a folder (walked), not a sample
    (odd / "x.jpg").mkdir()
    inner = _rng_rgb(8, 8, seed=16)
    Image.fromarray(inner).save(odd / "x.jpg" / "inside_dir.png")
    keep("inside_dir_named_x.jpg", odd / "x.jpg" / "inside_dir.png", inner)
    out.not_samples["dir_named_x.jpg"] = odd / "x.jpg"

    # ---------------------------------------------------------------- bad files
    def bad(kind: str, path: Path) -> None:
        out.bad[kind] = path

    (odd / "zero.jpg").write_bytes(b"")
    bad("zero_byte", odd / "zero.jpg")
    buf = io.BytesIO()
    Image.fromarray(_rng_rgb(64, 64, seed=21)).save(buf, format="JPEG", quality=90)
    (odd / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad("truncated_JPEG", odd / "truncated.jpg")
    buf = io.BytesIO()
    Image.fromarray(_rng_rgb(64, 64, seed=22)).save(buf, format="PNG")
    (odd / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    bad("truncated_PNG", odd / "truncated.png")
    (odd / "random.jpg").write_bytes(np.random.default_rng(23).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    bad("random_bytes", odd / "random.jpg")
    (odd / "text.png").write_text("this is not an image\n")
    bad("text_named_png", odd / "text.png")
    (odd / "bomb.png").write_bytes(bomb_png())
    bad("bomb_PNG", odd / "bomb.png")
    os.symlink(odd / "does_not_exist.png", odd / "dangling.jpg")
    bad("dangling_symlink", odd / "dangling.jpg")
    if fifo:
        os.mkfifo(odd / "fifo.jpg")
        bad("FIFO", odd / "fifo.jpg")

    # ---------------------------------------------------------------- directory loops
    os.symlink(".", odd / "loop_self", target_is_directory=True)
    out.not_samples["symlink_loop_self"] = odd / "loop_self"
    os.symlink("..", good / "loop_up", target_is_directory=True)  # back to the split root
    out.not_samples["symlink_loop_parent"] = good / "loop_up"
    return out
