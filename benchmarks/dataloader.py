"""Throughput of the full MoCo pretraining batch (query + key) through a DataLoader.

Compares, in one process, interleaved and repeated, on the same files, loader and workers:

* ``lightly``: lightly's ``MoCoV2Transform`` pair (PIL pipeline, ``np.random`` blur); at
  32 px with ``gaussian_blur=0`` like our small-image recipe.
* ``plain``: our MoCo v2 key + plain query (``moco_views("plain")``).
* ``cropmix``: generic CropMix query (Mixup, n in {2,3,4}) + MoCo v2 key.
* ``scalemix``: ScaleMix query + key.
* ``contrastive``: the paper's contrastive CropMix preset (two fully augmented crops) + key.
* ``cropmix_every_crop`` (only when named in ``--pipelines``): ``cropmix`` with
  ``CropMix(skip_invisible=False)``, i.e. every Mixup crop resized even when it cannot show.

Datasets: CIFAR-10 JPEGs (32 px views) from ``--data-root``, ImageNet-sized photos
(224 px views): the scikit-image demo photos resized to ``--photo-side`` px on the long side
(ImageNet's typical 500x375) and replicated to ``--photos`` JPEG files in a temp folder, and
``tiles``: the demo set's 64 training tiles (75-352 px JPEGs) cut to 32-px views, i.e. large
sources for small outputs (issue 24: the CropMix pair >= 0.9x plain there too).
Images/s counts source images (each yields a query and a key), decoding included. Batches
are drawn at random with replacement. Each ratio is the median of per-round ratios (a
round times every pipeline once, back to back), with its quartiles: on a shared machine
single measurements drift by +-20 %, paired ones far less.

Targets (issue 3): plain >= lightly; cropmix >= 0.9x plain; contrastive >= 0.65x plain.

``--source streaming`` (issue 25) instead writes each dataset as LitData shards
(``optimize_image_folder``, timed, size on disk reported) and compares, in the same
interleaved rounds, the pairs/s of the shards' ``StreamingDataLoader`` (shuffled) against the
ImageFolder loader, both with the ``--pipeline`` views (default: the recipes' contrastive
query). Target: streaming >= 0.9x ImageFolder at 224 px. Needs ``ssl_cropmix[streaming]``.

    python benchmarks/dataloader.py --data-root ../shared/data --num-workers 0
    python benchmarks/dataloader.py --data-root ../shared/data --num-workers 2
    python benchmarks/dataloader.py --quick      # short smoke run
    python benchmarks/dataloader.py --datasets tiles,cifar10 --pipelines plain,cropmix,cropmix_every_crop \
        --num-workers 0 --repeats 40 --batches 2     # large sources; the invisible-crop skip
    python benchmarks/dataloader.py --source streaming --data-root ../shared/data --num-workers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ssl_cropmix.data.datasets import ImageFolderDataset, ViewDataset  # noqa: E402
from ssl_cropmix.data.views import moco_views  # noqa: E402

PIPELINES = ("lightly", "plain", "cropmix", "scalemix", "contrastive")


def make_transform(name: str, size: int):
    if name == "cropmix_every_crop":
        return moco_views("cropmix", size, skip_invisible=False)
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


def make_loader(source, transform, batch_size: int, num_batches: int, workers: int, seed: int) -> DataLoader:
    """A loader of ``num_batches`` random batches (with replacement, so it never runs dry)."""
    ds = ViewDataset(source, transform)
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(ds, replacement=True, num_samples=batch_size * num_batches, generator=g)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True)


def time_batches(it, batches: int) -> float:
    """Images per second over the next ``batches`` batches of iterator ``it``."""
    t = time.perf_counter()
    n = 0
    for _ in range(batches):
        _, y = next(it)
        n += len(y)
    return n / (time.perf_counter() - t)


def run_rounds(source, size: int, pipelines: list[str], a: argparse.Namespace) -> dict[str, list[float]]:
    """Images/s of every pipeline in ``a.repeats`` interleaved rounds of ``a.batches`` batches.

    ``--num-workers 0``: one persistent iterator per pipeline, and every round times each
    pipeline on its next batches in a rotating order, so that drifting machine load hits
    all pipelines alike and the per-round ratios pair measurements taken seconds apart.
    With workers, each measurement starts its own loader and drains the batches prefetched
    during start-up before timing (steady state), since live iterators of all pipelines
    would compete for the cores.
    """
    out: dict[str, list[float]] = {k: [] for k in pipelines}
    per_loader = 1 + a.batches * (a.repeats if a.num_workers == 0 else 1) + 2 * a.num_workers
    iters = {}
    if a.num_workers == 0:
        for k in pipelines:
            # same sampler seed for every pipeline: each reads the same images in the same order
            iters[k] = iter(make_loader(source, make_transform(k, size), a.batch_size, per_loader, 0, 0))
            next(iters[k])  # warm-up
    for r in range(a.repeats):
        order = pipelines[r % len(pipelines):] + pipelines[: r % len(pipelines)]
        for k in order:
            if a.num_workers == 0:
                out[k].append(time_batches(iters[k], a.batches))
                continue
            it = iter(make_loader(source, make_transform(k, size), a.batch_size, per_loader, a.num_workers, r))
            for _ in range(1 + 2 * a.num_workers):  # warm-up: worker start and the prefetched batches
                next(it)
            out[k].append(time_batches(it, a.batches))
            del it
    return out


def forever(make_iter):
    """Batches of ``make_iter()``, restarted whenever an epoch ends."""
    while True:
        yield from make_iter()


def folder_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def run_streaming_rounds(folder, shards, size: int, pipeline: str, a: argparse.Namespace) -> dict[str, list[float]]:
    """Pairs/s of the ImageFolder loader (``"folder"``) and the shards' StreamingDataLoader
    (``"streaming"``) with the same views, in ``a.repeats`` interleaved rounds (as
    :func:`run_rounds`: persistent iterators with 0 workers, fresh warmed-up ones otherwise)."""
    view = make_transform(pipeline, size)
    per_loader = 1 + a.batches * (a.repeats if a.num_workers == 0 else 1) + 2 * a.num_workers

    def start(kind: str, seed: int):
        if kind == "folder":
            return iter(make_loader(folder, view, a.batch_size, per_loader, a.num_workers, seed))
        return forever(lambda: shards.loader(view, a.batch_size, shuffle=True, seed=seed, drop_last=True,
                                             num_workers=a.num_workers))

    kinds = ["folder", "streaming"]
    out: dict[str, list[float]] = {k: [] for k in kinds}
    iters = {k: start(k, 0) for k in kinds} if a.num_workers == 0 else {}
    for it in iters.values():
        next(it)  # warm-up
    for r in range(a.repeats):
        for k in kinds if r % 2 == 0 else kinds[::-1]:
            if a.num_workers == 0:
                out[k].append(time_batches(iters[k], a.batches))
                continue
            it = start(k, r)
            for _ in range(1 + 2 * a.num_workers):
                next(it)
            out[k].append(time_batches(it, a.batches))
            del it
    return out


def streaming_main(a: argparse.Namespace, tmp: Path) -> list[str]:
    """``--source streaming``: optimize each dataset, then streaming vs ImageFolder pairs/s."""
    from ssl_cropmix.data.streaming import StreamingShards, optimize_image_folder

    lines = []
    for name in a.datasets.split(","):
        if name == "cifar10":
            from ssl_cropmix.data.cifar import resolve_cifar10

            data_dir, split, size = resolve_cifar10(a.data_root), "train", 32
        elif name == "photos":
            photo_folder(tmp, a.photos, a.photo_side)
            data_dir, split, size = tmp, "photos", 224
        else:
            raise SystemExit(f"--datasets: unknown {name!r} (cifar10, photos)")
        out = tmp / "shards" / name
        t = time.perf_counter()
        manifest = optimize_image_folder(data_dir, str(out), split, num_workers=a.optimize_workers, verbose=False)
        took = time.perf_counter() - t
        folder = ImageFolderDataset(Path(data_dir) / split)
        n = len(manifest["targets"])
        print(f"optimize {name}: {n} images ({folder_size_mb(Path(data_dir) / split):.0f} MB of files) -> "
              f"{folder_size_mb(out / split):.0f} MB of shards in {took:.1f} s "
              f"({a.optimize_workers} workers, {n / took:.0f} images/s)", flush=True)
        res = run_streaming_rounds(folder, StreamingShards(out / split), size, a.pipeline, a)
        ratios = [s / f for s, f in zip(res["streaming"], res["folder"])]
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
        lines.append(f"| {name} | {size} | {statistics.median(res['folder']):.0f} | "
                     f"{statistics.median(res['streaming']):.0f} | {statistics.median(ratios):.2f}x | "
                     f"{q[0]:.2f}-{q[2]:.2f} | {n} images, {folder_size_mb(out / split):.0f} MB, {took:.1f} s |")
    print(f"\nMoCo pair ({a.pipeline} query) throughput, streaming shards vs ImageFolder, "
          f"num_workers={a.num_workers}, batch {a.batch_size}, {a.repeats} interleaved rounds x {a.batches} batches\n")
    print("| data | px | ImageFolder pairs/s | streaming pairs/s | streaming / folder (median) | quartiles | optimize |")
    print("|---|---|---|---|---|---|---|")
    for line in lines:
        print(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--datasets", default="cifar10,photos", help="any of cifar10, photos, tiles")
    p.add_argument("--pipelines", default=",".join(PIPELINES))
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=3, help="timed batches per pipeline and round")
    p.add_argument("--repeats", type=int, default=11, help="interleaved rounds (medians reported)")
    p.add_argument("--photos", type=int, default=400, help="photo files to write")
    p.add_argument("--photo-side", type=int, default=500, help="long side of the photos (px)")
    p.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    p.add_argument("--source", choices=("folder", "streaming"), default="folder",
                   help="folder: compare view pipelines; streaming: LitData shards vs ImageFolder")
    p.add_argument("--pipeline", default="contrastive", help="views of --source streaming")
    p.add_argument("--optimize-workers", type=int, default=2, help="litdata.optimize workers (--source streaming)")
    a = p.parse_args(argv)
    if a.quick:
        a.batches, a.repeats, a.batch_size, a.photos = 1, 2, 16, 40
    torch.set_num_threads(1)
    if a.source == "streaming":
        with tempfile.TemporaryDirectory() as tmp:
            streaming_main(a, Path(tmp))
        return 0
    pipelines = a.pipelines.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.datasets.split(","):
            if name == "cifar10":
                from ssl_cropmix.data.cifar import resolve_cifar10

                source, size = ImageFolderDataset(resolve_cifar10(a.data_root) / "train"), 32
            elif name == "photos":
                root = photo_folder(Path(tmp), a.photos, a.photo_side)
                source, size = ImageFolderDataset(root), 224
            elif name == "tiles":
                from ssl_cropmix.data.demo import write_demo_folder

                source, size = ImageFolderDataset(write_demo_folder(Path(tmp) / "demo") / "train"), 32
            else:
                raise SystemExit(f"--datasets: unknown {name!r} (cifar10, photos, tiles)")
            results = run_rounds(source, size, pipelines, a)
            for k in pipelines:
                ips = statistics.median(results[k])
                if "plain" in results:
                    ratios = [x / p for x, p in zip(results[k], results["plain"])]
                    q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
                    rows.append((name, size, k, ips, statistics.median(ratios), q[0], q[2]))
                else:
                    rows.append((name, size, k, ips, float("nan"), float("nan"), float("nan")))
    print(f"\nMoCo pair throughput, num_workers={a.num_workers}, batch {a.batch_size}, "
          f"{a.repeats} interleaved rounds x {a.batches} batches, torch threads/worker=1\n")
    print("| data | px | pipeline | images/s (median) | vs plain (median of per-round ratios) | quartiles |")
    print("|---|---|---|---|---|---|")
    for name, size, k, ips, ratio, q1, q3 in rows:
        print(f"| {name} | {size} | {k} | {ips:.0f} | {ratio:.2f}x | {q1:.2f}-{q3:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
