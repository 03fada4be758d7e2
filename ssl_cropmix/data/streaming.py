"""Streaming shards: an ImageFolder split written once as LitData shards, read back through
``litdata.StreamingDataset`` / ``StreamingDataLoader`` (local folder or any URI LitData reads).

The split reader of :class:`~ssl_cropmix.data.sources.ShardsSource`, one more source next to
the ImageFolder tree and the torchvision sets (``sources.py``): it knows how to list and read
its samples, its class index, its splits and its bad-image policy, nothing else. The view
recipes and loaders stay in ``recipes.py`` / ``datamodule.py``.

* :func:`optimize_image_folder` (``ssl-cropmix optimize``) writes ``<out>/<split>/``:
  LitData chunks of ``{"image": encoded bytes (the file as it was), "label": int,
  "class_name": str, "index": position in the scanned folder}`` and :data:`MANIFEST` next to
  them: the class index, the label of every stored sample (in shard order), and the files
  that were skipped, named and counted (the loaders' policy: a file that does not decode
  with :func:`~ssl_cropmix.data.datasets.load_rgb` is skipped with a warning, or raises).
* :class:`StreamingShards` reads a split: ``classes``, ``targets``, ``load(i)`` (random access,
  for the labelled / evaluation loaders that re-shard with their own samplers) and
  :meth:`StreamingShards.loader` (a ``StreamingDataLoader``: even per-rank splits, shuffled per
  epoch, its position saved in Lightning checkpoints so a mid-epoch resume continues
  where it stopped).

The shards hold only images that decoded when they were written, so the bad-image policy is
applied once, by ``optimize``; a sample that fails to decode at read time means damaged
shards and raises :class:`~ssl_cropmix.data.datasets.BadImageError` naming it.

Needs ``pip install 'ssl_cropmix[streaming]'`` (LitData).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import multiprocessing
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ssl_cropmix.data.datasets import (
    _DECODE_ERRORS,
    DEFAULT_MAX_PIXELS,
    BadImageError,
    BadImagePolicy,
    BadImageWarning,
    ImageFolderDataset,
    _check_policy,
    _Source,
    check_int,
    load_rgb,
    to_rgb,
)

#: File written next to the chunks of a split: class index, targets, skipped files.
MANIFEST = "ssl_cropmix_shards.json"
#: Format tag inside :data:`MANIFEST`.
MANIFEST_FORMAT = "ssl_cropmix.shards/1"
_EXTRA_HINT = "pip install 'ssl_cropmix[streaming]'"


def require_litdata() -> Any:
    """Import LitData, or raise a one-line error naming the extra to install."""
    try:
        import litdata
    except ImportError as e:
        raise ImportError(f"streaming shards need LitData ({e}): {_EXTRA_HINT}") from None
    return litdata


def is_remote(uri: str | os.PathLike) -> bool:
    """``s3://...``, ``gs://...`` ... (anything with a scheme other than ``file``)."""
    s = str(uri)
    return "://" in s and not s.startswith("file://")


def join_uri(base: str | os.PathLike, name: str) -> str:
    """``base/name`` for a local path or a URI."""
    s = str(base)
    return f"{s.rstrip('/')}/{name}" if is_remote(s) else str(Path(s.removeprefix("file://")) / name)


def _write_text(uri: str, text: str) -> None:
    if is_remote(uri):
        import fsspec

        with fsspec.open(uri, "w") as f:
            f.write(text)
    else:
        Path(uri).write_text(text)


def _read_text(uri: str) -> str:
    if is_remote(uri):
        import fsspec

        with fsspec.open(uri, "r") as f:
            return f.read()
    return Path(uri).read_text()


# --------------------------------------------------------------------------- writing
def _encode(item: tuple[int, str, int], classes: Sequence[str], max_pixels: int | None,
            on_bad_image: str, bad_dir: str) -> Any:
    """LitData ``fn``: yield one sample dict, or nothing for an unreadable file (whose name
    and error go to ``bad_dir/<pid>.tsv``, read back by :func:`optimize_image_folder`)."""
    index, path, label = item
    try:
        load_rgb(path, max_pixels)  # the loaders' decode: what fails here would fail in training
        with open(path, "rb") as f:
            data = f.read()
    except _DECODE_ERRORS as e:
        if on_bad_image == "raise":
            raise BadImageError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
        msg = f"{type(e).__name__}: {e}".replace("\t", " ").replace("\n", " ")
        with open(os.path.join(bad_dir, f"{os.getpid()}.tsv"), "a") as f:
            f.write(f"{index}\t{path}\t{msg}\n")
        return
    yield {"image": data, "label": int(label), "class_name": classes[label], "index": int(index)}


