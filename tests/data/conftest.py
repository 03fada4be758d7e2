"""Fixtures for tests/data: image trees made at test time (see data_fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_fixtures import make_tree, write_bad_kinds


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Clean ImageFolder split: 3 classes with 6/5/4 RGB JPEGs (40-52 px)."""
    return make_tree(tmp_path / "train")


@pytest.fixture
def bad_tree(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Split with a clean class and a class holding every odd mode and bad kind, plus notes.txt."""
    root = make_tree(tmp_path / "train", classes=("clean",), per_class=(4,))
    kinds = write_bad_kinds(root / "odd")
    (root / "odd" / "notes.txt").write_text("not an image, wrong extension\n")
    return root, kinds
