"""How far CropMix's ``backend="numpy"`` output is from ``backend="pil"`` on the same draws.

Both backends get the same ``CropMixParams`` (generic Mixup, n in {2, 3, 4}) on real photos
(the scikit-image demo set: CIFAR-sized 32-px sources for 32-px output, the ~500-px photos
for 224 px) and return uint8 images; this prints, per output size and interpolation, the
largest absolute difference in levels and the fraction of pixel values that differ by more
than 0, 1 and 2 levels.

    python benchmarks/backend_agreement.py [--draws 300]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode

from ssl_cropmix.data.demo import demo_images
from ssl_cropmix.transforms import CropMix


def measure(size: int, interpolation: InterpolationMode, draws: int, source: int | None) -> dict[str, float]:
    photos = demo_images()
    if source is not None:
        photos = [p.resize((source, source)) for p in photos]
    kw = dict(crop_scale=(0.01, 1.0), num_crops=(2, 3, 4), mixing="mixup", interpolation=interpolation, output_dtype=None)
    num, pil = CropMix(size, backend="numpy", **kw), CropMix(size, backend="pil", **kw)
    torch.manual_seed(0)
    diffs = []
    for i in range(draws):
        img = photos[i % len(photos)]
        params = num.sample_params((img.height, img.width))
        a = np.asarray(num.apply_numpy(img, params), dtype=np.int16)
        b = np.asarray(pil.apply_pil(img, params), dtype=np.int16)
        diffs.append(np.abs(a - b).ravel())
    d = np.concatenate(diffs)
    return {"max": int(d.max()), ">0": float((d > 0).mean()), ">1": float((d > 1).mean()), ">2": float((d > 2).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=300)
    a = ap.parse_args()
    print("| output | source | interpolation | max diff (levels) | > 0 | > 1 | > 2 |")
    print("|---|---|---|---|---|---|---|")
    for size, source in ((32, 32), (224, None)):
        for interp in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
            r = measure(size, interp, a.draws, source)
            src = f"{source} px" if source else "photos (~300-700 px)"
            print(f"| {size} px | {src} | {interp.value} | {r['max']} | {r['>0']:.2%} | {r['>1']:.2%} | {r['>2']:.3%} |")


if __name__ == "__main__":
    main()
