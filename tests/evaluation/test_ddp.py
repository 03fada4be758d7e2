"""Evaluation under 2-process gloo DDP (CPU): every rank takes part, every rank gets the same
numbers, the numbers equal the single-process ones (kNN), nothing hangs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("LOCAL_RANK", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_fit_with_periodic_and_final_evaluation(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(HERE / "ddp_eval_script.py"), str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Timed out" not in proc.stderr
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert (r0["rank"], r1["rank"]) == (0, 1)  # both ranks ran the whole fit
    assert r0["seconds"] < 90 and r1["seconds"] < 90  # well inside the 90 s collective timeout
    keys = [r["key"] for r in r0["results"]]
    assert keys == ["linear_cached", "linear_cached", "linear", "finetune_50pct"]  # periodic after epoch 1, then fit end
    assert [r["pretrain_epoch"] for r in r0["results"]] == [0, 2, 2, 2]
    for a, b in zip(r0["results"], r1["results"]):
        assert (a["key"], a["top1"], a["top5"], a["val_samples"], a["train_samples"]) == (
            b["key"], b["top1"], b["top5"], b["val_samples"], b["train_samples"])
        # the evaluation ran on the pretraining's hardware: DDP over both processes
        for h in (a["hardware"], b["hardware"]):
            assert h["strategy"] == r0["pretrain"]["strategy"] == "DDPStrategy"
            assert h["world_size"] == r0["pretrain"]["world_size"] == 2
            assert h["accelerator"] == r0["pretrain"]["accelerator"] and h["precision"] == r0["pretrain"]["precision"]
        assert a["val_samples"] == 32  # 32 validation images, each counted once (no sampler padding)
    assert r0["results"][0]["train_samples"] == 100 and "2 rank(s)" in r0["results"][0]["protocol"]
    assert r0["results"][0]["hparams"]["per_device_batch"] == 16  # global 32 over 2 ranks
    assert r0["results"][3]["train_samples"] == 48  # 50 % of 4 x 25, class-balanced (12 per class)
    assert r0["knn"] == r1["knn"] and len(r0["knn"]) == 2
    records = json.loads((tmp_path / "eval_results.json").read_text())  # written once (rank 0)
    assert [r["key"] for r in records] == keys


def test_knn_two_processes_equals_one(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(HERE / "knn_ddp_script.py"), str(_free_port()), str(tmp_path)], env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accs = [json.loads((tmp_path / f"{n}.json").read_text())["acc"] for n in ("r0", "r1", "single")]
    assert accs[0] == accs[1] == accs[2]
    assert 25.0 < accs[2] < 95.0  # overlapping classes: neither chance nor trivially perfect
    # a one-image bank (rank 1's shard empty): every query gets that image's label, on every rank
    tiny = [json.loads((tmp_path / f"{n}.json").read_text())["tiny"] for n in ("r0", "r1", "single")]
    assert tiny[0] == tiny[1] == tiny[2] and 0.0 < tiny[2] < 100.0
