"""Checkpoints are written atomically and a full / read-only disk is one clear line (issue 22,
cases 6 and 7). Before: a full disk (3 MB tmpfs) left a truncated ``epoch=0-step=4.ckpt`` in
``checkpoints/`` and a raw ``OSError: [Errno 28]`` traceback; a read-only
``--trainer.default_root_dir`` gave a raw ``OSError`` traceback."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch

from ssl_cropmix.runs import AtomicCheckpointIO, CheckpointWriteError

sys.path.insert(0, str(Path(__file__).parent))
from cli_fixtures import write_tiny_recipe  # noqa: E402


def _enospc_mid_write(checkpoint, f):
    """A file system that fills up after the first 4 KiB of the checkpoint."""
    f.write(b"PK\x03\x04" + b"\0" * 4092)
    f.flush()
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_write_round_trips_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "checkpoints" / "epoch=0-step=4.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(3.0)}, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3.0))


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "epoch=0-step=4.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1)}, tmp_path / "checkpoints" / "last.ckpt")
    monkeypatch.setattr(AtomicCheckpointIO, "_write", staticmethod(_enospc_mid_write))
    with pytest.raises(CheckpointWriteError, match=r"^\[Errno 28\] could not write checkpoint '.*epoch=0-step=4\.ckpt': "
                       r"directory '.*checkpoints' is full \(no space left on its file system\); nothing was left "
                       r"under that name \(earlier checkpoints are kept\)$"):
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1000)}, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no partial file, no temp file


def _fit(tmp_path: Path, root: Path, capsys) -> tuple[int, str]:
    from ssl_cropmix.cli import main

    recipe = write_tiny_recipe(tmp_path)
    rc = main(["fit", "--config", str(recipe), f"--trainer.default_root_dir={root}", "--trainer.max_steps=2",
               "--trainer.limit_train_batches=2"])
    return rc, capsys.readouterr().err


def test_cli_disk_full_is_one_line_and_leaves_no_truncated_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(AtomicCheckpointIO, "_write", staticmethod(_enospc_mid_write))
    rc, err = _fit(tmp_path, tmp_path / "runs", capsys)
    line = [ln for ln in err.splitlines() if ln.startswith("ssl-cropmix: error:")]
    assert rc == 2 and "Traceback" not in err
    assert len(line) == 1 and "could not write checkpoint" in line[0] and "checkpoints' is full" in line[0]
    assert not [p for p in (tmp_path / "runs").rglob("*") if p.suffix in (".ckpt", ".tmp")]


def test_cli_read_only_root_dir_is_one_line_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):  # a read-only mount (chmod does not stop root)
        if str(self).startswith(str(ro)):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc, err = _fit(tmp_path, ro, capsys)
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"ssl-cropmix: error: cannot create the run directory under trainer.default_root_dir={str(ro)!r}: "
        f"directory {str(ro)!r} is read-only (read-only file system); set --trainer.default_root_dir to a "
        "writable directory (set SSL_CROPMIX_DEBUG=1 for the traceback)"
    )
