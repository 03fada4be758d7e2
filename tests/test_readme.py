"""README's quick-start commands are exactly what CI runs, and what README (and the docs) tell
a user to run runs to its last epoch."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIGS = sorted((REPO / "configs" / "smoke").glob("*.yaml"))


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def _main_job(readme: str) -> str:
    """README's main-job command: the one ``bash`` block that runs ``ssl-cropmix fit``."""
    jobs = [b for b in _bash_blocks(readme) if b.startswith("ssl-cropmix fit")]
    assert len(jobs) == 1, f"README should print exactly one main-job block, found {jobs}"
    assert len(jobs[0].splitlines()) == 1, f"the main job is one command line, got {jobs[0]!r}"
    return jobs[0]


def test_ci_runs_readme_install_and_test_commands():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    blocks = _bash_blocks(readme)
    install, test = blocks[0], blocks[2]
    for line in install.splitlines() + test.splitlines():
        assert line in ci.splitlines(), f"README command not run verbatim by .ci/run: {line!r}"
    assert "constraints.txt" in install


def test_ci_runs_readme_main_job_verbatim_to_its_last_epoch_before_the_tests():
    """.ci/run runs README's main-job line as printed (same relative config path, no extra
    options that could shorten it), checks the summary, the epoch count and ``last.ckpt``,
    and runs it before pytest, whose closing line stays the script's last output."""
    readme = (REPO / "README.md").read_text()
    ci_lines = [ln for ln in (REPO / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    job = _main_job(readme)
    runs = [i for i, ln in enumerate(ci_lines) if job in ln]
    assert runs, f".ci/run does not run README's main job {job!r}"
    line = ci_lines[runs[0]]
    after = line[line.index(job) + len(job):]
    assert not after.strip() or after.lstrip().startswith((")", "|")), f"options added after README's command: {after!r}"
    config = job.split("--config", 1)[1].split()[0]
    assert (REPO / config).is_file(), f"README's main job names a missing config {config}"
    tail = "\n".join(ci_lines[runs[0]:])
    assert "ssl_cropmix run summary" in tail and "last.ckpt" in tail and "max_epochs" in tail
    assert ci_lines[-1] == "python -m pytest -q", "pytest must be the last step of .ci/run"


def _periodic_epochs(cfg: dict) -> list[int]:
    """``every_n_epochs`` of the config's callbacks (the evaluations that fire mid-run)."""
    cbs = (cfg.get("trainer") or {}).get("callbacks") or []
    return [int(c["init_args"]["every_n_epochs"]) for c in cbs
            if isinstance(c, dict) and int((c.get("init_args") or {}).get("every_n_epochs") or 0) > 0]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("config", SMOKE_CONFIGS, ids=[p.name for p in SMOKE_CONFIGS])
def test_smoke_config_runs_to_its_last_epoch_with_every_evaluation_firing(config, tmp_path, monkeypatch, capsys):
    """Every config in configs/smoke/ runs to its last epoch through the CLI, and every
    periodic evaluation it configures fires on the full evaluation data (the kNN bank is the
    whole 64-image demo set, as in the real run: the bug of issue 21 was k=200 on it).

    Cut for suite time, and only this: each epoch takes two training / validation batches
    (a limit of ``1`` ran every batch through the CLI), and
    the run has ``max(every_n_epochs)`` epochs instead of ``max_epochs`` (so the latest
    periodic evaluation still fires: KNNMonitor(every_n_epochs=4) at epoch 4). The full run
    (all batches, all epochs, the README's command verbatim) is a step of ``.ci/run``.
    """
    import yaml

    from ssl_cropmix.cli import main

    cfg = yaml.safe_load(config.read_text())
    periodic = _periodic_epochs(cfg)
    epochs = min(int(cfg["trainer"]["max_epochs"]), max(periodic, default=1))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    rc = main(["fit", "--config", str(config), "--experiment", "smoke", f"--trainer.max_epochs={epochs}",
               "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("ssl_cropmix run summary") == 1
    summary = out[out.index("ssl_cropmix run summary"):]
    assert re.search(rf"wall time: [0-9.]+s \({epochs} epochs, {2 * epochs} steps\)", summary), summary
    run_dir = Path(re.search(r"run directory:\s+(\S+)", summary).group(1))
    assert run_dir.is_dir() and (run_dir / "config.yaml").is_file()
    last = Path(re.search(r"last checkpoint:\s+(\S+)", summary).group(1))
    assert last.name == "last.ckpt" and last.is_file() and last.resolve().is_relative_to(run_dir.resolve())
    names = [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"].get("callbacks") or []]
    if "KNNMonitor" in names:
        assert re.search(r"knn_top1: [0-9.]+", summary), summary
    if "OnlineLinearProbe" in names:
        assert re.search(r"online_probe/val_top1: [0-9.]+", summary), summary


@pytest.mark.usefixtures("one_torch_thread")
def test_readme_python_quick_start_runs_to_the_end(tmp_path, monkeypatch):
    """README's Python quick start (``Trainer.fit(MoCoCropMix(...), dm)`` with
    ``OnlineLinearProbe``, ``KNNMonitor``, ``LinearProbe(preset=...)``) executed as printed on
    the demo set, to its end. Cut for suite time through arguments the snippet itself shows
    (and only those): 16-px images, 2 epochs and a kNN period of 1, so the kNN still fires
    mid-run (and at the end) and the probe runs at the end."""
    from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, OnlineLinearProbe

    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "KNNMonitor" in b]
    assert len(blocks) == 1, "README shows one Python quick start with the evaluation callbacks"
    code = blocks[0]
    for shown, small in (("image_size=32", "image_size=16"), ("every_n_epochs=4", "every_n_epochs=1"),
                         ("max_epochs=8", "max_epochs=2")):
        assert shown in code, f"the quick start no longer shows {shown}"
        code = code.replace(shown, small)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md quick start", "exec"), scope)
    model, evals = scope["model"], scope["evals"]
    assert {OnlineLinearProbe, KNNMonitor, LinearProbe} <= {type(e) for e in evals}
    knn = next(e for e in evals if isinstance(e, KNNMonitor))
    probe = next(e for e in evals if isinstance(e, LinearProbe))
    assert model.trainer.current_epoch == 2 and model.trainer.global_step == 2 * 4  # 64 images / 16, 2 epochs
    assert [e for e, _ in knn.history] == [0, 1] and knn.k_used == 64  # default k=200 adapted to the 64-image bank
    (res,) = probe.results
    assert res.val_samples == 64 and 0.0 <= res.top1 <= 100.0 and res.hparams["batch_size"] == 64  # 4096 adapted
