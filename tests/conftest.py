"""Shared fixtures: every test is seeded; warnings raised by our own code are errors
(see ``filterwarnings`` in pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Each test starts with the session's torch thread count: a test that calls a script's
    ``main`` (which sets one thread for its process) must not change the float reduction
    order, and so the exact losses, of the tests after it."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
             "LOCAL_WORLD_SIZE", "PL_GLOBAL_SEED", "PL_TRAINER_GPUS")


@pytest.fixture(autouse=True)
def _isolate_distributed_env():
    """Each test starts without the distributed variables an earlier test left behind.

    Lightning's ``ddp_spawn`` writes ``MASTER_PORT`` (and friends) into this process's
    environment; without this, the next DDP test (in-process or a subprocess that copies
    ``os.environ``) reuses that port and can fail with ``EADDRINUSE`` while the old store's
    socket lingers. Restored afterwards, so a variable set outside pytest is kept.
    """
    saved = {k: os.environ.get(k) for k in _DIST_ENV}
    for k in _DIST_ENV:
        os.environ.pop(k, None)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test, restored afterwards.

    Tiny models and tensors: one thread is fastest, and on a loaded shared machine it avoids
    oversubscription and spin-waiting (20x slower convolutions measured with 2 threads).
    Autouse in ``tests/evaluation``; elsewhere ``pytest.mark.usefixtures("one_torch_thread")``.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def cifar10_root() -> Path:
    """Extracted CIFAR-10 JPEG root (train/, test/); skips when the archive is absent."""
    from ssl_cropmix.data.cifar import resolve_cifar10

    src = os.environ.get("SSL_CROPMIX_CIFAR10") or SHARED_DATA
    try:
        return resolve_cifar10(src)
    except FileNotFoundError as e:  # pragma: no cover - depends on the machine
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def demo_photos():
    """A few real colour photos bundled with scikit-image (CC0), as PIL RGB images."""
    from ssl_cropmix.data.demo import demo_images

    return demo_images()
