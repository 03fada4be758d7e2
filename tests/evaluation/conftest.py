"""Evaluation tests run tiny models: one torch thread is fastest, and on a loaded shared
machine it avoids oversubscription (20x slower convolutions measured with 2 threads)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
