"""W&B (offline) and MLflow (local file store) next to the run directory: run name
``<experiment>/<version>``, the run's metrics and hyper-parameters, the evaluation records and
the run summary, read back from what the trackers wrote to disk; a missing package is one
line naming the extra."""

from __future__ import annotations

import csv
import json
import struct
import sys
from pathlib import Path

import pytest

from cli_fixtures import write_tiny_recipe

TRACKERS_YAML = """\
trainer:
  logger:
    - class_path: pytorch_lightning.loggers.WandbLogger
      init_args:
        offline: true
    - class_path: pytorch_lightning.loggers.MLFlowLogger
      init_args:
        tracking_uri: file:./mlruns
  callbacks:
    - class_path: ssl_cropmix.callbacks.linear_probe.LinearProbe
      init_args:
        epochs: 1
        cached_features: true
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSL_CROPMIX_RUN_VERSION", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    return tmp_path


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a LevelDB-style
    log (7-byte file header, 32 KiB blocks, records of ``crc32 | length u16 | type u8``,
    type 1 full / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, out, buf = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def test_wandb_offline_and_mlflow_file_store_hold_the_run(workdir, monkeypatch):
    """One fit with both trackers and a linear probe: the run directory keeps its TensorBoard
    + CSV files, and each tracker holds the run under ``tiny/<version>`` with the logged
    training loss (the value in metrics.csv), the hyper-parameters, the probe's metrics and its
    full evaluation record (as in eval_results.json), and the printed run summary."""
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from ssl_cropmix.cli import cli_main

    recipe = write_tiny_recipe(workdir)
    (workdir / "trackers.yaml").write_text(TRACKERS_YAML)
    cli = cli_main(["fit", "--config", str(recipe), "--config", str(workdir / "trackers.yaml")])
    import wandb

    cli.trainer.loggers[2].experiment.finish()
    wandb.teardown()  # finish() hands the run to W&B's service; teardown waits until it wrote it
    (run,) = (workdir / "runs" / "tiny").iterdir()
    name = f"tiny/{run.name}"
    assert [type(lg).__name__ for lg in cli.trainer.loggers] == [
        "TensorBoardLogger", "RunCSVLogger", "WandbLogger", "MLFlowLogger"]
    assert list(run.glob("events.out.tfevents.*"))
    with open(run / "metrics.csv", newline="") as f:
        loss = [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]
    (record,) = json.loads((run / "eval_results.json").read_text())
    summary_text = "\n".join(cli.trainer.callbacks[[type(c).__name__ for c in cli.trainer.callbacks].index(
        "RunSummary")].lines)
    assert "eval/linear: top-1" in summary_text and len(loss) == 1

    # ---- W&B: the offline run file under the run directory
    (wfile,) = run.glob("wandb/offline-run-*/run-*.wandb")
    recs = _wandb_records(wfile)
    (meta,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert (meta.display_name, meta.project) == (name, "tiny")
    history = {}
    for r in recs:
        if r.WhichOneof("record_type") == "history":
            history.update({_key(i): json.loads(i.value_json) for i in r.history.item})
    summary = {}
    for r in recs:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    config = {_key(i) for r in recs if r.WhichOneof("record_type") == "config" for i in r.config.update}
    assert history["train/loss"] == pytest.approx(loss[-1])
    assert history["eval/linear/top1"] == pytest.approx(record["top1"])
    assert summary["eval/linear/record"] == record
    assert summary["run_summary"] == summary_text
    assert {"base_lr", "queue_size", "scaled_lr", "batch_size"} <= config

    # ---- MLflow: the file store, read with its client
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="file:./mlruns")
    exp = client.get_experiment_by_name("tiny")
    (mrun,) = client.search_runs([exp.experiment_id])
    assert mrun.info.run_name == name
    assert mrun.data.metrics["train/loss"] == pytest.approx(loss[-1])
    assert mrun.data.metrics["eval/linear/top1"] == pytest.approx(record["top1"])
    assert float(mrun.data.params["base_lr"]) == 0.06 and mrun.data.params["queue_size"] == "32"
    art = Path(client.download_artifacts(mrun.info.run_id, "", str(workdir / "artifacts")))
    assert json.loads((art / "eval" / "linear" / "record.json").read_text()) == record
    assert (art / "run_summary.txt").read_text() == summary_text


def test_missing_tracker_is_one_line_naming_the_extra(workdir, monkeypatch, capsys):
    """W&B or MLflow asked for but not installed: exit status 2 and one line naming
    ``pip install 'ssl_cropmix[<extra>]'``, no run directory; MLflow's opt-in file store
    without ``MLFLOW_ALLOW_FILE_STORE`` is one line naming the variable."""
    from ssl_cropmix.cli import main

    recipe = write_tiny_recipe(workdir)
    for module, logger in (("wandb", "WandbLogger"), ("mlflow", "MLFlowLogger")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # `import <module>` fails as if not installed
            assert main(["fit", "--config", str(recipe), f"--trainer.logger={logger}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pip install 'ssl_cropmix[{module}]'" in err[0], err
    assert not (workdir / "runs" / "tiny").exists() or not list((workdir / "runs" / "tiny").iterdir())
    try:
        from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE  # noqa: F401
    except ImportError:  # no mlflow, or one that takes file stores without asking
        return
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert main(["fit", "--config", str(recipe), "--trainer.logger=MLFlowLogger",
                 "--trainer.logger.tracking_uri=file:./mlruns"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MLFLOW_ALLOW_FILE_STORE=true" in err[0], err
