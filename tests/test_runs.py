"""Run directories of ``ssl-cropmix`` (``ssl_cropmix.runs`` + the CLI): one folder per run
even when runs start together, resume into the checkpoint's run, the last step logged,
nothing left behind by a run that fails at setup, and an lr that is not pinned by the
saved hparams."""

from __future__ import annotations

import csv
import multiprocessing as mp
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from cli_fixtures import subprocess_env, write_tiny_recipe

from ssl_cropmix.runs import new_run_dir  # imported before the fork below


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_rows(run: Path) -> list[dict[str, str]]:
    return [r for r in _rows(run) if r.get("train/loss")]


def _fit(argv: list[str], monkeypatch) -> int:
    from ssl_cropmix.cli import main

    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])  # LightningCLI warns if given both
    return main(["fit", *argv])


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSL_CROPMIX_RUN_VERSION", raising=False)
    return tmp_path


# ---------------------------------------------------------------------------- new_run_dir
def _make(root: str, barrier, queue) -> None:
    barrier.wait()
    queue.put(str(new_run_dir(root, "exp", "20260101-000000")))


def test_new_run_dir_is_atomic_across_processes(tmp_path):
    """Eight processes asking for the same version at the same moment get eight folders:
    the version itself once, then the suffixes."""
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_make, args=(str(tmp_path), barrier, queue)) for _ in range(8)]
    for p in procs:
        p.start()
    got = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert len(set(got)) == 8
    names = sorted(Path(g).name for g in got)
    assert names == sorted(["20260101-000000"] + [f"20260101-000000-{k}" for k in range(1, 8)])
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == names


def test_run_dir_of_checkpoint(tmp_path):
    from ssl_cropmix.runs import run_dir_of_checkpoint

    run = tmp_path / "exp" / "v"
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"x")
    assert run_dir_of_checkpoint(ckpt) is None  # no config.yaml: not an ssl-cropmix run
    (run / "config.yaml").write_text("{}")
    assert run_dir_of_checkpoint(ckpt) == run
    assert run_dir_of_checkpoint(run / "checkpoints" / "missing.ckpt") is None
    other = tmp_path / "elsewhere.ckpt"
    other.write_bytes(b"x")
    assert run_dir_of_checkpoint(other) is None


# ---------------------------------------------------------------------------- real runs
_FORK_AND_RUN = """
import os, sys
from ssl_cropmix.cli import import_package_classes, main
import pytorch_lightning.cli, pytorch_lightning.loggers, torch.utils.tensorboard, cli_fixtures
import_package_classes()  # heavy imports once, before the forks (as a forkserver preloads)
out_dir, n, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
go_r, go_w = os.pipe()
pids = []
for i in range(n):
    pid = os.fork()
    if pid == 0:  # a child: its own process, output to its own file, released with the others
        os.close(go_w)
        fd = os.open(os.path.join(out_dir, f"{i}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.read(go_r, 1)
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            rc = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 0)
    pids.append(pid)
os.close(go_r)
os.write(go_w, b"x" * n)  # release all children at the same instant
codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
print("exit codes", codes)
sys.exit(0 if not any(codes) else 1)
"""


@pytest.mark.slow
def test_eight_runs_started_at_once_get_eight_directories(tmp_path):
    """Eight real ``ssl-cropmix fit`` processes of one config, released at the same instant
    (after their imports): eight run directories, each complete and holding only its own
    run (one config, one checkpoint, the one logged training row), and no "will be
    deleted" warning from the loggers sharing a folder. The eight are forked from one
    process that has done the imports (as a forkserver would): separate processes with
    their own files and loggers, without paying eight times for importing Lightning."""
    recipe = write_tiny_recipe(tmp_path)
    env = subprocess_env(tmp_path)
    env["OMP_NUM_THREADS"] = "1"  # eight processes on a small machine: no thread oversubscription
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_AND_RUN, str(logs), "8", "fit", "--config", str(recipe), "--trainer.max_steps=1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    outs = [(logs / f"{i}.log").read_text() for i in range(8)]
    assert proc.returncode == 0, proc.stdout[-2000:] + "\n".join(o[-1500:] for o in outs)
    for out in outs:
        assert "will be deleted" not in out
        assert "fieldnames" not in out
        # issue 21.7: Lightning's advertisements and torch's LeafSpec deprecation are filtered
        # from the real CLI output, and nothing else is (Lightning's info lines still print)
        assert "Tip:" not in out and "litlogger" not in out and "LeafSpec" not in out, out
        assert "GPU available" in out
    runs = sorted((tmp_path / "runs" / "tiny").iterdir())
    assert len(runs) == 8, [r.name for r in runs]
    stamps = {r.name[:15] for r in runs}
    assert len(stamps) < 8, "the runs did not start in the same second; the test proved nothing"
    for run in runs:
        assert (run / "config.yaml").is_file()
        assert len(list((run / "checkpoints").glob("*.ckpt"))) == 1
        rows = _train_rows(run)
        assert [r["step"] for r in rows] == ["0"], rows  # its own (only) step, once
        assert len(list(run.glob("events.out.tfevents.*"))) == 1


def test_short_run_still_writes_its_last_step(workdir, monkeypatch):
    """3 steps < log_every_n_steps=20: metrics.csv still has the final step's row, and the
    scaled lr is recorded under its own name (``lr`` stays the unset override)."""
    recipe = write_tiny_recipe(workdir)
    assert _fit(["--config", str(recipe)], monkeypatch) == 0
    (run,) = (workdir / "runs" / "tiny").iterdir()
    rows = _train_rows(run)
    assert [int(r["step"]) for r in rows] == [2]
    hp = yaml.safe_load((run / "hparams.yaml").read_text())
    assert hp["lr"] is None
    assert hp["scaled_lr"] == pytest.approx(0.06 * 8 / 256)
    assert hp["effective_batch_size"] == 8


