"""Preempted runs continue where they stopped, in their own run directory:
``fit --ckpt_path last`` (any launcher, torchrun's restarts included) and Lightning's SLURM
requeue (SIGUSR1 -> ``hpc_ckpt_<n>.ckpt`` -> ``scontrol requeue`` -> the same job id again)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from cli_fixtures import write_tiny_recipe


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_steps(run: Path) -> list[tuple[int, int]]:
    return [(int(r["epoch"]), int(r["step"])) for r in _rows(run) if r.get("train/loss")]


def _fit(argv: list[str], monkeypatch) -> int:
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    return main(["fit", *argv])


def _log_text(capfd, caplog) -> str:
    out = capfd.readouterr()
    return out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSL_CROPMIX_RUN_VERSION", raising=False)
    for var in [v for v in os.environ if v.startswith("SLURM_")]:
        monkeypatch.delenv(var)
    return tmp_path


# ---------------------------------------------------------------------------- the finder
def _fake_ckpt(path: Path, step: int, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"w": torch.zeros(2)}}, path)
    os.utime(path, (mtime, mtime))
    return path


def _fake_run(root: Path, name: str, version: str) -> Path:
    run = root / name / version
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("{}")
    return run


def test_a_last_ckpt_link_counts_as_the_file_it_points_to(tmp_path):
    """The recipes' ``save_last: link``: ``last.ckpt`` is a relative link to the newest
    ``ModelCheckpoint`` file; resuming finds that step, and the run holds one checkpoint."""
    from ssl_cropmix.runs import newest_checkpoint

    run = _fake_run(tmp_path, "exp", "20260101-000000")
    target = _fake_ckpt(run / "checkpoints" / "epoch=7-step=32.ckpt", 32, time.time())
    (run / "checkpoints" / "last.ckpt").symlink_to(target.name)
    latest = newest_checkpoint(run)
    assert latest.step == 32 and latest.candidates == 1
    assert latest.checkpoint.resolve() == target.resolve()


def test_latest_checkpoint_is_the_newest_runs_furthest_checkpoint(tmp_path):
    """Of the experiment's runs, the one written last (not the one with the largest version
    name); in it the highest step, hpc and ModelCheckpoint files alike, ties broken by mtime;
    runs of other experiments, folders without config.yaml and temporary files never count."""
    from ssl_cropmix.runs import latest_checkpoint, newest_checkpoint, run_dir_of_checkpoint

    now = time.time()
    old = _fake_run(tmp_path, "exp", "29990101-000000")  # larger name, older files
    _fake_ckpt(old / "checkpoints" / "last.ckpt", 50, now - 100)
    new = _fake_run(tmp_path, "exp", "20260101-000000")
    _fake_ckpt(new / "checkpoints" / "epoch=0-step=3.ckpt", 3, now - 30)
    hpc = _fake_ckpt(new / "hpc_ckpt_1.ckpt", 4, now - 20)
    _fake_ckpt(new / "checkpoints" / "last.ckpt", 3, now - 10)  # written later, fewer steps
    _fake_ckpt(new / "checkpoints" / ".last.ckpt.x.tmp", 99, now)  # a write in progress
    other = _fake_run(tmp_path, "other", "20270101-000000")
    _fake_ckpt(other / "checkpoints" / "last.ckpt", 9, now)
    _fake_ckpt(tmp_path / "exp" / "stray" / "checkpoints" / "last.ckpt", 9, now)  # no config.yaml

    latest = latest_checkpoint(tmp_path, "exp")
    assert (latest.run, latest.checkpoint, latest.step, latest.candidates) == (new, hpc, 4, 3)
    assert "hpc_ckpt_1.ckpt" in latest.describe() and "step 4" in latest.describe()
    # equal steps: the later written wins
    later = _fake_ckpt(new / "hpc_ckpt_2.ckpt", 4, now - 5)
    assert newest_checkpoint(new).checkpoint == later
    assert latest_checkpoint(tmp_path, "nothing") is None
    # an hpc checkpoint belongs to the run directory it lies in
    assert run_dir_of_checkpoint(hpc) == new
    assert run_dir_of_checkpoint(other / "checkpoints" / "last.ckpt") == other


# ---------------------------------------------------------------------------- --ckpt_path last
def test_ckpt_path_last_continues_the_newest_run_in_place(workdir, monkeypatch, capfd, caplog):
    """``--ckpt_path last`` with no checkpoint yet starts a new run (said once); the same
    command again, to 2 epochs, continues that run directory from its checkpoint: one version,
    the first segment's metric rows kept and the second's appended. A run with a larger
    version name but older checkpoints is left alone."""
    recipe = write_tiny_recipe(workdir)
    argv = ["--config", str(recipe), "--ckpt_path", "last"]
    assert _fit(argv, monkeypatch) == 0
    assert "--ckpt_path last: experiment 'tiny' has no checkpoint" in _log_text(capfd, caplog)
    (run,) = (workdir / "runs" / "tiny").iterdir()
    first = _rows(run)
    assert _train_steps(run) == [(0, 2)]
    decoy = workdir / "runs" / "tiny" / "29990101-000000"  # sorts after `run`, written before it
    shutil.copytree(run, decoy)
    for p in decoy.rglob("*"):
        os.utime(p, (time.time() - 3600,) * 2)

    assert _fit([*argv, "--trainer.max_epochs=2"], monkeypatch) == 0
    text = _log_text(capfd, caplog)
    rel = Path("runs", "tiny", run.name)  # as the user spelled the root
    ckpt = rel / "checkpoints" / "epoch=0-step=3.ckpt"
    assert f"--ckpt_path last resumes experiment 'tiny': its newest run {rel}, checkpoint {ckpt.name}" in text, text
    assert f"Restored all states from the checkpoint at {ckpt}" in text
    assert sorted(p.name for p in (workdir / "runs" / "tiny").iterdir()) == sorted([run.name, decoy.name])
    rows = _rows(run)
    assert rows[: len(first)] == first
    assert _train_steps(run) == [(0, 2), (1, 5)]
    assert (run / "config.1.yaml").is_file()
    assert _train_steps(decoy) == [(0, 2)] and not (decoy / "config.1.yaml").exists()


# ---------------------------------------------------------------------------- SLURM requeue
class SignalAt(pl.Callback):
    """Sends SIGUSR1 (SLURM's ``--signal=SIGUSR1@90`` warning) to this process after training
    step ``step``, as SLURM does before the time limit."""

    def __init__(self, step: int = 4) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


class Requeued(BaseException):
    """What ``scontrol requeue`` does to the running job: it ends it (here: unwinds the fit)."""


def _slurm_env(monkeypatch, restart: int | None = None) -> None:
    for k, v in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "moco", "SLURM_NTASKS": "1", "SLURM_NNODES": "1",
                 "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}.items():
        monkeypatch.setenv(k, v)
    if restart is not None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart))


def test_slurm_requeue_resumes_the_hpc_checkpoint_in_the_same_run(workdir, monkeypatch, capfd, caplog):
    """Under SLURM variables, SIGUSR1 at step 4 (mid-epoch 2) makes Lightning write
    ``hpc_ckpt_1.ckpt`` into the run directory and call ``scontrol requeue 4242`` (mocked: it
    ends the job). The requeued job (same command, same job id, no ``--ckpt_path``) continues
    that run from the hpc checkpoint (step 4, newer than the epoch-end checkpoint at step 3)
    and finishes it: one run directory, metrics appended, no step trained twice."""
    import pytorch_lightning.trainer.connectors.signal_connector as sc

    calls: list[list[str]] = []

    def scontrol(cmd, *args, **kwargs):
        calls.append(list(cmd))
        raise Requeued

    monkeypatch.setattr(sc, "call", scontrol)
    _slurm_env(monkeypatch)
    recipe = write_tiny_recipe(workdir)
    argv = ["--config", str(recipe), "--trainer.max_epochs=2", "--trainer.log_every_n_steps=1",
            "--trainer.callbacks+=test_preemption.SignalAt"]
    with pytest.raises(Requeued):
        _fit(argv, monkeypatch)
    assert calls == [["scontrol", "requeue", "4242"]]
    (run,) = (workdir / "runs" / "tiny").iterdir()
    hpc = run / "hpc_ckpt_1.ckpt"
    assert hpc.is_file() and torch.load(hpc, weights_only=True)["global_step"] == 4
    assert (run / "slurm_jobs.txt").read_text().split() == ["4242"]
    assert not (workdir / "runs" / "hpc_ckpt_1.ckpt").exists()  # not in the shared root
    first = _rows(run)
    capfd.readouterr()

    _slurm_env(monkeypatch, restart=1)
    assert _fit(argv, monkeypatch) == 0
    text = _log_text(capfd, caplog)
    rel = Path("runs", "tiny", run.name)
    assert f"SLURM job 4242 (restart 1) resumes its run {rel}, checkpoint hpc_ckpt_1.ckpt (step 4" in text, text
    assert f"Restored all states from the checkpoint at {rel / hpc.name}" in text
    assert [p.name for p in (workdir / "runs" / "tiny").iterdir()] == [run.name]
    assert _rows(run)[: len(first)] == first
    # rows 0-2 from the first segment; its step 3 ended in the requeue (the kill) before the row
    # was logged, but after the hpc checkpoint: the requeued job goes on with steps 4 and 5
    assert _train_steps(run) == [(0, 0), (0, 1), (0, 2), (1, 4), (1, 5)]
    assert (run / "slurm_jobs.txt").read_text().split() == ["4242"]
    # only a requeued job continues unasked: another fit in the job's first execution is a new run
    from ssl_cropmix.cli import _resolve_resume

    cfg = {"ckpt_path": None, "experiment": "tiny", "trainer": {"default_root_dir": "runs"}}
    _resolve_resume(cfg)
    assert cfg["ckpt_path"] is not None
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    cfg["ckpt_path"] = None
    _resolve_resume(cfg)
    assert cfg["ckpt_path"] is None


def test_evaluation_trainer_does_not_load_the_runs_hpc_checkpoint(tmp_path, monkeypatch):
    """An evaluation ``Trainer`` (linear probe, fine-tune) inherits the pretraining's
    ``default_root_dir`` (the run directory): under SLURM, Lightning would restore any
    ``hpc_ckpt_<n>.ckpt`` found there into the probe; it must not look there."""
    from ssl_cropmix.evaluation.runner import evaluation_trainer

    _slurm_env(monkeypatch)
    _fake_ckpt(tmp_path / "hpc_ckpt_1.ckpt", 7, time.time())
    pre = pl.Trainer(accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                     enable_progress_bar=False, enable_model_summary=False)
    ev = evaluation_trainer(pre, max_epochs=1)
    assert ev._checkpoint_connector._hpc_resume_path is None
