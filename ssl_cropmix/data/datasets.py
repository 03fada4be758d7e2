"""Datasets: ImageFolder trees with robust loading, torchvision sources and label fractions.

Every source here has the same small interface (``classes``, ``targets``, ``__len__`` and
``load(i) -> (PIL RGB image, label) | None``), and :class:`ViewDataset` applies a transform to
any subset of it. One scanned folder therefore serves the pretraining views, the labelled
probe views and the 1 % / 10 % subsets without scanning twice.

Bad input is never silent (a skipped image would otherwise bias a run unnoticed): a file
that cannot be decoded (corrupt, truncated, not an image at all) is either skipped, with a
:class:`BadImageWarning` naming it once, or raises :class:`BadImageError`, as the user
chose with ``on_bad_image``. Skips are counted in shared
memory, so counts made inside DataLoader worker processes are visible in the main process
(:attr:`ImageFolderDataset.skipped`, read each epoch by
:class:`ssl_cropmix.data.datamodule.BadImageCounter`). A skip is counted when the file's own
index is requested (once per file per pass over the data), not when it is met again while
looking for a replacement, so the count is a number of files. Losses that bias a run (a
whole class unreadable, or more than :data:`MAX_UNREADABLE_SHARE` of a split) are reported
by :meth:`_Source.unreadable_report`, which ``callbacks.summary.RunSummary`` turns into an
:class:`UnreadableDataWarning` at the end of every such epoch and repeats in the run summary.

What each kind of input becomes (``on_bad_image="skip"``; ``"raise"`` raises
:class:`BadImageError` naming the file instead of every skip):

=============================================  ===============================================
input                                          behaviour
=============================================  ===============================================
``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``        converted to RGB (PIL ``convert``)
``RGBA``, ``LA``, ``PA``, ``P`` + transparency  composited onto :data:`ALPHA_BACKGROUND`
``I;16*`` / ``I``                              scaled ``v / 257`` to 8 bit, then RGB
``F`` (float)                                  [0, 1] if its max <= 1, else [0, 255]; RGB
EXIF orientation                               applied (upright)
WebP, progressive JPEG, upper-case extension    read like any other image
1x1, 3x2000 ...                                read (the views resize them)
zero-byte, truncated, random bytes, text        named, counted skip (decode error)
more than ``max_pixels`` pixels (header)        named, counted skip, never decoded
FIFO, socket, device named ``*.jpg``            named, counted skip (not a regular file;
                                               never opened, so never blocks)
dangling symlink                                named, counted skip (file not found)
directory named ``x.jpg``                       a folder: walked, not a sample
directory symlink loop / link to a scanned dir  not followed twice; one warning names it
hidden files, other extensions                  ignored with one warning listing them
=============================================  ===============================================
"""

from __future__ import annotations

import math
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ssl_cropmix.validation import check_int  # noqa: F401 (re-exported: its old home)

IMG_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)
#: Default pixel limit (width x height) of one image: PIL's own ``Image.MAX_IMAGE_PIXELS``
#: warning threshold, 89.5 Mpx (a 9459 x 9459 image; ~0.27 GB as RGB). Files above it are
#: skipped from their header, before any decoding (a 140 KB PNG can claim 12000 x 12000).
#: Raise it with ``max_pixels=`` (PIL itself still refuses more than twice its own limit).
DEFAULT_MAX_PIXELS: int = 89_478_485
#: Colour that transparent pixels (RGBA, LA, palette with transparency) are composited onto.
ALPHA_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
BadImagePolicy = Literal["skip", "raise"]


class BadImageWarning(UserWarning):
    """A file in the dataset could not be read as an image and was skipped."""


class UnreadableDataWarning(BadImageWarning):
    """A whole class, or more than :data:`MAX_UNREADABLE_SHARE` of a split, was unreadable in an
    epoch: its samples were replaced by other images, which biases the run."""


#: Share of a split's files that may be unreadable (skipped and replaced) before the epoch
#: ends with an :class:`UnreadableDataWarning` (a whole unreadable class always warns): 1 %.
#: Below it a few corrupt files in a large set (ImageNet ships some) are logged per file only.
MAX_UNREADABLE_SHARE: float = 0.01


class MissingClassWarning(UserWarning):
    """A split has no folder for some classes of the training split (they are not evaluated)."""


class BadImageError(OSError):
    """A file in the dataset could not be read as an image (``on_bad_image="raise"``)."""


