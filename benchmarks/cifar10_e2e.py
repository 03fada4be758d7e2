"""End-to-end check of the evaluation callbacks on CIFAR-10 (CPU-sized).

MoCo v2 with the contrastive CropMix query is pretrained for a few epochs on a class-balanced
subset of CIFAR-10 with ``KNNMonitor`` and ``LinearProbe(cached_features=True)`` attached to
the same ``trainer.fit``; then the *same* probe and kNN are run on a randomly initialised copy
of the backbone (the floor). Prints a markdown table with accuracies, chance level and wall
times.

Example::

    python benchmarks/cifar10_e2e.py --data-root ../shared/data --epochs 3 --train-images 5000
"""

from __future__ import annotations

import argparse
import copy
import time

import pytorch_lightning as pl
import torch
from torch import nn


class TinyConvNet(nn.Module):
    """(B,3,32,32) -> (B, 8*width): four conv-BN-ReLU stages with stride-2 downsampling."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=5000, help="class-balanced pretraining/probe subset")
    ap.add_argument("--probe-epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/ssl_cropmix_e2e")
    a = ap.parse_args()

    from ssl_cropmix.callbacks.knn import KNNMonitor
    from ssl_cropmix.callbacks.linear_probe import LinearProbe
    from ssl_cropmix.data.cifar import resolve_cifar10
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import ImageFolderSource
    from ssl_cropmix.methods.moco import MoCoCropMix

    torch.set_num_threads(2)
    pl.seed_everything(a.seed, workers=True)
    frac = a.train_images / 50000
    dm = CropMixDataModule(
        ImageFolderSource(str(resolve_cifar10(a.data_root)), train_split="train", val_split="test"),
        MoCoViews(query="contrastive"), image_size=32, batch_size=a.batch_size, val_batch_size=500,
        num_workers=a.num_workers, label_fraction=frac, fraction_seed=a.seed,
        persistent_workers=a.num_workers > 0,
    )

    class ProbeData:
        """Provider restricted to the same subset (the labelled split would be all 50k)."""

        num_classes = 10

        def labeled_train_dataloader(self, augment=True, batch_size=None, label_fraction=None, subset_file=None, shuffle=True):
            return dm.labeled_train_dataloader(augment, batch_size, label_fraction or frac, subset_file, shuffle)

        def labeled_val_dataloader(self, batch_size=None):
            return dm.labeled_val_dataloader(batch_size)

    provider = ProbeData()
    model = MoCoCropMix(backbone=TinyConvNet(), queue_size=4096, momentum=0.99, base_lr=0.06,
                        weight_decay=5e-4, temperature=0.2, proj_hidden_dim=512)
    random_model = copy.deepcopy(model)  # same initialisation, never trained
    knn = KNNMonitor(every_n_epochs=a.epochs, provider=provider)
    probe = LinearProbe("moco", optimizer="sgd", base_lr=0.1, batch_size=256, epochs=a.probe_epochs,
                        cached_features=True, head_norm=True, provider=provider,
                        results_path=f"{a.out}/eval_results.json", seed=a.seed)
    trainer = pl.Trainer(max_epochs=a.epochs, callbacks=[knn, probe], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         default_root_dir=a.out)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    t_total = time.perf_counter() - t0
    t_knn0 = time.perf_counter()
    knn_rand = knn.evaluate(random_model)
    t_knn_rand = time.perf_counter() - t_knn0
    rand = probe.run(None, random_model)
    pre = probe.results[0]
    print(f"\nprotocol: {pre.protocol}\nkNN: k=200, T=0.1, cosine; bank = {a.train_images} train images, queries = 10000 test images\n")
    print("| backbone | kNN top-1 (%) | linear probe top-1 (%) | probe top-5 (%) | probe time (s) |")
    print("|---|---|---|---|---|")
    print(f"| MoCo+CropMix, {a.epochs} ep on {a.train_images} imgs | {knn.history[-1][1]:.2f} | {pre.top1:.2f} | {pre.top5:.2f} | {pre.wall_seconds:.1f} |")
    print(f"| random init (same arch) | {knn_rand:.2f} | {rand.top1:.2f} | {rand.top5:.2f} | {rand.wall_seconds:.1f} |")
    print("| chance | 10.00 | 10.00 | 50.00 | |")
    print(f"\nwall time: pretraining + kNN + probe inside fit {t_total:.0f}s; random-init kNN {t_knn_rand:.0f}s")


if __name__ == "__main__":
    main()
