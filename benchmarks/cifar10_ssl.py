"""CIFAR-10 accuracy benchmark: MoCo v2 with a plain, ScaleMix or CropMix query.

Pretrains ``MoCoCropMix`` once per query type with identical seeds, data, backbone and
budget, then evaluates each backbone (and a randomly initialised one, as the floor) with

* weighted kNN (k=200, T=0.1, cosine; ``KNNMonitor.evaluate``) on the train bank vs. test;
* a linear probe on cached, un-augmented features (``LinearProbe(cached_features=True,
  head_norm=True)``, the fast protocol; the protocol string is in the JSON).

It prints one markdown table and writes ``results.json`` / ``results.md`` to ``--out``.

Budgets (``--budget``):

* ``cpu`` (default): a small ConvNet (``cifar10_e2e.TinyConvNet``), 10% of the
  training set (500 images per class), 6 epochs, batch 128, queue 4096, 2 000 test images.
  Minutes on 2 CPU cores; numbers show the direction, not the level.
* ``gpu``: ResNet-18 with the small-image stem, all 50 000 training images, 200 epochs,
  batch 512, queue 4096 (lightly's CIFAR-10 MoCo reference: kNN 0.838 at 200 epochs,
  batch 128, ResNet-18), full test set.

Every budget value can be overridden (``--epochs``, ``--train-fraction`` ...).

Example::

    python benchmarks/cifar10_ssl.py --data-root ../shared/data            # CPU, minutes
    python benchmarks/cifar10_ssl.py --data-root ../shared/data --budget gpu
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

BUDGETS = {
    "cpu": dict(backbone="convnet", epochs=6, train_fraction=0.1, batch_size=128, queue_size=4096,
                test_images=2000, probe_epochs=60, num_workers=2, precision="32-true"),
    "gpu": dict(backbone="resnet18", epochs=200, train_fraction=1.0, batch_size=512, queue_size=4096,
                test_images=10000, probe_epochs=100, num_workers=8, precision="16-mixed"),
}
QUERIES = {"plain": "plain", "scalemix": "scalemix", "cropmix": "contrastive", "cropmix_generic": "cropmix"}


def make_backbone(name: str) -> tuple[nn.Module | str, bool]:
    """(backbone argument for MoCoCropMix, small_image flag)."""
    if name == "convnet":
        from cifar10_e2e import TinyConvNet  # the same small CPU backbone as the e2e run

        return TinyConvNet(), False
    return name, True


def subset_loader(loader, n: int):
    """The first ``n`` samples of an un-shuffled loader's dataset, as a new loader."""
    from torch.utils.data import DataLoader, Subset

    ds = loader.dataset
    if n >= len(ds):
        return loader
    # evenly spaced indices keep the class balance of a sorted ImageFolder
    idx = torch.linspace(0, len(ds) - 1, n).round().long().tolist()
    return DataLoader(Subset(ds, idx), batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers)


def evaluate(model, dm, cfg: dict, seed: int) -> dict:
    from ssl_cropmix.callbacks.knn import KNNMonitor
    from ssl_cropmix.callbacks.linear_probe import LinearProbe

    bank = dm.labeled_train_dataloader(augment=False, label_fraction=cfg["train_fraction"]
                                       if cfg["train_fraction"] < 1 else None, shuffle=False)
    val = subset_loader(dm.labeled_val_dataloader(), cfg["test_images"])
    t0 = time.perf_counter()
    knn = KNNMonitor(train_dataloader=bank, val_dataloader=val, num_classes=dm.num_classes)
    knn_top1 = float(knn.evaluate(model))
    t_knn = time.perf_counter() - t0
    # BatchNorm1d(affine=False) before the linear layer (as in MAE's probe): MoCo features
    # are not normalised, and SGD at lr 0.1 underfits them in a CPU-sized number of epochs.
    # (SGD, lr 0.1 x 256/256: the CPU-sized protocol these tables were measured with; the
    # paper's LARS / batch-4096 preset needs ImageNet-sized data.)
    probe = LinearProbe(preset="moco", optimizer="sgd", base_lr=0.1, batch_size=256, cached_features=True,
                        epochs=cfg["probe_epochs"], head_norm=True,
                        train_dataloader=bank, val_dataloader=val, num_classes=dm.num_classes,
                        results_path=None, seed=seed)
    t0 = time.perf_counter()
    res = probe.run(None, model)
    t_probe = time.perf_counter() - t0
    return {
        "knn_top1": knn_top1,
        "probe_top1": float(res.top1),
        "probe_top5": float(res.top5),
        "probe_protocol": str(res.protocol),
        "eval_seconds": round(t_knn + t_probe, 1),
    }