def optimize_image_folder(
    data_dir: str | os.PathLike,
    out: str,
    split: str = "train",
    num_workers: int | None = None,
    chunk_bytes: str | int = "64MB",
    on_bad_image: BadImagePolicy = "skip",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    verbose: bool = True,
    start_method: str | None = None,
) -> dict[str, Any]:
    """Write ``<data_dir>/<split>`` (an ImageFolder tree) as LitData shards in ``<out>/<split>``.

    ``litdata.optimize`` does the work (worker processes, progress bar); inputs are kept in
    the scanned (sorted) order, so shard index ``i`` is the ``i``-th readable file and the
    manifest's ``targets[i]`` its label.

    Args:
        data_dir: folder holding the split directory.
        out: local folder or URI (``s3://bucket/imagenet``) receiving ``<split>/``.
        split: the split directory to write (``train``, ``val`` ...).
        num_workers: LitData worker processes (default: LitData's, the CPU count).
        chunk_bytes: chunk size, e.g. ``"64MB"``.
        on_bad_image: ``"skip"`` (unreadable files are left out, named in the manifest and
            in one :class:`~ssl_cropmix.data.datasets.BadImageWarning`) or ``"raise"``.
        max_pixels: as the loaders' ``max_image_pixels``.
        verbose: LitData's progress bar and summary.
        start_method: worker start method (``"fork"``, ``"spawn"``; default: LitData's).

    Returns:
        The manifest written next to the shards (``classes``, ``targets``, ``bad_files`` ...).

    Raises:
        FileNotFoundError: the split folder is missing or has no class folders.
        ValueError: invalid arguments, or no readable image at all.
    """
    litdata = require_litdata()
    _check_policy(on_bad_image)
    check_int("num_workers", num_workers, 1, optional=True)
    root = Path(data_dir) / split
    src = ImageFolderDataset(root, on_bad_image=on_bad_image, max_pixels=max_pixels)
    inputs = [(i, p, t) for i, (p, t) in enumerate(src.samples)]
    output_dir = join_uri(out, split)
    with tempfile.TemporaryDirectory(prefix="ssl_cropmix_optimize_") as bad_dir:
        fn = functools.partial(_encode, classes=list(src.classes), max_pixels=max_pixels,
                               on_bad_image=on_bad_image, bad_dir=bad_dir)
        bad: dict[int, tuple[str, str]] = {}
        # litdata.optimize sets the process-wide start method (spawn, force=True): put it back,
        # so the DataLoader workers of whatever runs next in this process start as before
        previous = multiprocessing.get_start_method(allow_none=True)
        try:
            litdata.optimize(
                fn=fn, inputs=inputs, output_dir=output_dir, chunk_bytes=chunk_bytes,
                num_workers=min(num_workers or os.cpu_count() or 1, len(inputs)),
                reorder_files=False, keep_data_ordered=True, mode="overwrite", verbose=verbose,
                start_method=start_method,
            )
        finally:
            multiprocessing.set_start_method(previous, force=True)
            for name in os.listdir(bad_dir):
                for line in Path(bad_dir, name).read_text().splitlines():
                    i, path, msg = line.split("\t", 2)
                    bad[int(i)] = (path, msg)
    if len(bad) == len(inputs):
        raise ValueError(f"none of the {len(inputs)} images under {str(root)!r} is readable")
    targets = [t for i, _, t in inputs if i not in bad]
    try:
        written = len(litdata.StreamingDataset(output_dir))
    except AssertionError:  # LitData's "No chunks found"
        written = 0
    if written != len(targets):  # e.g. a worker that died: LitData then writes fewer chunks
        raise RuntimeError(f"litdata.optimize wrote {written} samples to {output_dir!r}, expected {len(targets)} "
                           f"({len(inputs)} files, {len(bad)} unreadable)")
    manifest = {
        "format": MANIFEST_FORMAT,
        "source": str(root),
        "split": split,
        "classes": list(src.classes),
        "num_samples": len(targets),
        "targets": targets,
        "skipped": len(bad),
        "bad_files": [{"path": p, "error": m} for _, (p, m) in sorted(bad.items())],
    }
    _write_text(join_uri(output_dir, MANIFEST), json.dumps(manifest))
    if bad:
        shown = ", ".join(p for _, (p, _m) in sorted(bad.items())[:5]) + (" ..." if len(bad) > 5 else "")
        warnings.warn(f"{len(bad)} unreadable image(s) under {str(root)!r} left out of the shards "
                      f"(listed in {join_uri(output_dir, MANIFEST)}): {shown}", BadImageWarning, stacklevel=2)
    return manifest


