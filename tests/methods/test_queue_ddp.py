"""The MoCo queue is not a DDP-broadcast buffer, and stays identical on every rank anyway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def test_queue_identical_on_every_rank_without_ddp_broadcast_across_steps_and_resume(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run([sys.executable, str(HERE / "queue_ddp_script.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit1, fit2 = ([json.loads((tmp_path / f"fit{f}_rank{r}.json").read_text()) for r in (0, 1)] for f in (1, 2))
    for r0, r1 in (fit1, fit2):
        # DDP broadcasts the batch-norm statistics from rank 0 but not the queue or its pointer
        assert "queue.queue" not in r0["broadcast"] and "queue.ptr" not in r0["broadcast"]
        assert "backbone.trunk.1.running_mean" in r0["broadcast"]
        # the ranks started from different random queues (see the script): equal from the start, every step
        assert len(r0["queues"]) == 4 and r0["queues"] == r1["queues"]
        assert all(a != b for a, b in zip(r0["queues"], r0["queues"][1:]))  # every step enqueued keys
    assert (fit1[0]["ptr"], fit2[0]["ptr"]) == (3 * 8 % 20, 6 * 8 % 20)  # 8 keys (2 ranks x 4) per step, wrapped
    assert fit2[0]["queues"][0] == fit1[0]["queues"][-1]  # resumed with the saved queue, on both ranks