class ImageTooLargeError(ValueError):
    """An image's header claims more pixels than the limit; it is not decoded."""


class NotARegularFileError(OSError):
    """A path with an image extension is not a regular file (FIFO, socket, device ...)."""


def _check_policy(on_bad_image: str) -> None:
    if on_bad_image not in ("skip", "raise"):
        raise ValueError(f"on_bad_image must be 'skip' or 'raise', got {on_bad_image!r}")


# --------------------------------------------------------------------------- image decoding
def to_rgb(img: Image.Image, in_place: bool = False) -> Image.Image:
    """Convert any PIL image to 8-bit RGB, the way a viewer would display it.

    * EXIF orientation is applied (``ImageOps.exif_transpose``), so rotated phone photos
      come out upright.
    * 16/32-bit integer greyscale (``I;16*``, ``I``) is scaled to 8 bit by ``v / 257``
      (65535 -> 255) instead of PIL's clipping ``convert("L")``; ``F`` (float) images are
      taken as [0, 1] when their maximum is <= 1, else as [0, 255].
    * Transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent index) is
      composited onto :data:`ALPHA_BACKGROUND` instead of exposing whatever colour the
      fully transparent pixels happen to store.
    * ``L``, ``1``, ``P``, ``CMYK``, ``YCbCr`` ... go through PIL's ``convert("RGB")``.

    ``in_place=True`` (for an image the caller owns, e.g. just decoded) rotates ``img``
    itself; otherwise ``exif_transpose`` returns a copy, which costs a full image copy on
    every load even when there is nothing to rotate.
    """
    try:
        if in_place:
            ImageOps.exif_transpose(img, in_place=True)
        else:
            img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not lose an otherwise fine image
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        a = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        scale = 255.0 if a.size and np.nanmax(a) <= 1.0 else 1.0
        a = np.clip(np.rint(np.nan_to_num(a) * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert an image file to RGB (:func:`to_rgb`).

    Only regular files are read (a FIFO named ``x.jpg`` is opened non-blocking and refused;
    a plain ``open`` would wait forever for a writer), and the size in the header is checked
    against ``max_pixels`` before decoding.

    Raises:
        NotARegularFileError: ``path`` is a FIFO, socket, device, ...
        ImageTooLargeError: width x height > ``max_pixels``.
        OSError / ValueError / SyntaxError: whatever PIL raises for unreadable, truncated
            or non-image files (callers map these to :class:`BadImageError`).
    """
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; the fstat
    # then refuses it (for regular files the flag changes nothing)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFileError(f"not a regular file (mode {stat.filemode(st.st_mode)})")
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        pil_max = Image.MAX_IMAGE_PIXELS
        if pil_max is not None and (max_pixels is None or max_pixels > pil_max):
            with warnings.catch_warnings():  # our limit is above PIL's: its warning would be spurious
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(f)
        else:  # PIL warns only about images that are refused just below
            img = Image.open(f)
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageTooLargeError(
                f"{w}x{h} = {w * h} pixels ({w * h / 1e6:.1f} Mpx) is above max_pixels={max_pixels} (not decoded)"
            )
        img.load()  # decode now, inside the caller's error handling (truncated files raise)
        return to_rgb(img, in_place=True)  # freshly decoded: ours to rotate


_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError,
    Image.DecompressionBombWarning,  # raised when warnings are errors (-W error)
)


# --------------------------------------------------------------------------- sources
class _Source:
    """Common base: ``classes``, ``targets``, ``load(i)`` and shared skip counters."""

    classes: list[str]
    targets: list[int]
    on_bad_image: str

    def _init_counters(self, n: int) -> None:
        # Per-sample skip counts in shared memory: a count is only incremented when the
        # sample's own index is requested, which one worker does once per epoch, so
        # increments do not race, and the main process sees the workers' counts. ``_bad``
        # marks files known unreadable (also when met as a replacement): idempotent writes.
        self._skips = torch.zeros(max(n, 1), dtype=torch.int32).share_memory_()
        self._bad = torch.zeros(max(n, 1), dtype=torch.uint8).share_memory_()

    def _skip_counts(self) -> np.ndarray:
        """NumPy view of the shared counts, made once per process: indexing the tensor costs
        several µs per image, a NumPy element a fraction of one."""
        view = self.__dict__.get("_skips_np")
        if view is None:
            view = self._skips_np = self._skips.numpy()
        return view

    def _bad_flags(self) -> np.ndarray:
        view = self.__dict__.get("_bad_np")
        if view is None:
            view = self._bad_np = self._bad.numpy()
        return view

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_skips_np", None)  # would pickle as a copy; workers rebuild it from _skips
        state.pop("_bad_np", None)
        return state

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def skipped(self) -> int:
        """Skips so far (all processes, all epochs): each unreadable file counts once per
        request of its own index (once per pass over the data)."""
        return int(self._skips.sum())

    @property
    def bad_files(self) -> list[str]:
        """Names of the files found unreadable so far (each once)."""
        return [self.describe(i) for i in torch.nonzero(self._skips).flatten().tolist()]

    def describe(self, index: int) -> str:
        return f"{type(self).__name__}[{index}]"

    @property
    def bad_mask(self) -> torch.Tensor:
        """``(len(self),)`` bool: files found unreadable so far, in any process of this rank
        (the shared flags DataLoader workers write)."""
        return self._bad[: len(self.targets)].bool()

    def unreadable_report(self, max_share: float = MAX_UNREADABLE_SHARE, bad: torch.Tensor | None = None) -> list[str]:
        """What an epoch lost, in words: each class whose files were all found unreadable
        (``"class 'c': all 4 images unreadable"``) and the whole split when more than
        ``max_share`` of its files were. Empty when nothing is above the limits.

        Args:
            max_share: share of the split's files above which the split is reported.
            bad: ``(len(self),)`` bool flags to judge (e.g. :attr:`bad_mask` gathered over
                ranks); default this rank's :attr:`bad_mask`.
        """
        n = len(self.targets)
        if n == 0:
            return []
        bad = (self.bad_mask if bad is None else bad).cpu().numpy().astype(bool)
        total = int(bad.sum())
        if total == 0:
            return []
        targets = np.asarray(self.targets)
        known = targets >= 0  # STL-10 'unlabeled' is -1
        per_class = np.bincount(targets[known], minlength=self.num_classes)
        bad_per_class = np.bincount(targets[known & bad], minlength=self.num_classes)
        out = [
            f"class {self.classes[c]!r}: all {int(per_class[c])} images unreadable"
            for c in range(self.num_classes)
            if per_class[c] > 0 and bad_per_class[c] == per_class[c]
        ]
        if total > max_share * n:
            out.append(f"{total} of {n} images ({100 * total / n:.1f} %) unreadable, above the "
                       f"{100 * max_share:g} % limit (datasets.MAX_UNREADABLE_SHARE)")
        return out

    def load(self, index: int, direct: bool = True) -> tuple[Image.Image, int] | None:  # pragma: no cover
        raise NotImplementedError


class ImageFolderDataset(_Source, Dataset):
    """An ImageFolder tree ``root/<class>/**/<image>`` (ImageNet train/val layout included).

    Classes are the sorted sub-directory names (as in ``torchvision.datasets.ImageFolder``);
    files are found recursively. Hidden files and files whose extension is not in
    :data:`IMG_EXTENSIONS` are ignored with one :class:`BadImageWarning` listing them.
    Files with an image extension that cannot be decoded are handled by ``on_bad_image``.

    Args:
        root: the split directory (e.g. ``imagenet/train``).
        transform: applied to the RGB PIL image; ``None`` returns the PIL image.
        on_bad_image: ``"skip"`` (warn once naming the file, count the skip, return the
            next readable sample of the same dataset) or ``"raise"`` (:class:`BadImageError`).
        extensions: accepted (lower-case) file extensions.
        max_pixels: images whose header claims more pixels are skipped (or raise) without
            being decoded; ``None``: no limit of ours (:data:`DEFAULT_MAX_PIXELS`).
        classes: the class index to label with, e.g. the training split's ``classes`` for a
            validation split (one class index for a dataset: ``val/{a,c}`` must label ``c`` as
            train's ``c``, not as its own second folder). ``None``: this folder's sorted
            sub-directories. A folder here that is not in ``classes`` is an error naming it;
            a class of ``classes`` with no folder here gets one :class:`MissingClassWarning`.

    Raises:
        FileNotFoundError: ``root`` missing, no class directories, or classes without images
            (the message lists them).
        ValueError: ``max_pixels`` not a positive int or None; a class folder not in ``classes``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Image.Image], Any] | None = None,
        on_bad_image: BadImagePolicy = "skip",
        extensions: Sequence[str] = IMG_EXTENSIONS,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        classes: Sequence[str] | None = None,
    ) -> None:
        _check_policy(on_bad_image)
        self.max_pixels = check_int("max_pixels", max_pixels, 1, optional=True)
        self.root = Path(root)
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.classes, self.samples, ignored, revisits = scan_image_folder(self.root, extensions, classes)
        self.targets = [t for _, t in self.samples]
        self.ignored_files = ignored
        self.revisited_dirs = revisits
        if ignored:
            shown = ", ".join(ignored[:5]) + (" ..." if len(ignored) > 5 else "")
            warnings.warn(
                f"{len(ignored)} non-image file(s) ignored under {str(self.root)!r}: {shown}",
                BadImageWarning,
                stacklevel=2,
            )
        if revisits:
            shown = ", ".join(revisits[:5]) + (" ..." if len(revisits) > 5 else "")
            warnings.warn(
                f"{len(revisits)} directory link(s) under {str(self.root)!r} lead to a folder already "
                f"scanned (symlink loop or duplicate) and were not followed: {shown}",
                BadImageWarning,
                stacklevel=2,
            )
        self._init_counters(len(self.samples))

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def load(self, index: int, direct: bool = True) -> tuple[Image.Image, int] | None:
        """Decode sample ``index``; ``None`` when it is unreadable and the policy is "skip".

        ``direct=False`` (looking for a replacement of another sample): a failure marks the
        file bad but is neither counted nor named; that happens when its own index is asked for.
        """
        path, target = self.samples[index]
        bad = self._bad_flags()
        skips = self._skip_counts()
        if bad[index] and (not direct or skips[index] > 0):  # known bad, already named
            if direct:
                skips[index] += 1
            return None
        # unknown, or known bad (met as a replacement) but not named yet: read it (again)
        try:
            return load_rgb(path, self.max_pixels), target
        except _DECODE_ERRORS as e:
            if self.on_bad_image == "raise":
                raise BadImageError(f"cannot read image {path!r}: {type(e).__name__}: {e}") from e
            bad[index] = 1
            if direct:  # named and counted once, by the one worker that asks for this index
                skips[index] += 1
                warnings.warn(
                    f"skipping unreadable image {path!r} ({type(e).__name__}: {e})",
                    BadImageWarning,
                    stacklevel=2,
                )
            return None

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return _get_with_skip(self, range(len(self)), index, self.transform)


