"""Per-image cost of CropMix views vs. the plain RandomResizedCrop view.

Every path starts from the same decoded PIL image and ends in a float32 tensor in [0, 1]:

- ``plain RRC``: ``v2.RandomResizedCrop`` (default scale (0.08, 1)) on the PIL image,
  ``PILToTensor``, ``ToDtype`` (the baseline; every ratio in the table is relative to it,
  measured in the same run);
- ``CropMix ...``: this package (uint8 crops by slicing, uint8 resize, one float conversion);
  at 32 px also the PIL and NumPy backends (PIL crops + NumPy weighted sum; two float32
  matrix products for all crops);
- ``naive CropMix``: the paper's code style: ``n`` RandomResizedCrops on the PIL image,
  each converted to float, mixed in float.

At 224 px the inputs are the ImageNet-sized colour photos bundled with scikit-image, at
32 px CIFAR-10 test images (``--data-root``, default ``../shared/data``). Methods are
interleaved: each repeat times every method once over all images, in a shuffled order;
the table reports the median and the minimum over repeats, and the ratio to the plain path
(median of the per-repeat ratios, and min over min, the least noise-sensitive on a shared
machine). Single-threaded, like a data-loader worker.

The 32-px MoCo pair tables time ``moco_views(query, 32)`` (query + key, normalised) per
query against the plain pair, from the demo tiles (75-352 px: large sources, small outputs)
and from CIFAR-10 (32-px sources).

Usage:
    python benchmarks/transforms.py --repeats 7 --n-images 256
    python benchmarks/transforms.py --only-pairs --n-cifar 256   # the pair tables only
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from ssl_cropmix.transforms import CropMix, contrastive_cropmix
from ssl_cropmix.transforms import functional as CF

REPO = Path(__file__).resolve().parents[1]


class NaiveCropMix:
    """The paper's code style: n PIL crops, each converted to float, mixed in float (Mixup)."""

    def __init__(self, size: int, crop_scale=(0.01, 1.0), num_crops=(2, 3, 4), alpha: float = 0.4):
        self.size, self.crop_scale, self.num_crops, self.alpha = size, crop_scale, num_crops, alpha
        self.to_float = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])

    def __call__(self, img: Image.Image) -> torch.Tensor:
        n = self.num_crops[int(torch.randint(len(self.num_crops), (1,)))]
        views = [
            self.to_float(v2.RandomResizedCrop(self.size, scale=r)(img))
            for r in CF.split_scale_range(self.crop_scale, n)
        ]
        views = [views[i] for i in torch.randperm(n).tolist()]
        m = views[0]
        for v in views[1:]:
            lam = float(torch.distributions.Beta(self.alpha / n, self.alpha / n).sample())
            m = lam * m + (1 - lam) * v
        return m


def methods(size: int) -> dict[str, Callable]:
    to_float = [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)]
    small = {}
    if size <= 64:  # the small-image backends (the numpy one's dense products grow with size^2)
        small = {
            "CropMix mixup n~{2,3,4} (backend pil)": CropMix(size, backend="pil"),
            "CropMix mixup n~{2,3,4} (backend numpy)": CropMix(size, backend="numpy"),
        }
    return {
        "plain RRC (PIL)": v2.Compose([v2.RandomResizedCrop(size), *to_float]),
        "plain RRC (uint8 tensor)": v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size),
                                                v2.ToDtype(torch.float32, scale=True)]),
        "CropMix mixup n=2": CropMix(size, num_crops=2),
        "CropMix mixup n=3": CropMix(size, num_crops=3),
        "CropMix mixup n=4": CropMix(size, num_crops=4),
        "CropMix mixup n~{2,3,4}": CropMix(size),
        **small,
        "CropMix cutmix n~{2,3,4}": CropMix(size, mixing="cutmix"),
        "CropMix resizemix n~{2,3,4}": CropMix(size, mixing="resizemix"),
        "contrastive preset (no view aug)": contrastive_cropmix(size),
        "naive CropMix mixup n~{2,3,4}": NaiveCropMix(size),
    }


def bench(images: list[Image.Image], size: int, repeats: int) -> list[tuple[str, float, float]]:
    ms = methods(size)
    times: dict[str, list[float]] = {k: [] for k in ms}
    for name, fn in ms.items():  # warm-up
        for img in images[:4]:
            fn(img)
    for r in range(repeats):
        for i in torch.randperm(len(ms), generator=torch.Generator().manual_seed(r)).tolist():
            name, fn = list(ms.items())[i]
            t0 = time.perf_counter()
            for img in images:
                fn(img)
            times[name].append((time.perf_counter() - t0) / len(images) * 1e6)
    base = times["plain RRC (PIL)"]
    rows = []
    for k, v in times.items():
        # ratio per repeat (same pass, same machine load), then median / min over repeats
        ratios = [t / b for t, b in zip(v, base)]
        rows.append((k, statistics.median(v), min(v), statistics.median(ratios), min(v) / min(base)))
    return rows


