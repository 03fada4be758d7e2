"""``show-views``: a PNG grid of the key, the crops, the mixed image and the query view.

One row per image; columns ``original | key | crop 1..n | mixed | query``. ``crop i`` are the
resized crops CropMix cut (before colour augmentation), ``mixed`` is CropMix's output before
the query's colour augmentation (for the contrastive preset the crops are already coloured
inside the mix) and ``query`` / ``key`` are the final, de-normalised training views. A column
that no shown image fills is left out: views without CropMix (``plain``, MAE ``rrc``) have no
crop / mixed columns, MAE views no key, and ``crop 4`` appears only if a row drew 4 crops.

Usage::

    python -m ssl_cropmix.data.grid --data-dir ../shared/data --image-size 32 --out views.png
    python -m ssl_cropmix.data.grid --data-dir imagenet --query contrastive --n 6 --out v.png

(``ssl-cropmix show-views`` takes the same arguments.) From Python:
``show_views(datamodule_or_dataset, n, out_path)``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.data import views as V
from ssl_cropmix.transforms import functional as CF

TILE_GAP = 2
HEADER = 14


def _pick_images(data: Any, n: int) -> tuple[list[Image.Image], Callable | None, tuple, tuple]:
    """``n`` evenly spaced PIL images of ``data`` plus its training transform and stats."""
    mean, std, transform = V.IMAGENET_MEAN, V.IMAGENET_STD, None
    source = data
    if hasattr(data, "train_transform") and hasattr(data, "source"):  # CropMixDataModule
        source = data.reader(data.source.train_split)
        transform, mean, std = data.train_transform(), data.mean, data.std
    elif hasattr(data, "source") and hasattr(data, "indices"):  # ViewDataset
        transform, source = data.transform, data.source
    length = len(source)
    if length == 0:
        raise ValueError("the dataset is empty")
    idx = torch.linspace(0, length - 1, min(n, length)).round().long().tolist()
    images = []
    for i in idx:
        if hasattr(source, "load"):
            item = source.load(i)
            if item is None:
                continue
            img = item[0]
        else:
            img = source[i][0]
        if isinstance(img, torch.Tensor):
            img = F.to_pil_image(img)
        images.append(img)
    return images, transform, mean, std


def _split_query(transform: Any) -> tuple[Any, Any, Any, Any]:
    """``(query, key, cropmix_or_None, after_mix)`` parts of a view transform."""
    from ssl_cropmix.transforms import CropMix

    query, key = (transform.query, transform.key) if isinstance(transform, V.TwoViews) else (transform, None)
    mix, rest = None, None
    # a backend chosen per image by source size: both sides share one configuration, and the
    # grid cuts from uint8 tensors (the tensor backend)
    first = query.transforms[0] if isinstance(query, v2.Compose) and query.transforms else query
    first = first.large if isinstance(first, V.BySourceSize) else first
    if isinstance(first, CropMix):
        mix = first
        rest = v2.Compose(query.transforms[1:]) if isinstance(query, v2.Compose) else None
    return query, key, mix, rest


def _to_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], normalized: bool) -> torch.Tensor:
    x = x.as_subclass(torch.Tensor).detach().cpu()
    if x.dtype == torch.uint8:
        return x
    if normalized:
        x = x * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def view_rows(
    data: Any, n: int = 8, query: str | None = None, image_size: int | None = None, seed: int = 0
) -> tuple[list[str], list[list[torch.Tensor | None]]]:
    """Column names and rows of uint8 ``(3, s, s)`` tiles (``None`` = empty tile; columns
    empty in every row are dropped).

    Args:
        data: a ``CropMixDataModule``, a ``ViewDataset`` or any dataset of ``(image, label)``.
        n: number of images (rows).
        query: override the MoCo query (default: the data module's, else ``"cropmix"``).
        image_size: view size when ``data`` has none (default 224, or 32 for <= 64-px images).
        seed: seeds a forked torch RNG, so the caller's RNG state is untouched.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    images, transform, mean, std = _pick_images(data, n)
    if transform is None or query is not None:
        size = image_size or getattr(data, "image_size", None)
        if size is None:
            size = 32 if max(images[0].size) <= V.SMALL_IMAGE_MAX else 224
        transform = V.moco_views(query or "cropmix", size, mean=mean, std=std)
    q, key, mix, rest = _split_query(transform)
    rows: list[list[torch.Tensor | None]] = []
    max_crops = max(mix.num_crops) if mix is not None else 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for img in images:
            u8 = F.pil_to_tensor(img)
            k = _to_uint8(key(img), mean, std, True) if key is not None else None
            crops: list[torch.Tensor | None] = [None] * max_crops
            if mix is not None:
                params = mix.sample_params(tuple(u8.shape[-2:]))
                for j, b in enumerate(params.boxes):
                    crops[j] = CF.resized_crop(u8, b.box, mix.size, mix.interpolation, mix.antialias)
                mixed = mix.apply(u8, params)
                out = rest(mixed) if rest is not None else mixed
                mixed_u8 = _to_uint8(mixed, mean, std, False)
            else:
                out, mixed_u8 = q(img), None
            qv = _to_uint8(out, mean, std, rest is not None or mix is None)
            side = qv.shape[-1]
            orig = F.resize(u8, [side, side], antialias=True)
            rows.append([orig, k, *crops, mixed_u8, qv])
    names = ["original", "key", *[f"crop {j + 1}" for j in range(max_crops)], "mixed", "query"]
    keep = [c for c, name in enumerate(names)
            if name in ("original", "query") or any(row[c] is not None for row in rows)]
    return [names[c] for c in keep], [[row[c] for c in keep] for row in rows]


def show_views(
    data: Any,
    n: int = 8,
    out_path: str | os.PathLike = "views.png",
    query: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    scale: int | None = None,
) -> Path:
    """Write a PNG grid of the key, crops, mixed and query views of ``n`` images.

    Args:
        data: a ``CropMixDataModule`` (its training views), a ``ViewDataset`` or any dataset of
            ``(image, label)`` (shown with ``moco_views(query or "cropmix")``).
        n: number of images (rows), spread evenly over the dataset.
        out_path: PNG file to write (parent folders are created).
        query, image_size, seed: see :func:`view_rows`.
        scale: integer up-scaling of the tiles (default: so that tiles are >= 96 px).

    Returns:
        The written path.
    """
    names, rows = view_rows(data, n, query, image_size, seed)
    side = next(t for t in rows[0] if t is not None).shape[-1]
    scale = scale or max(1, -(-96 // side))
    s = side * scale
    cols = len(names)
    w = cols * s + (cols + 1) * TILE_GAP
    h = HEADER + len(rows) * s + (len(rows) + 1) * TILE_GAP
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(names):
        draw.text((TILE_GAP + c * (s + TILE_GAP) + 2, 1), name, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            if tile is None:
                continue
            im = F.to_pil_image(tile).resize((s, s), Image.NEAREST)
            canvas.paste(im, (TILE_GAP + c * (s + TILE_GAP), HEADER + TILE_GAP + r * (s + TILE_GAP)))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


def build_parser(prog: str = "python -m ssl_cropmix.data.grid") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Write a PNG grid of key / crops / mixed / query views.")
    p.add_argument("--data-dir", default=None, help="folder with <split>/<class>/ images, the CIFAR-10 "
                   "JPEG archive (or its folder), or a torchvision root with --dataset "
                   "(required for --dataset folder)")
    p.add_argument("--dataset", default="folder", choices=["folder", "demo", "cifar10", "cifar100", "stl10"])
    p.add_argument("--split", default="train", help="split to read (default: train)")
    p.add_argument("--views", default="moco", choices=["moco", "mae", "supervised"])
    p.add_argument("--query", default="cropmix", choices=list(V.QUERIES))
    p.add_argument("--mae-view", default="rrc", choices=list(V.MAE_VIEWS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--n", type=int, default=8, help="number of images (rows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="views.png", help="output PNG path")
    return p


def main(argv: list[str] | None = None, prog: str = "python -m ssl_cropmix.data.grid") -> int:
    """Command-line entry (also used by ``ssl-cropmix show-views``)."""
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MAEViews, MoCoViews, SupervisedViews
    from ssl_cropmix.data.sources import source_from_flat

    a = build_parser(prog).parse_args(argv)
    source = source_from_flat(a.dataset, a.data_dir, train_split=a.split, val_split=None)
    recipe = {"moco": lambda: MoCoViews(a.query), "mae": lambda: MAEViews(a.mae_view), "supervised": SupervisedViews}
    dm = CropMixDataModule(source, recipe[a.views](), image_size=a.image_size, batch_size=1, num_workers=0)
    out = show_views(dm, a.n, a.out, seed=a.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