def visible_subdirs(root: str | os.PathLike) -> list[str]:
    """Sorted names of ``root``'s sub-folders, hidden ones (``.name``) excluded: the class
    folders of a split, or the splits of a data directory."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def scan_image_folder(
    root: Path, extensions: Sequence[str] = IMG_EXTENSIONS, classes: Sequence[str] | None = None,
) -> tuple[list[str], list[tuple[str, int]], list[str], list[str]]:
    """Return ``(classes, samples, ignored, revisits)`` of an ImageFolder tree (sorted, recursive).

    Directory symlinks are followed, but a folder is scanned once: a link back to a folder
    already scanned (a loop, or a second link to the same folder) is not followed; such
    links are listed in ``revisits``.

    Args:
        root: the split directory.
        extensions: accepted (lower-case) file extensions.
        classes: the class index to label with (another split's); ``None``: ``root``'s own
            sorted sub-directories. Returned as given.

    Raises:
        FileNotFoundError: ``root`` is missing, has no class folders, or some class folders
            hold no image files (the first few are listed).
        ValueError: a class folder of ``root`` is not in ``classes`` (named).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    found_dirs = visible_subdirs(root)
    if not found_dirs:
        raise FileNotFoundError(
            f"image folder {str(root)!r} has no class sub-directories: expected "
            f"{str(root)}/<class>/<image files> (ImageFolder layout)"
        )
    index = {c: i for i, c in enumerate(found_dirs)}
    if classes is not None:
        classes = list(classes)
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in found_dirs if c not in index]
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise ValueError(
                f"{str(root)!r} has {len(unknown)} class folder(s) that the training split does not have: "
                f"{shown}; its labels would not match the training classes ({len(classes)}: "
                f"{', '.join(classes[:5])}{' ...' if len(classes) > 5 else ''}); remove them or add them to "
                "the training split"
            )
        absent = [c for c in classes if c not in set(found_dirs)]
        if absent:
            shown = ", ".join(repr(c) for c in absent[:5]) + (" ..." if len(absent) > 5 else "")
            warnings.warn(
                f"{str(root)!r} has no folder for {len(absent)} of the {len(classes)} training classes: {shown}; "
                "those classes are not evaluated",
                MissingClassWarning,
                stacklevel=3,
            )
    else:
        classes = found_dirs
    exts = tuple(e.lower() for e in extensions)
    samples: list[tuple[str, int]] = []
    ignored: list[str] = []
    empty: list[str] = []
    revisits: list[str] = []
    for cls in found_dirs:
        target = index[cls]
        found = 0
        seen = {os.path.realpath(root / cls)}  # per class: loops and duplicate links inside it
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            keep = []
            here = os.path.realpath(dirpath) + os.sep
            for d in sorted(d for d in dirnames if not d.startswith(".")):
                real = os.path.realpath(os.path.join(dirpath, d))
                if real in seen or here.startswith(real + os.sep):  # scanned, or an ancestor: a loop
                    revisits.append(os.path.join(dirpath, d))
                    continue
                seen.add(real)
                keep.append(d)
            dirnames[:] = keep
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                if name.startswith(".") or not name.lower().endswith(exts):
                    ignored.append(p)
                    continue
                samples.append((p, target))
                found += 1
        if found == 0:
            empty.append(cls)
    if empty:
        shown = ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise FileNotFoundError(
            f"{len(empty)} class folder(s) under {str(root)!r} contain no image files "
            f"(extensions {', '.join(exts)}): {shown}"
        )
    return classes, samples, ignored, revisits


