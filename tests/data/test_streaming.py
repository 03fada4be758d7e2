"""Streaming shards (issue 25): ``optimize`` with the loaders' bad-image policy, the shards
source in ``CropMixDataModule(ShardsSource(uri))`` for every view recipe and both
``augment_on`` modes, label fractions by index, an even 2-process DDP split and an exact
mid-epoch resume from the streaming loader's saved state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

pytest.importorskip("litdata")

from ssl_cropmix.data.datamodule import CropMixDataModule  # noqa: E402
from ssl_cropmix.data.datasets import BadImageWarning, label_fraction_indices  # noqa: E402
from ssl_cropmix.data.streaming import MANIFEST, StreamingShards, optimize_image_folder  # noqa: E402

N_TRAIN = 16  # one image per class: the label is the sample's identity
REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> Path:
    """train: 16 classes x 1 image (red channel = its number), plus two unreadable files;
    val: 4 classes x 1 image."""
    rng = np.random.default_rng(0)
    for split, n in (("train", N_TRAIN), ("val", 4)):
        for k in range(n):
            d = root / split / f"c{k:02d}"
            d.mkdir(parents=True)
            a = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
            a[0, 0, 0] = k
            Image.fromarray(a).save(d / "img.png")
    (root / "train" / "c03" / "zero.jpg").write_bytes(b"")
    (root / "train" / "c07" / "text.png").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, dict]:
    root = _tree(tmp_path_factory.mktemp("tree"))
    out = tmp_path_factory.mktemp("shards")
    with pytest.warns(BadImageWarning, match="2 unreadable image"):
        manifest = optimize_image_folder(root, str(out), "train", num_workers=2, verbose=False)
    optimize_image_folder(root, str(out), "val", num_workers=1, verbose=False)
    return out, manifest


def test_optimize_skips_and_names_bad_files_and_keeps_the_class_index(shards):
    out, manifest = shards
    on_disk = json.loads((out / "train" / MANIFEST).read_text())
    assert on_disk == manifest
    assert manifest["skipped"] == 2
    assert sorted(Path(b["path"]).name for b in manifest["bad_files"]) == ["text.png", "zero.jpg"]
    assert manifest["classes"] == [f"c{k:02d}" for k in range(N_TRAIN)]
    src = StreamingShards(out / "train")
    assert len(src) == N_TRAIN and src.targets == list(range(N_TRAIN))
    for i in range(N_TRAIN):  # shard i is the i-th readable file, byte for byte the image written
        img, label = src.load(i)
        assert label == i and img.getpixel((0, 0))[0] == i and img.size == (40, 36)


def test_optimize_raise_policy_names_the_file(tmp_path):
    root = _tree(tmp_path / "t")
    with pytest.raises(Exception, match="zero.jpg|text.png"):
        optimize_image_folder(root, str(tmp_path / "o"), "train", num_workers=1, verbose=False,
                              on_bad_image="raise")


def _dm(out: Path, views: str = "moco", augment_on: str = "workers", query: str = "contrastive",
        val_split: str | None = "val", **kw) -> CropMixDataModule:
    from ssl_cropmix.data.recipes import MAEViews, MoCoViews, SupervisedViews
    from ssl_cropmix.data.sources import ShardsSource

    recipe = {"moco": lambda: MoCoViews(query, augment_on), "mae": lambda: MAEViews(augment_on=augment_on),
              "supervised": lambda: SupervisedViews()}[views]()
    args = dict(image_size=16, batch_size=4, num_workers=0, persistent_workers=False)
    args.update(kw)
    return CropMixDataModule(ShardsSource(str(out), val_split=val_split), recipe, **args)


@pytest.mark.parametrize("views,augment_on", [("moco", "workers"), ("moco", "device"), ("mae", "workers"),
                                              ("mae", "device"), ("supervised", "workers")])
def test_every_recipe_and_augment_on_reads_shards(shards, views, augment_on):
    out, _ = shards
    dm = _dm(out, views=views, augment_on=augment_on)
    assert dm.num_classes == N_TRAIN
    loader = dm.train_dataloader()
    assert type(loader).__name__ == "StreamingDataLoader"
    batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(next(iter(loader)), 0), 0)
    x, y = batch
    if views == "moco":
        assert x[0].shape == x[1].shape == (4, 3, 16, 16)
    else:
        assert x.shape == (4, 3, 16, 16)
    assert y.dtype == torch.int64 and len(set(y.tolist())) == 4
    vx, vy = next(iter(dm.val_dataloader()))
    assert vx.shape == (4, 3, 16, 16) and vy.tolist() == [0, 1, 2, 3]
    lx, ly = next(iter(dm.labeled_train_dataloader(augment=False, batch_size=5, shuffle=False)))
    assert lx.shape == (5, 3, 16, 16) and ly.tolist() == [0, 1, 2, 3, 4]


def test_label_fraction_is_the_folder_paths_subset(shards, tmp_path):
    """The same seeded class-balanced indices as the folder path, read through LitData's subset."""
    out, _ = shards
    src = StreamingShards(out / "train")
    targets = [k % 4 for k in range(N_TRAIN)]  # 4 classes of 4 on the same samples
    idx = label_fraction_indices(targets, 0.5, seed=3, num_classes=4)
    seen = [int(y) for _, ys in src.loader(None, 2, indices=idx, collate_fn=_labels) for y in ys]
    assert sorted(seen) == idx  # label == sample index here
    dm = _dm(out, label_fraction=0.25, fraction_seed=5, drop_last=False)
    got = sorted(int(y) for _, ys in dm.train_dataloader() for y in ys)
    assert got == label_fraction_indices(list(range(N_TRAIN)), 0.25, 5, N_TRAIN) and len(got) == N_TRAIN


