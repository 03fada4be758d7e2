"""Make the figures of docs/transforms.md from real photos (scikit-image's bundled set).

    python docs/make_figures.py            # writes docs/figures/transforms_grid.png

Each row is one photo; the first column shows it with the CropMix crop boxes of the
mixup sample drawn on top (one colour per scale range), the other columns show one
sample of each view. Everything is seeded, so the figure is reproducible.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from ssl_cropmix.data.demo import demo_images  # noqa: E402
from ssl_cropmix.transforms import CropMix, ResizeMix, ScaleMix, contrastive_cropmix  # noqa: E402

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut", "coffee", "chelsea", "motorcycle")
RANGE_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#ff7f00")


def colour_aug() -> v2.Transform:
    """The MoCo v2 colour part (jitter, grayscale), as applied to each contrastive crop."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ])


def make_grid(out: Path, size: int = 224, seed: int = 0) -> Path:
    torch.manual_seed(seed)  # v2 colour transforms and the plain RRC use the global RNG
    photos = demo_images(PHOTOS)
    g = torch.Generator().manual_seed(seed)
    views = {
        "plain RandomResizedCrop": v2.Compose([v2.RandomResizedCrop(size), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]),
        "CropMix mixup\n(n=3, scale 0.01-1)": CropMix(size, num_crops=3, generator=g),
        "CropMix cutmix\n(n=3)": CropMix(size, num_crops=3, mixing="cutmix", generator=g),
        "CropMix resizemix\n(n=3)": CropMix(size, num_crops=3, mixing="resizemix", generator=g),
        "ScaleMix\n(2 crops, one range 0.2-1)": ScaleMix(size, generator=g),
        "contrastive preset\n(MoCo query)": contrastive_cropmix(size, view_transform=colour_aug(), generator=g),
    }
    cols = 1 + len(views) + 1
    fig, axes = plt.subplots(len(photos), cols, figsize=(2.1 * cols, 2.25 * len(photos)))
    rrc = v2.Compose([v2.RandomResizedCrop(size), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    batch = torch.stack([rrc(p) for p in photos])
    resizemix_batch, soft = ResizeMix(len(photos), generator=g)(batch, torch.arange(len(photos)))
    mix_tf = views["CropMix mixup\n(n=3, scale 0.01-1)"]
    for r, photo in enumerate(photos):
        ax = axes[r, 0]
        ax.imshow(photo)
        # the boxes of the CropMix mixup sample shown in column 2 (same generator state)
        state = g.get_state()
        params = mix_tf.sample_params((photo.height, photo.width))
        g.set_state(state)
        for k, b in enumerate(params.boxes):
            lo, hi = b.scale_range
            ax.add_patch(patches.Rectangle((b.left, b.top), b.width, b.height, fill=False, lw=2,
                                           ec=RANGE_COLOURS[k], label=f"{lo:.2f}-{hi:.2f}"))
        ax.legend(loc="lower left", fontsize=6, framealpha=0.7, title="scale range", title_fontsize=6)
        for c, (name, tf) in enumerate(views.items(), start=1):
            axes[r, c].imshow(tf(photo).permute(1, 2, 0).clamp(0, 1).numpy())
        axes[r, -1].imshow(resizemix_batch[r].permute(1, 2, 0).numpy())
        top = soft[r].topk(2)
        axes[r, -1].set_xlabel(
            f"labels {PHOTOS[int(top.indices[0])]} {top.values[0]:.2f}, {PHOTOS[int(top.indices[1])]} {top.values[1]:.2f}",
            fontsize=6)
    titles = ["photo + CropMix boxes", *views, "ResizeMix (batch,\nsoft labels)"]
    for c, t in enumerate(titles):
        axes[0, c].set_title(t, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, dpi=80)
    plt.close(fig)
    # a 256-colour palette keeps the PNG small enough to commit (~0.5 MB instead of ~2 MB)
    Image.open(buf).convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=HERE / "figures" / "transforms_grid.png")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print(make_grid(args.out, seed=args.seed))


if __name__ == "__main__":
    main()
