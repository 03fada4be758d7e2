"""Locate (and if needed extract) the CIFAR-10 JPEG archive used by tests and benchmarks.

The archive ``cifar10-jpeg.tar.gz`` (ImageFolder layout ``cifar10/{train,test}/<class>/``)
is never shipped with, or downloaded by, this package. Callers pass a path, or set the
``SSL_CROPMIX_CIFAR10`` environment variable, to either the extracted ``cifar10`` folder,
a folder containing it, or the ``.tar.gz`` itself; archives are extracted once into a
cache directory outside the project (:func:`cache_dir`).
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

ENV_VAR = "SSL_CROPMIX_CIFAR10"
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"
CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)


#: Environment variable naming the package's cache directory (wins over ``$XDG_CACHE_HOME``).
CACHE_ENV = "SSL_CROPMIX_CACHE"


def cache_dir() -> Path:
    """The package's cache: where archives are extracted and built-in data (the demo set) is
    written, never a user's ``data_dir``. ``$SSL_CROPMIX_CACHE``, else
    ``$XDG_CACHE_HOME/ssl_cropmix``, else ``~/.cache/ssl_cropmix`` (created on demand)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = Path(xdg) / "ssl_cropmix" if xdg else Path.home() / ".cache" / "ssl_cropmix"
    return Path(root).expanduser()


def _is_cifar_root(p: Path) -> bool:
    return (p / "train").is_dir() and (p / "test").is_dir()


def resolve_cifar10(path: str | os.PathLike | None = None) -> Path:
    """Return the extracted ``cifar10`` root (holding ``train/`` and ``test/``).

    Args:
        path: the extracted folder, a folder containing ``cifar10/`` or the archive,
            or the archive itself. ``None`` reads ``$SSL_CROPMIX_CIFAR10``.

    Raises:
        FileNotFoundError: when nothing usable is found; the message says what to pass.
    """
    raw = path if path is not None else os.environ.get(ENV_VAR)
    if raw is None:
        raise FileNotFoundError(
            f"CIFAR-10 JPEG data not found: pass a path (e.g. --data-root ../shared/data) or "
            f"set {ENV_VAR} to the folder holding '{ARCHIVE_NAME}' or the extracted 'cifar10/'."
        )
    p = Path(raw).expanduser()
    candidates = [p, p / "cifar10"]
    for c in candidates:
        if c.is_dir() and _is_cifar_root(c):
            return c
    archive = p if p.is_file() else p / ARCHIVE_NAME
    if archive.is_file():
        return _extract(archive)
    raise FileNotFoundError(
        f"CIFAR-10 JPEG data not found at {str(p)!r}: expected a folder with train/ and test/, "
        f"a folder containing 'cifar10/' or '{ARCHIVE_NAME}', or the archive itself."
    )


def _extract(archive: Path) -> Path:
    stat = archive.stat()
    key = hashlib.sha1(f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    dest = cache_dir() / f"cifar10-{key}"
    done = dest / ".complete"
    if not done.exists():
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(tmp, filter="data")
        if dest.exists():  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(dest)
        done.touch()
    root = dest / "cifar10"
    if not _is_cifar_root(root):
        raise FileNotFoundError(f"archive {str(archive)!r} does not contain cifar10/train and cifar10/test")
    return root
