"""Copy the CIFAR-10 JPEG archive into the checkout's ``data/`` folder (ignored by git).

``benchmarks/gpu_acceptance.py`` (and ``ssl_cropmix.data.cifar.resolve_cifar10`` when given
``data/``) looks there first, so a checkout copied to an offline node carries its data:

    python tools/stage_data.py /path/to/cifar10-jpeg.tar.gz      # or the folder holding it
    python tools/stage_data.py ../shared/data                      # this project's shared copy

The archive is checked before it is copied (a gzip'd tar holding ``cifar10/train/`` and
``cifar10/test/``); an archive already there with the same size is kept.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE_NAME = "cifar10-jpeg.tar.gz"


def check_archive(path: Path) -> int:
    """Number of JPEG members of the archive at ``path``.

    Raises:
        ValueError: it is not a readable ``.tar.gz`` with ``cifar10/train/`` and ``cifar10/test/``.
    """
    try:
        with tarfile.open(path, "r:gz") as tf:
            names = tf.getnames()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ValueError(f"{path} is not a readable .tar.gz ({type(e).__name__}: {e})") from e
    for split in ("train", "test"):
        if not any(n.startswith(f"cifar10/{split}/") for n in names):
            raise ValueError(f"{path} holds no cifar10/{split}/ folder; expected the CIFAR-10 JPEG archive")
    return sum(n.lower().endswith((".jpg", ".jpeg", ".png")) for n in names)


def stage(source: Path, dest_dir: Path = REPO / "data") -> Path:
    """Copy ``source`` (the archive, or a folder holding it) to ``dest_dir/cifar10-jpeg.tar.gz``."""
    src = source / ARCHIVE_NAME if source.is_dir() else source
    if not src.is_file():
        raise FileNotFoundError(f"no {ARCHIVE_NAME} at {source}")
    images = check_archive(src)
    dest = dest_dir / ARCHIVE_NAME
    dest_dir.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.stat().st_size == src.stat().st_size:
        print(f"stage_data: {dest} already there ({images} images); kept")
        return dest
    tmp = dest.with_suffix(".partial")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
    print(f"stage_data: copied {src} -> {dest} ({dest.stat().st_size / 2**20:.1f} MiB, {images} images)")
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help=f"{ARCHIVE_NAME} or a folder holding it")
    p.add_argument("--dest", default=str(REPO / "data"), help="folder to copy into (default: the checkout's data/)")
    a = p.parse_args(argv)
    try:
        stage(Path(a.source).expanduser(), Path(a.dest))
    except (FileNotFoundError, ValueError) as e:
        print(f"stage_data: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