class TorchvisionSplit(_Source):
    """Adapter giving a torchvision dataset (CIFAR-10/100, STL-10) the source interface.

    The wrapped dataset must have ``transform=None`` and return ``(PIL image, int)``.
    """

    def __init__(self, dataset: Any, classes: Sequence[str] | None = None) -> None:
        self.dataset = dataset
        self.on_bad_image = "raise"
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = getattr(dataset, "labels", None)
        self.targets = [int(t) for t in targets]
        self.classes = list(classes if classes is not None else dataset.classes)
        self._init_counters(len(self.targets))

    def load(self, index: int, direct: bool = True) -> tuple[Image.Image, int]:
        img, target = self.dataset[index]
        return to_rgb(img), int(target)


# --------------------------------------------------------------------------- views
def _get_with_skip(
    source: _Source, indices: Sequence[int], j: int, transform: Callable | None
) -> tuple[Any, int]:
    """Sample ``indices[j]``; if unreadable, the next readable one (cyclically) of ``indices``.

    Replacing within ``indices`` keeps a label-fraction subset closed (no label leaks in).
    """
    n = len(indices)
    for k in range(n):
        item = source.load(indices[(j + k) % n], direct=k == 0)
        if item is not None:
            img, target = item
            return (transform(img) if transform is not None else img), target
    raise BadImageError(f"none of the {n} images of {source.describe(indices[0])!r}'s dataset is readable")


