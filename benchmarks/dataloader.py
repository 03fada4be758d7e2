"""Throughput of the full MoCo pretraining batch (query + key) through a DataLoader.

Compares, in one process, interleaved and repeated, on the same files, loader and workers:

* ``lightly``: lightly's ``MoCoV2Transform`` pair (PIL pipeline, ``np.random`` blur); at
  32 px with ``gaussian_blur=0`` like our small-image recipe.
* ``plain``: our MoCo v2 key + plain query (``moco_views("plain")``).
* ``cropmix``: generic CropMix query (Mixup, n in {2,3,4}) + MoCo v2 key.
* ``scalemix``: ScaleMix query + key.
* ``contrastive``: the paper's contrastive CropMix preset (two fully augmented crops) + key.

Datasets: CIFAR-10 JPEGs (32 px views) from ``--data-root`` and ImageNet-sized photos
(224 px views): the scikit-image demo photos resized to ``--photo-side`` px on the long side
(ImageNet's typical 500x375) and replicated to ``--photos`` JPEG files in a temp folder.
Images/s counts source images (each yields a query and a key), decoding included.

Targets (issue 3): plain >= lightly; cropmix >= 0.9x plain; contrastive >= 0.65x plain.

    python benchmarks/dataloader.py --data-root ../shared/data --num-workers 2
    python benchmarks/dataloader.py --quick      # short smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_cropmix.data.datasets import ImageFolderDataset, ViewDataset  # noqa: E402
from ssl_cropmix.data.views import moco_views  # noqa: E402

PIPELINES = ("lightly", "plain", "cropmix", "scalemix", "contrastive")


def make_transform(name: str, size: int):
    if name == "lightly":
        from lightly.transforms import MoCoV2Transform

        return MoCoV2Transform(input_size=size, gaussian_blur=0.0 if size <= 64 else 0.5)
    return moco_views(name, size)


def photo_folder(root: Path, count: int, side: int) -> Path:
    from ssl_cropmix.data.demo import DEMO_NAMES, demo_images

    imgs = demo_images()
    d = root / "photos" / "all"
    d.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = imgs[i % len(imgs)]
        s = side / max(img.size)
        img.resize((round(img.size[0] * s), round(img.size[1] * s))).save(
            d / f"{DEMO_NAMES[i % len(imgs)]}_{i}.jpg", quality=90
        )
    return root / "photos"


def measure(source, transform, batch_size: int, batches: int, workers: int, seed: int) -> float:
    ds = ViewDataset(source, transform)
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True)
    it = iter(loader)
    next(it)  # warm-up: worker start, first prefetches
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        _, y = next(it)
        n += len(y)
    dt = time.perf_counter() - t
    del it
    return n / dt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--datasets", default="cifar10,photos")
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median reported)")
    p.add_argument("--photos", type=int, default=400, help="photo files to write")
    p.add_argument("--photo-side", type=int, default=500, help="long side of the photos (px)")
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    a = p.parse_args(argv)
    if a.quick:
        a.batches, a.repeats, a.batch_size = 2, 1, 16
    torch.set_num_threads(1)
    pipelines = a.pipelines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.datasets.split(","):
            if name == "cifar10":
                from ssl_cropmix.data.cifar import resolve_cifar10

                source, size = ImageFolderDataset(resolve_cifar10(a.data_root) / "train"), 32
            elif name == "photos":
                need = a.batch_size * (a.batches + 1 + 2 * a.num_workers)
                root = photo_folder(Path(tmp), max(a.photos, need), a.photo_side)
                source, size = ImageFolderDataset(root), 224
            else:
                raise SystemExit(f"--datasets: unknown {name!r} (cifar10, photos)")
            results: dict[str, list[float]] = {k: [] for k in pipelines}
            for r in range(a.repeats):
                for k in pipelines:  # interleaved, so drifting machine load hits all alike
                    results[k].append(
                        measure(source, make_transform(k, size), a.batch_size, a.batches, a.num_workers, r)
                    )
            med = {k: statistics.median(v) for k, v in results.items()}
            base = med.get("plain")
            for k in pipelines:
                rows.append((name, size, k, med[k], med[k] / base if base else float("nan")))
    print(f"\nMoCo pair throughput, num_workers={a.num_workers}, batch {a.batch_size}, "
          f"{a.batches} batches x {a.repeats} repeats (median), torch threads/worker=1\n")
    print("| data | px | pipeline | images/s | vs plain |")
    print("|---|---|---|---|---|")
    for name, size, k, ips, ratio in rows:
        print(f"| {name} | {size} | {k} | {ips:.0f} | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