def print_table(title: str, rows: list[tuple[str, float, float, float, float]], ratio: str = "ratio") -> None:
    print(f"\n### {title}\n")
    print(f"| path | µs / image (median) | µs / image (min) | {ratio} (median) | {ratio} (min/min) |")
    print("|---|---:|---:|---:|---:|")
    for name, med, mn, ratio, ratio_min in rows:
        print(f"| {name} | {med:.0f} | {mn:.0f} | {ratio:.2f}x | {ratio_min:.2f}x |")


def load_demo(n: int) -> list[Image.Image]:
    from ssl_cropmix.data.demo import demo_images

    photos = demo_images()
    for p in photos:
        p.load()
    return [photos[i % len(photos)] for i in range(n)]


def load_cifar(root: str, n: int) -> list[Image.Image] | None:
    from ssl_cropmix.data.cifar import resolve_cifar10

    try:
        cifar = resolve_cifar10(root)
    except FileNotFoundError as e:
        print(f"\n(skipping 32 px: {e})")
        return None
    files = sorted((cifar / "test").glob("*/*.jpg"))[:: max(1, 10000 // max(n, 1))][:n]
    out = []
    for f in files:
        with Image.open(f) as im:
            out.append(im.convert("RGB"))
    return out


def pair_methods(size: int) -> dict[str, Callable]:
    """The MoCo training pairs (query, key) of ``moco_views`` for each named query."""
    from ssl_cropmix.data.views import moco_views

    return {f"pair query={q}": moco_views(q, size) for q in ("plain", "contrastive", "scalemix", "cropmix")}


def bench_pairs(images: list[Image.Image], size: int, repeats: int) -> list[tuple[str, float, float, float, float]]:
    """Like :func:`bench`, for the pairs of :func:`pair_methods`, relative to the plain pair."""
    ms = pair_methods(size)
    times: dict[str, list[float]] = {k: [] for k in ms}
    for fn in ms.values():
        for img in images[:4]:
            fn(img)
    for r in range(repeats):
        for i in torch.randperm(len(ms), generator=torch.Generator().manual_seed(r)).tolist():
            name, fn = list(ms.items())[i]
            t0 = time.perf_counter()
            for img in images:
                fn(img)
            times[name].append((time.perf_counter() - t0) / len(images) * 1e6)
    base = times["pair query=plain"]  # ratios here are speeds: plain time / pair time (pairs/s vs plain)
    return [(k, statistics.median(v), min(v), statistics.median([b / t for t, b in zip(v, base)]), min(base) / min(v))
            for k, v in times.items()]


def load_demo_tiles(n: int) -> list[Image.Image]:
    """The demo set's training tiles (75-352 px: large sources for 32-px views)."""
    import tempfile

    from ssl_cropmix.data.demo import write_demo_folder

    with tempfile.TemporaryDirectory() as d:
        files = sorted((write_demo_folder(d) / "train").glob("*/*.jpg"))
        out = []
        for f in files:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
    return [out[i % len(out)] for i in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="CIFAR-10 JPEG archive folder / extracted root (default: ../shared/data)")
    p.add_argument("--n-images", type=int, default=64, help="images per timing pass (224 px)")
    p.add_argument("--n-cifar", type=int, default=512, help="images per timing pass (32 px)")
    p.add_argument("--n-tiles", type=int, default=128, help="demo tiles per timing pass (32-px pairs)")
    p.add_argument("--only-pairs", action="store_true", help="only the 32-px MoCo pair tables")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing passes per method")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 = a data-loader worker)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, repeats={args.repeats}")
    if not args.only_pairs:
        print_table(f"224 px, {args.n_images} scikit-image photos (~512 px)",
                    bench(load_demo(args.n_images), 224, args.repeats))
    tiles = load_demo_tiles(args.n_tiles)
    print_table(f"32-px MoCo pairs from {len(tiles)} demo tiles (75-352 px sources), speed vs the plain pair",
                bench_pairs(tiles, 32, args.repeats), ratio="pairs/s vs plain")
    cifar = load_cifar(args.data_root, args.n_cifar)
    if cifar:
        if not args.only_pairs:
            print_table(f"32 px, {len(cifar)} CIFAR-10 test images", bench(cifar, 32, args.repeats))
        print_table(f"32-px MoCo pairs from {len(cifar)} CIFAR-10 test images, speed vs the plain pair",
                    bench_pairs(cifar, 32, args.repeats), ratio="pairs/s vs plain")


if __name__ == "__main__":
    main()
