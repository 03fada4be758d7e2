"""Interleaved timing shared by the benchmark scripts (baseline and candidate in one process)."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(
    fns: dict[str, Callable[[], None]], steps: int, repeats: int, warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` times each.

    Every function is warmed up first. In each repeat the functions take turns, and the order
    flips on every repeat, so that drift on a shared machine (thermal state, other jobs) hits
    all of them alike. ``sync`` (e.g. ``torch.cuda.synchronize``) runs around each timed block.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
    return times