class ViewDataset(Dataset):
    """A subset of a source with its own transform: ``(transform(image), label)``.

    Args:
        source: a split reader (:class:`ImageFolderDataset`, :class:`TorchvisionSplit`, ...).
        transform: applied to the RGB PIL image (e.g. a view recipe from ``views.py``).
        indices: sample indices into ``source``; ``None`` means all.
    """

    def __init__(
        self, source: _Source, transform: Callable | None = None, indices: Sequence[int] | None = None
    ) -> None:
        self.source = source
        self.transform = transform
        self.indices = list(range(len(source))) if indices is None else list(indices)
        if not self.indices:
            raise ValueError("indices must not be empty")

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> list[int]:
        return [self.source.targets[i] for i in self.indices]

    def __getitem__(self, j: int) -> tuple[Any, int]:
        return _get_with_skip(self.source, self.indices, j, self.transform)


# --------------------------------------------------------------------------- label fractions
def per_class_count(n_images: int, fraction: float) -> int:
    """Images kept from a class of ``n_images`` at ``fraction``: ``max(1, floor(f*n + 0.5))``.

    Rounding is half-up (not banker's rounding) and every non-empty class keeps at least
    one image, so ImageNet at 1 % keeps 12-13 images per class (~12.8k in total, the size
    of SimCLR's ``1percent.txt``).
    """
    return min(n_images, max(1, math.floor(fraction * n_images + 0.5)))


