"""show_views / view_rows (ssl_cropmix/data/grid.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ssl_cropmix.data.datamodule import CropMixDataModule
from ssl_cropmix.data.recipes import MAEViews, MoCoViews
from ssl_cropmix.data.sources import ImageFolderSource
from ssl_cropmix.data.datasets import ImageFolderDataset
from ssl_cropmix.data.grid import HEADER, TILE_GAP, main, show_views, view_rows
from data_fixtures import make_tree


def test_rows_columns_and_reproducible(tmp_path):
    make_tree(tmp_path / "train")
    dm = CropMixDataModule(ImageFolderSource(str(tmp_path), val_split=None), MoCoViews("cropmix"), image_size=32, num_workers=0)
    state = torch.get_rng_state()
    names, rows = view_rows(dm, n=3, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # caller's RNG untouched
    drawn = [sum(t is not None for t in row[2:-2]) for row in rows]
    # crop columns up to the most crops any row drew: no column is empty in every row
    assert names == ["original", "key", *[f"crop {j + 1}" for j in range(max(drawn))], "mixed", "query"]
    assert len(rows) == 3
    for row, n_crops in zip(rows, drawn):
        assert 2 <= n_crops <= 4 and all(t is None for t in row[2 + n_crops : -2])
        assert all(t.dtype == torch.uint8 and t.shape == (3, 32, 32) for t in row if t is not None)
    # original tile = the first image (evenly spaced picks start at index 0) resized to 32
    first = Image.open(dm.reader("train").samples[0][0]).convert("RGB")
    assert torch.equal(rows[0][0], F.resize(F.pil_to_tensor(first), [32, 32], antialias=True))
    _, again = view_rows(dm, n=3, seed=4)
    assert all(torch.equal(a, b) for r1, r2 in zip(rows, again) for a, b in zip(r1, r2) if a is not None)
    names, plain = view_rows(ImageFolderDataset(tmp_path / "train"), n=2, query="plain")
    assert names == ["original", "key", "query"]  # no crops / mixed columns
    assert all(t is not None for r in plain for t in r)
    names, mae = view_rows(CropMixDataModule(ImageFolderSource(str(tmp_path), val_split=None), MAEViews(),
                                             image_size=32, num_workers=0), n=2)
    assert "key" not in names and names[0] == "original" and names[-1] == "query"
    assert all(t is not None for r in mae for t in r[:1] + r[-1:])
    for c in range(len(names)):  # every drawn column has a tile in some row
        assert any(r[c] is not None for r in mae)


def test_png_layout_and_script(tmp_path):
    make_tree(tmp_path / "train")
    dm = CropMixDataModule(ImageFolderSource(str(tmp_path), val_split=None), MoCoViews("contrastive"), image_size=32, num_workers=0)
    out = show_views(dm, 2, tmp_path / "g" / "v.png", scale=2)
    w, h = Image.open(out).size
    cols = 6  # original, key, crop 1, crop 2, mixed, query
    assert (w, h) == (cols * 64 + (cols + 1) * TILE_GAP, HEADER + 2 * 64 + 3 * TILE_GAP)
    assert main(["--data-dir", str(tmp_path), "--image-size", "32", "--n", "2", "--out", str(tmp_path / "s.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "s.png")).std() > 10
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        view_rows(dm, n=0)
