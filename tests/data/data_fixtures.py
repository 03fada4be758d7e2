"""Helpers that write fixture images at test time: good images of every mode and every bad kind.

Imported by the tests as ``from data_fixtures import ...`` (pytest puts this folder on sys.path)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _rgb(h: int, w: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


def make_tree(root: Path, classes=("cat", "dog", "fox"), per_class=(6, 5, 4), size=40) -> Path:
    """``root/<class>/<class>_<i>.jpg`` with random RGB content (sizes vary per image)."""
    for c, (cls, n) in enumerate(zip(classes, per_class)):
        d = root / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _rgb(size + i, size + 2 * i, seed=100 * c + i).save(d / f"{cls}_{i}.jpg", quality=95)
    return root


def write_bad_kinds(d: Path) -> dict[str, Path]:
    """Every awkward-but-valid mode and every bad kind, in folder ``d``; returns name -> path."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    # valid but unusual modes
    Image.fromarray(np.full((20, 24), 100, np.uint8), mode="L").save(out.setdefault("gray", d / "gray.png"))
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.paste(1, (0, 0, 10, 20))  # left half index 1 (red), right half index 0 (transparent)
    pal.save(out.setdefault("palette", d / "palette.png"), transparency=0)
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(out.setdefault("cmyk", d / "cmyk.jpg"), quality=100)
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[:, :10] = (255, 0, 0, 255)  # opaque red left; right stays (0, 0, 0, 0)
    Image.fromarray(rgba, mode="RGBA").save(out.setdefault("rgba", d / "rgba.png"))
    g16 = np.tile(np.array([0, 1000, 32768, 65535], np.uint16), (4, 1))
    Image.fromarray(g16).save(out.setdefault("gray16", d / "gray16.png"))
    exif_src = np.zeros((20, 40, 3), np.uint8)
    exif_src[:, :20] = (255, 0, 0)
    exif_src[:, 20:] = (0, 0, 255)  # stored: left red, right blue; orientation 6 = rotate 90 CW
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(exif_src).save(out.setdefault("exif", d / "exif.jpg"), exif=ex, quality=100)
    _rgb(6, 5, seed=7).save(out.setdefault("tiny", d / "tiny.png"))
    # bad files (image extensions, undecodable)
    buf = io.BytesIO()
    _rgb(64, 64, seed=3).save(buf, format="JPEG", quality=90)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["truncated"] = d / "truncated.jpg"
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    out["corrupt"] = d / "corrupt.png"
    (d / "text.jpg").write_text("this is not an image\n")
    out["text"] = d / "text.jpg"
    return out