def _labels(items):
    return None, [y for _, y in items]


class _Record(pl.Callback):
    def __init__(self) -> None:
        self.labels: list[list[int]] = []
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.labels.append(batch[1].tolist())
        self.losses.append(outputs["loss"].item())


class _StopAt(pl.Callback):
    """Ends the fit after step ``step`` (a preemption), leaving max_steps and so the lr
    schedule as in the uninterrupted run."""

    def __init__(self, step: int | None) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.step is not None and trainer.global_step >= self.step:
            trainer.should_stop = True


def _fit(out: Path, root: Path, max_steps: int, ckpt_path: str | None = None, stop_at: int | None = None) -> _Record:
    from cli_fixtures import TinyTrunk

    from ssl_cropmix.methods.moco import MoCoCropMix

    rec = _Record()
    ck = pl.callbacks.ModelCheckpoint(dirpath=root / "ck", every_n_train_steps=2, save_top_k=-1)
    trainer = pl.Trainer(max_steps=max_steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=root, callbacks=[rec, ck, _StopAt(stop_at)],
                         limit_val_batches=0)
    model = MoCoCropMix(backbone=TinyTrunk(), proj_hidden_dim=16, out_dim=8, queue_size=16, lr=0.05)
    trainer.fit(model, datamodule=_dm(out, views="moco", query="cropmix", val_split=None), ckpt_path=ckpt_path)
    return rec


def test_mid_epoch_resume_continues_the_same_samples_and_losses(shards, tmp_path):
    """4 steps per epoch; stop after step 2 (mid-epoch), resume from that step checkpoint to
    step 10 (into the 3rd epoch): the same sample order and the same losses, bit for bit."""
    out, _ = shards
    pl.seed_everything(0, workers=True)
    full = _fit(out, tmp_path / "a", 10)
    assert sorted(sum(full.labels[:4], [])) == list(range(N_TRAIN))  # an epoch is every sample once
    pl.seed_everything(0, workers=True)
    _fit(out, tmp_path / "b", 2)
    ckpt = tmp_path / "b" / "ck" / "epoch=0-step=2.ckpt"
    saved = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert saved[0]["dataset"]["num_samples_yielded"] == 8  # the loader's position: 2 batches of 4
    pl.seed_everything(1, workers=True)  # a different seed: the order must come from the checkpoint
    resumed = _fit(out, tmp_path / "b", 10, ckpt_path=str(ckpt))
    assert resumed.labels == full.labels[2:]
    assert resumed.losses[0] != 0  # the resumed fit trains


