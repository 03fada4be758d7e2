"""Known Lightning noise (issue 21.7): the CLI filters Lightning's advertisement lines and
torch's ``LeafSpec`` deprecation raised from Lightning, by message and nothing else; the
"module(s) in eval mode at the start of training" notice is not raised by the evaluation
protocols (a fine-tuned trunk trains in train mode; a linear probe's frozen trunk is eval on
purpose, and the notice is silenced there only)."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "callbacks"))  # eval_fixtures

from cli_fixtures import write_tiny_recipe  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL_MODE_NOTICE = "in eval mode at the start of training"


def test_cli_fit_prints_no_advertisement_and_no_leafspec_deprecation(tmp_path, monkeypatch, capfd, caplog):
    """A tiny ``ssl-cropmix fit``: no "Tip: ... litlogger / litmodels" line and no LeafSpec
    FutureWarning; Lightning's other messages still come through (the filters are narrow)."""
    from ssl_cropmix.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSL_CROPMIX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("sys.argv", ["ssl-cropmix"])
    recipe = write_tiny_recipe(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(recipe)]) == 0
    out = capfd.readouterr()
    text = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)  # Lightning logs via logging
    assert "Tip:" not in text and "litlogger" not in text and "litmodels" not in text, text
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "LeafSpec" in m], messages
    # narrow: Lightning's info lines and its other warnings are untouched
    assert "GPU available" in text
    assert any("smaller than the logging interval" in m for m in messages), messages


def test_noise_filter_is_narrow():
    """Only the two advertisement messages are dropped; a LeafSpec-like FutureWarning from
    another module is still shown."""
    import logging

    from ssl_cropmix.cli import silence_known_noise

    silence_known_noise()
    silence_known_noise()  # idempotent
    log = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    assert log.filters.count(log.filters[-1]) == 1

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord(log.name, logging.INFO, __file__, 1, msg, None, None)

    assert not log.filter(record("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger"))
    assert not log.filter(record("💡 Tip: For seamless cloud uploads and versioning, try installing "
                                 "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint"))
    assert log.filter(record("GPU available: False, used: False"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_noise()
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning)  # from this module
    assert len(caught) == 1


def _eval_mode_notices(run) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return [str(w.message) for w in caught if EVAL_MODE_NOTICE in str(w.message)]


def test_finetune_trains_its_trunk_in_train_mode(tmp_path):
    """A module handed over in eval mode (as ``load_module`` returns it) is fine-tuned with its
    BatchNorm in train mode: no eval-mode notice, and the copy's BN statistics move."""
    from eval_fixtures import FakeProvider, UserModule

    from ssl_cropmix.callbacks.finetune import SemiSupervisedFineTune
    from ssl_cropmix.evaluation import finetune as ft

    module = UserModule().eval()
    seen = {}
    original = ft.SemiSupervisedFineTuneModule.on_train_epoch_start

    def spy(self):
        seen["trunk_training"] = self.trunk.training
        seen["trunk"] = self.trunk
        return original(self)

    cb = SemiSupervisedFineTune("1pct", label_fraction=0.25, epochs=1, batch_size=8, provider=FakeProvider(n_per_class=16),
                                results_path=tmp_path / "ft.json")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ft.SemiSupervisedFineTuneModule, "on_train_epoch_start", spy)
        assert _eval_mode_notices(lambda: cb.run(None, module)) == []
    assert seen["trunk_training"] is True
    assert not torch.equal(seen["trunk"][1].running_mean, torch.zeros(16))  # BN statistics were updated
    assert not module.training  # the pretrained module itself is untouched


def test_linear_probe_frozen_trunk_raises_no_eval_mode_notice(tmp_path):
    from eval_fixtures import FakeProvider, UserModule

    from ssl_cropmix.callbacks.linear_probe import LinearProbe

    cb = LinearProbe("moco", epochs=1, batch_size=16, provider=FakeProvider(n_per_class=8),
                     results_path=tmp_path / "lp.json")
    assert _eval_mode_notices(lambda: cb.run(None, UserModule().eval())) == []


def test_mae_finetune_vit_is_in_train_mode():
    """The ViT copied for MAE fine-tuning trains in train mode (drop path active) even when
    the pretrained module was in eval mode."""
    from ssl_cropmix.evaluation.mae_finetune import prepare_vit
    from ssl_cropmix.models.vit import build_vit

    vit = build_vit("vit_tiny_patch16_224", img_size=32, patch_size=4, vit_kwargs={"depth": 2}).eval()
    out = prepare_vit(vit, num_classes=3, drop_path=0.1)
    assert all(m.training for m in out.modules())
    assert not vit.training  # the source is untouched
