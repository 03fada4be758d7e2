"""Test images shared by the CropMix backend tests.

Imported as ``from pil_images import noise_pil`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def noise_pil(h: int = 40, w: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A seeded uniform-noise PIL image of ``mode`` RGB, L or RGBA, ``(w, h)`` pixels."""
    c = {"RGB": 3, "L": 1, "RGBA": 4}[mode]
    a = np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if c == 1 else a, mode)