def label_fraction_indices(
    targets: Sequence[int], fraction: float, seed: int = 0, num_classes: int | None = None
) -> list[int]:
    """Seeded class-balanced subset: :func:`per_class_count` random images of every class.

    Args:
        targets: class index of each sample.
        fraction: in (0, 1].
        seed: seeds a private ``torch.Generator`` (independent of the global RNG).
        num_classes: when given, a class with no images raises (it would stay empty).

    Returns:
        Sorted sample indices.

    Raises:
        ValueError: fraction outside (0, 1], or an empty class.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"label_fraction must be in (0, 1], got {fraction!r}")
    t = torch.as_tensor(list(targets), dtype=torch.long)
    n_cls = int(num_classes) if num_classes is not None else (int(t.max()) + 1 if len(t) else 0)
    g = torch.Generator().manual_seed(int(seed))
    keep: list[torch.Tensor] = []
    empty = []
    # one stable sort groups the indices by class (ascending within a class, as a per-class
    # scan would give) instead of one pass over all targets per class
    counts = torch.bincount(t, minlength=n_cls).tolist() if len(t) else [0] * n_cls
    by_class = torch.argsort(t, stable=True).split(counts) if len(t) else [t] * n_cls
    for c, idx in enumerate(by_class[:n_cls]):
        if len(idx) == 0:
            empty.append(c)
            continue
        k = per_class_count(len(idx), float(fraction))
        keep.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    if empty:
        raise ValueError(f"classes {empty[:10]} have no images, so no label fraction can cover them")
    return sorted(torch.cat(keep).tolist()) if keep else []


def read_subset_file(path: str | os.PathLike) -> list[str]:
    """Names listed in a SimCLR-style subset file (one file name per line, blanks ignored)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"subset_file {str(p)!r} does not exist")
    names = [ln.strip() for ln in p.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"subset_file {str(p)!r} lists no file names")
    return names


def subset_from_list(
    source: ImageFolderDataset, names: Sequence[str], list_name: str = "subset list"
) -> list[int]:
    """Indices of the files named in a SimCLR-style list (``1percent.txt``/``10percent.txt``).

    An entry is a bare file name (``n01440764_10026.JPEG``) or a path relative to the split
    root (``n01440764/n01440764_10026.JPEG``). A bare name found in several class folders
    is resolved by its class prefix (before ``_``); if that does not single one out, the
    entry is ambiguous and must be given as a path.

    Raises:
        FileNotFoundError: entries that are not in the folder (the first few are listed).
        ValueError: ambiguous bare names, or classes left with zero images by the list.
    """
    root = source.root
    by_rel: dict[str, int] = {}
    by_name: dict[str, list[int]] = {}
    for i, (p, _) in enumerate(source.samples):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        by_rel[rel] = i
        by_name.setdefault(os.path.basename(p), []).append(i)
    chosen: list[int] = []
    missing: list[str] = []
    ambiguous: list[str] = []
    for name in names:
        if "/" in name:
            i = by_rel.get(name)
            hits = [] if i is None else [i]
        else:
            hits = by_name.get(name, [])
            if len(hits) > 1:  # the same file name in several classes: the prefix decides
                prefix = name.split("_", 1)[0]
                hits = [i for i in hits if source.classes[source.targets[i]] == prefix]
                if len(hits) != 1:
                    ambiguous.append(name)
                    continue
        if not hits:
            missing.append(name)
        else:
            chosen.append(hits[0])
    if ambiguous:
        shown = ", ".join(ambiguous[:5]) + (" ..." if len(ambiguous) > 5 else "")
        raise ValueError(
            f"{len(ambiguous)} names in {list_name} match files in several classes under "
            f"{str(root)!r} and their prefix does not pick one; give them as class/file paths: {shown}"
        )
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(names)} files named in {list_name} are not under "
            f"{str(root)!r}: {shown}"
        )
    chosen = sorted(set(chosen))
    present = {source.targets[i] for i in chosen}
    absent = [c for k, c in enumerate(source.classes) if k not in present]
    if absent:
        shown = ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else "")
        raise ValueError(
            f"{len(absent)} class(es) of {str(root)!r} have zero images after sub-setting "
            f"with {list_name}: {shown}"
        )
    return chosen
