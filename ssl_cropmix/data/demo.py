"""A tiny built-in demo set: real colour photos shipped inside scikit-image (CC0/public domain).

Used by the figure scripts, benchmarks at ImageNet-like resolution and the demo recipe, so
that nothing needs a download. Requires the ``demo`` extra (``scikit-image``).
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


def write_demo_folder(root: str | os.PathLike, names: tuple[str, ...] = DEMO_NAMES) -> Path:
    """Write the demo photos as an ImageFolder tree ``root/train/<name>/<name>.jpg``.

    Each photo is its own class; ``val`` mirrors ``train``. Returns ``root``.
    """
    root = Path(root)
    for split in ("train", "val"):
        for n, img in zip(names, demo_images(names)):
            d = root / split / n
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"{n}.jpg"
            if not p.exists():
                img.save(p, quality=95)
    return root
