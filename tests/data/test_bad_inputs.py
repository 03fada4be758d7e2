"""Every bad input is answered (issue 14, item 5): with ``num_workers`` 0 and 2 and both
``on_bad_image`` policies, no crash, no hang, every bad file named once and counted once,
and every good image served with the pixels an independent reader gives."""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_inputs import BOMB_SIDE, write_bad_inputs
from PIL import Image
from torch.utils.data import DataLoader

from ssl_cropmix.data.datasets import (
    DEFAULT_MAX_PIXELS,
    BadImageError,
    BadImageWarning,
    ImageFolderDataset,
    load_rgb,
)

pytestmark = pytest.mark.timeout(240)


def digest(img: Image.Image) -> torch.Tensor:
    """Picklable transform: the RGB pixels, padded to a fixed shape with their size."""
    a = np.asarray(img)
    assert img.mode == "RGB" and a.dtype == np.uint8
    return torch.tensor([hash(a.tobytes()) & 0x7FFFFFFFFFFF, a.shape[0], a.shape[1]], dtype=torch.int64)


def _print_warnings() -> None:
    """Inside ``catch_warnings``: print every BadImageWarning to stderr, in this process and in
    forked DataLoader workers alike (pytest's own recorder would keep workers' in their memory)."""
    warnings.simplefilter("always", BadImageWarning)

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        sys.stderr.flush()

    warnings.showwarning = show


def _key(a: np.ndarray) -> tuple[int, int, int]:
    return (hash(np.ascontiguousarray(a).tobytes()) & 0x7FFFFFFFFFFF, a.shape[0], a.shape[1])


@pytest.fixture
def inputs(tmp_path):
    return write_bad_inputs(tmp_path / "train")


def _scan(root: Path, **kw) -> ImageFolderDataset:
    with pytest.warns(BadImageWarning, match=r"2 directory link\(s\) .* not followed: .*loop_up.*loop_self") as rec:
        ds = ImageFolderDataset(root, transform=digest, **kw)
    assert len(rec) == 1, [str(r.message) for r in rec]  # no misleading "non-image file" warning
    return ds


def test_scan_counts_each_file_once_and_follows_no_loop(inputs):
    ds = _scan(inputs.root)
    paths = [Path(p) for p, _ in ds.samples]
    assert len(paths) == len(set(paths)) == len(inputs.good) + len(inputs.bad)
    assert set(paths) == set(inputs.good.values()) | set(inputs.bad.values())
    assert not ds.ignored_files
    assert inputs.not_samples["dir_named_x.jpg"] not in paths


def test_good_kinds_have_the_expected_pixels(inputs):
    for kind, path in inputs.good.items():
        img = load_rgb(path)
        assert img.mode == "RGB", kind
        if kind in inputs.expected_rgb:
            np.testing.assert_array_equal(np.asarray(img), inputs.expected_rgb[kind], err_msg=kind)
    # the lossy ones: CMYK (255, 0, 0, 0) is cyan; progressive JPEG decodes to its size
    assert np.abs(np.asarray(load_rgb(inputs.good["CMYK"])).astype(int) - (0, 255, 255)).max() <= 3
    assert load_rgb(inputs.good["progressive_JPEG"]).size == (32, 32)


def test_bomb_is_refused_from_its_header_quickly(inputs):
    path = inputs.bad["bomb_PNG"]
    assert path.stat().st_size < 100_000 and BOMB_SIDE**2 > DEFAULT_MAX_PIXELS
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{BOMB_SIDE}x{BOMB_SIDE} = 144000000 pixels \(144.0 Mpx\) is above max_pixels=89478485 \(not decoded\)"):
        load_rgb(path)
    assert time.perf_counter() - t0 < 1.0  # decoding 144 Mpx takes seconds
    # configurable: a low limit refuses an ordinary image, naming the limit
    with pytest.raises(ValueError, match=r"24x20 = 480 pixels \(0.0 Mpx\) is above max_pixels=100"):
        load_rgb(inputs.good["plain_0"], max_pixels=100)
    with pytest.raises(ValueError, match=r"^max_pixels must be an int >= 1 or None, got 0$"):
        ImageFolderDataset(inputs.root, max_pixels=0)


def test_fifo_is_not_opened(inputs):
    with pytest.raises(OSError, match=r"not a regular file \(mode p"):
        load_rgb(inputs.bad["FIFO"])


def _expected_good_keys(inputs) -> set[tuple[int, int, int]]:
    return {_key(np.asarray(load_rgb(p))) for p in inputs.good.values()}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_policy_names_and_counts_each_bad_file_once(num_workers, inputs, capfd):
    ds = _scan(inputs.root)
    loader = DataLoader(ds, batch_size=4, num_workers=num_workers, shuffle=False)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        _print_warnings()
        served = [tuple(row.tolist()) for x, _ in loader for row in x]
    assert time.perf_counter() - t0 < 60
    err = capfd.readouterr().err
    assert len(served) == len(ds)
    assert _expected_good_keys(inputs) <= set(served)  # every good image served
    assert sorted(ds.bad_files) == sorted(str(p) for p in inputs.bad.values())
    assert ds.skipped == len(inputs.bad)  # files, not events
    for kind, path in inputs.bad.items():  # each named exactly once
        assert err.count(f"skipping unreadable image {str(path)!r}") == 1, (kind, err)
    assert err.count("skipping unreadable image") == len(inputs.bad)
    # a second pass: counted once more per file, named no more
    with warnings.catch_warnings():
        _print_warnings()
        assert sum(len(y) for _, y in loader) == len(ds)
    assert ds.skipped == 2 * len(inputs.bad)
    assert "skipping unreadable image" not in capfd.readouterr().err


@pytest.mark.parametrize("num_workers", [0, 2])
def test_raise_policy_names_the_file_without_hanging(num_workers, inputs):
    ds = _scan(inputs.root, on_bad_image="raise")
    bad = {str(p) for p in inputs.bad.values()}
    t0 = time.perf_counter()
    batches = iter(DataLoader(ds, batch_size=4, num_workers=num_workers))
    with pytest.raises(BadImageError, match="cannot read image") as e:
        for _ in batches:
            pass
    message = str(e.value)
    # Stop the workers here, by reference count: the traceback's frames hold the iterator in a
    # cycle, and when the garbage collector broke it (in whichever later test it ran) the
    # iterator's shutdown found its queues already finalised and waited out two 5-s joins.
    traceback.clear_frames(e.tb)
    del e, batches
    assert any(b in message for b in bad)
    assert time.perf_counter() - t0 < 60
    served = set()
    for i, (p, _) in enumerate(ds.samples):  # each file on its own: bad ones raise naming themselves
        if p in bad:
            with pytest.raises(BadImageError, match=f"cannot read image '{p}'"):
                ds[i]
        else:
            served.add(tuple(ds[i][0].tolist()))
    assert served == _expected_good_keys(inputs)
    assert ds.skipped == 0


def test_replacement_counts_consecutive_bad_files_once(tmp_path):
    """Ten bad files in a row and 2 good ones: 10 skips, not 10 + 9 + ... (issue: 15 for 10)."""
    d = tmp_path / "train" / "c"
    d.mkdir(parents=True)
    for i in range(10):
        (d / f"a{i}.jpg").write_bytes(b"")
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(d / f"z{i}.png")
    ds = ImageFolderDataset(tmp_path / "train", transform=digest)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always", BadImageWarning)
        assert len([ds[i] for i in range(len(ds))]) == 12
    assert ds.skipped == 10 and len(ds.bad_files) == 10
    assert len([r for r in rec if "skipping unreadable image" in str(r.message)]) == 10