def test_mid_epoch_resume_gives_the_same_losses(shards, tmp_path):
    """With num_workers=0 Lightning prefetches batch 3 in the training process before step 2's
    checkpoint saves the RNG; each sample's view is drawn from its own (seed, epoch, index)
    seed (the RNG state restored after it), and the loader's iterator seeds from its own generator, so neither
    moves the RNG the checkpoint restores: the resumed losses (steps 3-6, into the 2nd epoch)
    are the uninterrupted run's, bit for bit. The interrupted run has the same max_steps (the
    same cosine schedule) and is stopped after step 2."""
    out, _ = shards
    pl.seed_everything(0, workers=True)
    full = _fit(out, tmp_path / "a", 6)
    pl.seed_everything(0, workers=True)
    _fit(out, tmp_path / "b", 6, stop_at=2)
    resumed = _fit(out, tmp_path / "b", 6, ckpt_path=str(tmp_path / "b" / "ck" / "epoch=0-step=2.ckpt"))
    assert resumed.losses == full.losses[2:]


@pytest.mark.timeout(120)
def test_two_process_ddp_sees_every_sample_once_per_epoch(shards, tmp_path):
    """torchrun-style launch (2 processes, gloo): per epoch the ranks' samples are disjoint,
    equal in number and together every sample."""
    out, _ = shards
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), WORLD_SIZE="2")
    procs = []
    for rank in range(2):
        e = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), NODE_RANK="0", LOCAL_WORLD_SIZE="2",
                 GROUP_RANK="0", TORCHELASTIC_RUN_ID="test")
        procs.append(subprocess.Popen([sys.executable, str(Path(__file__).with_name("streaming_ddp_fit.py")),
                                       str(out), str(tmp_path / f"seen{rank}.json")], env=e,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=110)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-3000:]
    seen = [json.loads((tmp_path / f"seen{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == N_TRAIN // 2
        assert not set(a) & set(b) and sorted(a + b) == list(range(N_TRAIN))


def test_a_samples_view_depends_only_on_seed_epoch_and_index(shards):
    """Reading samples in another order, after another global seed, gives each sample the same
    view; reading leaves torch's global RNG where it was; another epoch gives another view."""
    from ssl_cropmix.data.views import moco_views

    out, _ = shards
    src = StreamingShards(out / "train")
    ds = src.streaming_dataset(moco_views(size=16, query="cropmix"), shuffle=True, seed=7)
    torch.manual_seed(1)
    first = {i: ds[i][0][0] for i in (3, 5, 9)}
    torch.manual_seed(2)
    state = torch.get_rng_state()
    again = {i: ds[i][0][0] for i in (9, 3, 5)}
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(first[i], again[i]) for i in first)
    ds.current_epoch += 1
    assert not torch.equal(ds[3][0][0], first[3])


def test_streaming_dataset_pickles_by_name(shards):
    """Spawned / forkserver DataLoader workers (Python 3.14's default) receive the dataset by
    pickle: its class is found again by name although litdata is imported lazily."""
    import pickle

    out, _ = shards
    ds = StreamingShards(out / "train").streaming_dataset(None, shuffle=True, seed=3)
    back = pickle.loads(pickle.dumps(ds))
    assert type(back) is type(ds) and back.seed == 3 and len(back) == N_TRAIN


def test_optimize_puts_the_start_method_back(tmp_path, monkeypatch):
    """litdata.optimize forces the process-wide start method to spawn; optimize_image_folder
    restores the previous one (also when optimize fails)."""
    import multiprocessing

    import litdata

    def fake_optimize(**kwargs):
        multiprocessing.set_start_method("spawn", force=True)
        raise RuntimeError("stopped here")

    before = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method("fork", force=True)
    monkeypatch.setattr(litdata, "optimize", fake_optimize)
    try:
        with pytest.raises(RuntimeError, match="stopped here"):
            optimize_image_folder(_tree(tmp_path / "t"), str(tmp_path / "o"), "train", num_workers=1, verbose=False)
        assert multiprocessing.get_start_method(allow_none=True) == "fork"
    finally:
        multiprocessing.set_start_method(before, force=True)
