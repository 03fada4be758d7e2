"""No task command writes outside its run directory and the package's cache (issue 22, case 1).

Before: ``probe --dataset demo`` with a checkpoint trained on a folder kept the checkpoint's
``data_dir`` and wrote the 8 demo classes into the user's ``<data_dir>/train`` and ``val``.
Here every task command runs on a checkpoint whose recorded ``data_dir`` is the user's tree,
and the tree (listing, bytes and modes of every entry) must be identical afterwards.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tree_digest(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: relative path -> (kind, mode, sha256 of the bytes)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_mode, digest)
    return out


@pytest.fixture
def user_tree(tmp_path: Path) -> Path:
    data = tmp_path / "user_data"
    for split in ("train", "val"):
        for k, c in enumerate(("a", "b", "c")):
            (data / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (16, 16), (80 * k, 40 * i, 200 - 60 * k)).save(data / split / c / f"{i}.png")
    return data


def _save(module, path: Path, data_dir: Path, class_path: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"pytorch-lightning_version": "2.6.0", "epoch": 0, "global_step": 1, "state_dict": module.state_dict(),
                "hyper_parameters": {**dict(module.hparams), "_class_path": class_path},
                "datamodule_hyper_parameters": {"dataset": "folder", "data_dir": str(data_dir), "train_split": "train",
                                                "val_split": "val", "image_size": 32}}, path)
    return path


def test_no_task_command_writes_into_the_users_data(user_tree, tmp_path, monkeypatch):
    from ssl_cropmix.cli import main
    from ssl_cropmix.methods.classifier import CropMixClassifier

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    clf = CropMixClassifier(num_classes=3, backbone="resnet18", small_image=True)
    ckpt = _save(clf, tmp_path / "run" / "checkpoints" / "c.ckpt", user_tree,
                 "ssl_cropmix.methods.classifier.CropMixClassifier")
    before = tree_digest(user_tree)
    common = ["--ckpt", str(ckpt), "--device", "cpu", "--epochs", "1", "--num-workers", "0",
              "--loader-batch-size", "8"]
    commands = {
        "probe --dataset demo": ["probe", *common, "--cached-features", "--dataset", "demo"],
        "probe": ["probe", *common, "--cached-features"],
        "finetune": ["finetune", *common, "--batch-size", "6", "--label-fraction", "1.0"],
        "robustness": ["robustness", "--ckpt", str(ckpt), "--val", str(user_tree / "val"), "--image-size", "32",
                       "--num-workers", "0", "--accelerator", "cpu", "--calibration-bin-size", "2"],
        "export": ["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "out" / "b.safetensors")],
    }
    for name, argv in commands.items():
        assert main(argv) == 0, name
        assert tree_digest(user_tree) == before, f"`ssl-cropmix {name}` changed the user's data folder"
    assert (tmp_path / "cache" / "demo" / "train").is_dir()  # the demo set went to the cache
