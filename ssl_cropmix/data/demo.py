"""A tiny built-in demo set: real colour photos shipped inside scikit-image (CC0/public domain).

Used by the figure scripts, benchmarks at ImageNet-like resolution and the demo recipe, so
that nothing needs a download. Requires the ``demo`` extra (``scikit-image``).

``DemoSource()`` (:mod:`ssl_cropmix.data.sources`) materialises the set in the package's cache (:func:`demo_root`,
``<cache_dir()>/demo``, see :func:`ssl_cropmix.data.cifar.cache_dir`), never in a ``data_dir``
given by a user or recorded in a checkpoint: no command writes into a user's data.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

# Colour photographs bundled as files inside skimage/data (no fetcher, no network).
DEMO_FILES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "rocket": "rocket.jpg",
    "hubble": "hubble_deep_field.jpg",
    "ihc": "ihc.png",
    "motorcycle": "motorcycle_left.png",
    "retina": "retina.jpg",
}
DEMO_NAMES: tuple[str, ...] = tuple(DEMO_FILES)


def demo_images(names: tuple[str, ...] = DEMO_NAMES) -> list[Image.Image]:
    """Return the demo photos as RGB PIL images, in ``names`` order."""
    folder = _skimage_data_dir()
    out = []
    for n in names:
        if n not in DEMO_FILES:
            raise ValueError(f"names: unknown demo photo {n!r}; choose from {DEMO_NAMES}")
        with Image.open(folder / DEMO_FILES[n]) as img:
            out.append(img.convert("RGB"))
    return out


def _skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        raise ImportError("the demo photos need scikit-image: pip install 'ssl_cropmix[demo]'")
    return Path(spec.origin).parent / "data"


def write_demo_folder(root: str | os.PathLike, names: tuple[str, ...] = DEMO_NAMES, grid: int = 4) -> Path:
    """Write a small ImageFolder demo set cut from the bundled photos; return ``root``.

    Each photo is one class; it is cut into a ``grid x grid`` mosaic of tiles, and the tiles
    are split like a checkerboard: ``root/train/<name>/`` gets the "white" tiles and
    ``root/val/<name>/`` the "black" ones, so train and val never share pixels. With the
    defaults this is 8 classes x 8 tiles per split (64 + 64 JPEG files, ~100-350 px).
    Existing files are kept, so calling it twice is cheap.
    """
    root = Path(root)
    done = root / f".complete-{grid}-{len(names)}"
    if done.exists():
        return root
    for n, img in zip(names, demo_images(names)):
        w, h = img.size
        tw, th = w // grid, h // grid
        for i in range(grid):
            for j in range(grid):
                split = "train" if (i + j) % 2 == 0 else "val"
                d = root / split / n
                d.mkdir(parents=True, exist_ok=True)
                tile = img.crop((j * tw, i * th, (j + 1) * tw, (i + 1) * th))
                tile.save(d / f"{n}_{i}{j}.jpg", quality=95)
    done.touch()
    return root


def demo_root() -> Path:
    """The demo set's ImageFolder root in the package's cache (``<cache_dir()>/demo``, with
    ``train/`` and ``val/``), written on first use (:func:`write_demo_folder`)."""
    from ssl_cropmix.data.cifar import cache_dir

    return write_demo_folder(cache_dir() / "demo")