def read_manifest(uri: str) -> dict[str, Any]:
    """The :data:`MANIFEST` of a split written by :func:`optimize_image_folder`.

    Raises:
        FileNotFoundError: no manifest there (not written by ``ssl-cropmix optimize``).
        ValueError: another format.
    """
    path = join_uri(uri, MANIFEST)
    try:
        manifest = json.loads(_read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no {MANIFEST} in {uri!r}: shards are read from a split folder written by "
            "`ssl-cropmix optimize --data-dir <ImageFolder> --out <dir> --split <split>`"
        ) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path!r} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    return manifest


# --------------------------------------------------------------------------- reading
def decode_sample(item: dict[str, Any], where: str = "shards") -> tuple[Image.Image, int]:
    """``(RGB PIL image, label)`` of a stored sample (the loaders' :func:`to_rgb`).

    Raises:
        BadImageError: the stored bytes do not decode (damaged shards), naming the sample.
    """
    try:
        img = Image.open(io.BytesIO(item["image"]))
        img.load()
    except _DECODE_ERRORS as e:
        raise BadImageError(f"cannot decode sample index={item.get('index')} of {where} "
                            f"({type(e).__name__}: {e}): the shards are damaged") from e
    return to_rgb(img, in_place=True), int(item["label"])


class _DecodeView:
    """LitData item transform: stored sample -> ``(view(image), label)``."""

    def __init__(self, view: Callable[[Any], Any] | None, where: str) -> None:
        self.view = view
        self.where = where

    def __call__(self, item: dict[str, Any]) -> tuple[Any, int]:
        img, label = decode_sample(item, self.where)
        return (self.view(img) if self.view is not None else img), label


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentations: a 63-bit hash of ``(seed, epoch, index)``.

    Args:
        seed: the loader's seed (from ``seed_everything``; restored from a checkpoint on resume).
        epoch: LitData's epoch counter of the dataset.
        index: the sample's index in the shards (global, the same on every rank).
    """
    digest = hashlib.blake2b(f"{int(seed)}:{int(epoch)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def __getattr__(name: str) -> Any:
    """``StreamingImages`` is built on first use (litdata is optional) yet importable by name, so
    pickle finds it in a spawned / forkserver DataLoader worker (Python 3.14's default)."""
    if name == "StreamingImages":
        return _streaming_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _streaming_dataset_class() -> type:
    litdata = require_litdata()

    class StreamingImages(litdata.StreamingDataset):
        """``StreamingDataset`` that resumes exactly.

        * The shuffle seed comes from the saved state (a resumed run continues the same order
          even if the new process seeded differently).
        * Each sample's view is drawn with torch's CPU RNG seeded by :func:`sample_seed` of
          (seed, epoch, sample index), its previous state restored afterwards (what
          ``torch.random.fork_rng`` does, 25x cheaper): a sample's augmentations do
          not depend on which worker or rank reads it or when, and reading never moves the
          global RNG. So a batch Lightning prefetches before a step checkpoint (with
          ``num_workers=0`` it is loaded in the training process) leaves the checkpoint's RNG
          state as it was, and a resumed fit gives the uninterrupted fit's losses exactly.
        """

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if "seed" in state_dict:
                self.seed = state_dict["seed"]
            super().load_state_dict(state_dict)

        def __getitem__(self, index: Any) -> Any:
            sample = getattr(index, "index", index)
            if not isinstance(sample, int) or getattr(self, "transform", None) is None:
                return super().__getitem__(index)
            rng = torch.default_generator  # the views run on the CPU; 3 us, not fork_rng's 80
            state = rng.get_state()
            rng.manual_seed(sample_seed(self.seed, self.current_epoch, sample))
            try:
                return super().__getitem__(index)
            finally:
                rng.set_state(state)

    StreamingImages.__module__ = __name__
    StreamingImages.__qualname__ = "StreamingImages"
    return StreamingImages


class StreamingShards(_Source):
    """A split written by :func:`optimize_image_folder`, read with LitData.

    Args:
        uri: the split folder (local path or URI), holding the chunks and :data:`MANIFEST`.
        cache_dir: where LitData caches remote chunks (default: LitData's).
        max_cache_size: LitData's cache limit for remote chunks.

    Attributes:
        classes: class names (the index is the label).
        targets: label of every stored sample, in shard order.
        optimize_skipped: files left out when the shards were written (names in the manifest).
    """

    def __init__(self, uri: str | os.PathLike, cache_dir: str | None = None, max_cache_size: str = "50GB") -> None:
        require_litdata()
        self.uri = str(uri)
        manifest = read_manifest(self.uri)
        self.classes = list(manifest["classes"])
        self.targets = [int(t) for t in manifest["targets"]]
        self.optimize_skipped = int(manifest.get("skipped", 0))
        self.on_bad_image = "raise"  # applied by optimize: stored samples all decoded once
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self._init_counters(len(self.targets))

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_random_access", None)  # rebuilt per process (LitData readers hold threads)
        return state

    def describe(self, index: int) -> str:
        return f"{self.uri}[{index}]"

    def streaming_dataset(self, view: Callable[[Any], Any] | None = None, indices: Sequence[int] | None = None,
                          shuffle: bool = False, seed: int = 0) -> Any:
        """A ``StreamingDataset`` yielding ``(view(image), label)``; ``indices``: a subset of
        sample indices (label fractions), through LitData's ``subset``."""
        cls = _streaming_dataset_class()
        kw: dict[str, Any] = {"max_cache_size": self.max_cache_size}
        if self.cache_dir is not None:
            kw["cache_dir"] = self.cache_dir
        ds = cls(self.uri, shuffle=shuffle, seed=int(seed), transform=_DecodeView(view, self.uri), **kw)
        total = sum(end - start for start, end in ds.region_of_interest)  # all ranks' (len() is per rank)
        if total != len(self.targets):
            raise ValueError(f"{self.uri!r} holds {total} samples but its {MANIFEST} lists {len(self.targets)}: "
                             "the shards and the manifest come from different optimize runs")
        if indices is not None:
            ds = ds.subset(list(indices))
        return ds

    def loader(self, view: Callable[[Any], Any] | None, batch_size: int, *, indices: Sequence[int] | None = None,
               shuffle: bool = False, seed: int = 0, drop_last: bool | None = None, num_workers: int = 0,
               collate_fn: Callable | None = None, **kwargs: Any) -> Any:
        """A ``litdata.StreamingDataLoader`` over :meth:`streaming_dataset`. ``drop_last``
        ``None``: LitData's (equal sample counts on every rank under DDP); ``kwargs`` go to
        ``torch.utils.data.DataLoader`` (``pin_memory``, ``persistent_workers`` ...; its
        ``generator`` defaults to one seeded with ``seed``, so starting an iterator leaves
        torch's global RNG alone)."""
        from litdata import StreamingDataLoader

        ds = self.streaming_dataset(view, indices, shuffle, seed)
        # the DataLoader draws its workers' base seed when an iterator starts; from its own
        # generator, not torch's global RNG, which a resumed fit has just restored
        kwargs.setdefault("generator", torch.Generator().manual_seed(int(seed)))
        return StreamingDataLoader(ds, batch_size=batch_size, num_workers=num_workers, shuffle=shuffle,
                                   drop_last=drop_last, collate_fn=collate_fn, **kwargs)

    def load(self, index: int, direct: bool = True) -> tuple[Image.Image, int]:
        """Random access to sample ``index`` (LitData downloads / caches its chunk)."""
        ds = self.__dict__.get("_random_access")
        if ds is None:
            ds = self._random_access = self.streaming_dataset(None)
        return ds[int(index)]


def optimize_main(argv: list[str]) -> int:
    """``ssl-cropmix optimize --data-dir IMAGEFOLDER --out DIR_OR_URI [--split train]``."""
    import argparse

    p = argparse.ArgumentParser(prog="ssl-cropmix optimize", description="Write an ImageFolder split as LitData "
                                "shards (+ manifest: class index, targets, skipped files) for ShardsSource(uri).")
    p.add_argument("--data-dir", required=True, help="folder holding <split>/<class>/<images>")
    p.add_argument("--out", required=True, help="local folder or URI; the shards go to <out>/<split>")
    p.add_argument("--split", default="train")
    p.add_argument("--num-workers", type=int, default=None)
    p.add_argument("--chunk-bytes", default="64MB")
    p.add_argument("--on-bad-image", choices=["skip", "raise"], default="skip")
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    a = p.parse_args(argv)
    m = optimize_image_folder(a.data_dir, a.out, a.split, a.num_workers, a.chunk_bytes, a.on_bad_image,
                              a.max_image_pixels)
    print(f"{m['num_samples']} samples, {len(m['classes'])} classes, {m['skipped']} skipped -> "
          f"{join_uri(a.out, a.split)}")
    return 0