def run_one(query: str | None, cfg: dict, data_root: str, seed: int, out: Path) -> dict:
    import pytorch_lightning as pl

    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.data.recipes import MoCoViews
    from ssl_cropmix.data.sources import ImageFolderSource
    from ssl_cropmix.methods.moco import MoCoCropMix

    pl.seed_everything(seed, workers=True)
    dm = CropMixDataModule(
        ImageFolderSource(data_root, train_split="train", val_split="test"),
        MoCoViews(query=QUERIES[query] if query else "plain"), image_size=32, batch_size=cfg["batch_size"],
        val_batch_size=512, num_workers=cfg["num_workers"],
        label_fraction=cfg["train_fraction"] if cfg["train_fraction"] < 1 else None,
        fraction_seed=seed, persistent_workers=cfg["num_workers"] > 0,
    )
    backbone, small = make_backbone(cfg["backbone"])
    model = MoCoCropMix(backbone=backbone, small_image=small, queue_size=cfg["queue_size"], momentum=0.99,
                        base_lr=0.06, weight_decay=5e-4, temperature=0.2)
    t0 = time.perf_counter()
    if query is not None:
        trainer = pl.Trainer(
            max_epochs=cfg["epochs"], accelerator="auto", devices=1, precision=cfg["precision"],
            logger=pl.loggers.CSVLogger(out, name=query), enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
            deterministic=False,
        )
        trainer.fit(model, dm)
        loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
    else:
        dm.setup("fit")
        loss = math.nan
    t_train = time.perf_counter() - t0
    model.eval()
    if torch.cuda.is_available():
        model.cuda()
    row = {"query": query or "random init", "data_query": QUERIES[query] if query else None,
           "final_loss": round(loss, 4), "train_seconds": round(t_train, 1)}
    row.update(evaluate(model, dm, cfg, seed))
    return row


def to_markdown(rows: list[dict], cfg: dict) -> str:
    lines = [
        f"budget: backbone={cfg['backbone']}, epochs={cfg['epochs']}, train fraction={cfg['train_fraction']}, "
        f"batch={cfg['batch_size']}, queue={cfg['queue_size']}, test images={cfg['test_images']}, seed={cfg['seed']}",
        "",
        "| query | kNN top-1 (%) | linear probe top-1 (%) | top-5 (%) | final loss | pretrain s | eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['query']} | {r['knn_top1']:.2f} | {r['probe_top1']:.2f} | {r['probe_top5']:.2f} | "
            f"{r['final_loss']} | {r['train_seconds']} | {r['eval_seconds']} |"
        )
    lines.append("")
    lines.append(f"linear probe protocol: {rows[0]['probe_protocol']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"),
                   help="CIFAR-10 JPEG archive, its folder, or the extracted cifar10/ (or $SSL_CROPMIX_CIFAR10)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="cpu")
    p.add_argument("--queries", nargs="+", default=["plain", "scalemix", "cropmix"], choices=sorted(QUERIES))
    p.add_argument("--no-random-init", action="store_true", help="skip the random-init floor row")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/cifar10_ssl")
    for k, v in BUDGETS["cpu"].items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=None, help=f"override (cpu: {v})")
    a = p.parse_args(argv)

    from ssl_cropmix.data.cifar import resolve_cifar10

    try:
        root = resolve_cifar10(a.data_root)
    except FileNotFoundError as e:
        p.exit(2, f"error: {e}\n")
    cfg = dict(BUDGETS[a.budget])
    for k in cfg:
        v = getattr(a, k)
        if v is not None:
            cfg[k] = v
    cfg["seed"] = a.seed
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    variants: list[str | None] = list(a.queries) + ([] if a.no_random_init else [None])
    for q in variants:
        row = run_one(q, cfg, str(root), a.seed, out)
        rows.append(row)
        print(json.dumps(row), flush=True)
    md = to_markdown(rows, cfg)
    md += f"\n\ntotal wall time: {time.perf_counter() - t0:.0f} s"
    (out / "results.json").write_text(json.dumps({"config": cfg, "rows": rows}, indent=2))
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