def test_resume_continues_in_the_checkpoints_run_directory(workdir, monkeypatch):
    """fit 1 epoch, then ``fit --ckpt_path <run>/checkpoints/last.ckpt`` to 2 epochs: one
    run directory holds both configs, every metric row of both segments (the first
    segment's rows kept), and the checkpoints; Lightning does not warn that the checkpoint
    dirpath changed."""
    recipe = write_tiny_recipe(workdir)
    (workdir / "ckpt.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: pytorch_lightning.callbacks.ModelCheckpoint\n"
        "      init_args:\n        save_last: true\n"
    )
    base = ["--config", str(recipe), "--config", str(workdir / "ckpt.yaml")]
    assert _fit(base, monkeypatch) == 0
    (run,) = (workdir / "runs" / "tiny").iterdir()
    first = _rows(run)
    assert (run / "checkpoints" / "last.ckpt").is_file()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # absolute checkpoint path while the first segment's dirpath was relative
        assert _fit([*base, "--trainer.max_epochs=2", "--ckpt_path", str((run / "checkpoints" / "last.ckpt").resolve())],
                    monkeypatch) == 0
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "dirpath has changed" in m or "will be deleted" in m], messages
    assert [p.name for p in (workdir / "runs" / "tiny").iterdir()] == [run.name]
    assert (run / "config.yaml").is_file() and (run / "config.1.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert yaml.safe_load((run / "config.1.yaml").read_text())["trainer"]["max_epochs"] == 1
    rows = _rows(run)
    assert rows[: len(first)] == first  # the first segment's rows, unchanged
    train_steps = [(int(r["epoch"]), int(r["step"])) for r in rows if r.get("train/loss")]
    assert train_steps == [(0, 2), (1, 5)]
    ckpts = {p.name for p in (run / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in ckpts and any("epoch=1" in n for n in ckpts), ckpts


def test_rerun_from_saved_config_scales_lr_at_its_own_batch_size(workdir, monkeypatch):
    """The saved config is a recipe, not a pinned run: re-running it with another batch
    size scales the lr again (base_lr x batch / 256) and writes a new run directory of the
    same experiment."""
    from ssl_cropmix.cli import cli_main

    recipe = write_tiny_recipe(workdir)
    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    cli = cli_main(["fit", "--config", str(recipe)])
    assert cli.model.scaled_lr == pytest.approx(0.06 * 8 / 256)
    (run,) = (workdir / "runs" / "tiny").iterdir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["lr"] is None
    cli2 = cli_main(["fit", "--config", str(run / "config.yaml"), "--data.batch_size=16"])
    assert cli2.model.scaled_lr == pytest.approx(0.06 * 16 / 256)
    assert cli2.trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(0.06 * 16 / 256)
    hp = yaml.safe_load((cli2.run_dir / "hparams.yaml").read_text())
    assert hp["scaled_lr"] == pytest.approx(0.06 * 16 / 256) and hp["lr"] is None
    assert cli2.run_dir.resolve() != run.resolve() and cli2.run_dir.resolve().parent == run.resolve().parent


def test_failed_runs_leave_no_directory(workdir, monkeypatch, capsys):
    """A bad data root, a missing --ckpt_path and an accelerator the machine lacks: no stray
    run directory; each is one line on stderr and exit status 2, not a traceback."""
    import torch

    recipe = write_tiny_recipe(workdir)
    capsys.readouterr()
    assert _fit(["--config", str(recipe), "--data.source=ImageFolderSource",
                 f"--data.source.root={workdir / 'nowhere'}"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssl-cropmix: error: root ") and "nowhere" in err[0], err
    assert not list((workdir / "runs" / "tiny").glob("*")) if (workdir / "runs" / "tiny").exists() else True
    assert _fit(["--config", str(recipe), f"--ckpt_path={workdir / 'nope.ckpt'}"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssl-cropmix: error:") and "nope.ckpt" in err[0], err
    from ssl_cropmix.cli import main

    for task in ("probe", "finetune", "export"):  # the task commands' --ckpt as well
        extra = ["--out", str(workdir / "x.safetensors")] if task == "export" else ["--device", "cpu"]
        assert main([task, "--ckpt", str(workdir / "nope.ckpt"), *extra]) == 2, task
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ssl-cropmix: error:") and "nope.ckpt" in err[0], (task, err)
    monkeypatch.setenv("SSL_CROPMIX_DEBUG", "1")  # the traceback on request
    with pytest.raises(FileNotFoundError):
        _fit(["--config", str(recipe), f"--ckpt_path={workdir / 'nope.ckpt'}"], monkeypatch)
    monkeypatch.delenv("SSL_CROPMIX_DEBUG")
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU")
    capsys.readouterr()
    assert _fit(["--config", str(recipe), "--trainer.accelerator=gpu"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ssl-cropmix: error:") and "gpu" in err[0].lower(), err
    assert _fit(["--config", str(recipe), "--trainer.accelerator=cuda"], monkeypatch) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CUDAAccelerator" in err[0] and "not available" in err[0], err
    assert not (workdir / "runs" / "tiny").exists() or not list((workdir / "runs" / "tiny").iterdir())
