"""KNNMonitor: the InstDisc/MoCo weighted vote against a hand-written reference, 100% on
separable features, chance on shuffled labels, logged during fit of a user's module."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from eval_fixtures import FakeProvider, UserModule
from ssl_cropmix.callbacks.knn import KNNMonitor, knn_classify


def _reference(q, bank, labels, c, k, t):
    sim = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).t()
    w, idx = sim.topk(k, dim=1)
    scores = torch.zeros(len(q), c)
    for i in range(len(q)):
        for j in range(k):
            scores[i, labels[idx[i, j]]] += torch.exp(w[i, j] / t)
    return scores.argmax(1)


def test_matches_reference_and_chunking():
    g = torch.Generator().manual_seed(0)
    bank, q = torch.randn(300, 8, generator=g), torch.randn(50, 8, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    ref = _reference(q, bank, labels, 5, 20, 0.1)
    assert torch.equal(knn_classify(q, bank, labels, 5, k=20, temperature=0.1, chunk_size=7), ref)
    assert torch.equal(knn_classify(q, bank, labels, 5, k=20, temperature=0.1, chunk_size=1000), ref)


def test_separable_is_perfect_and_shuffled_is_chance():
    g = torch.Generator().manual_seed(0)
    c, n = 10, 200  # 2000-sample bank: k=200 neighbours, 20 classes' worth of votes
    centers = F.normalize(torch.randn(c, 32, generator=g), dim=1) * 10
    yb = torch.arange(c).repeat_interleave(n)
    bank = centers[yb] + torch.randn(c * n, 32, generator=g)
    yq = torch.arange(c).repeat_interleave(200)
    q = centers[yq] + torch.randn(len(yq), 32, generator=g)
    assert (knn_classify(q, bank, yb, c) == yq).float().mean().item() == 1.0
    # Shuffled bank labels carry no information: accuracy ~ Binomial(2000, 0.1)/2000,
    # std = sqrt(0.1*0.9/2000) = 0.67 points; 0.1 +- 0.03 is > 4 std (fixed seed anyway).
    shuffled = yb[torch.randperm(len(yb), generator=g)]
    acc = (knn_classify(q, bank, shuffled, c) == yq).float().mean().item()
    assert abs(acc - 0.1) < 0.03


def test_monitor_logs_during_fit(tmp_path):
    provider = FakeProvider()
    knn = KNNMonitor(k=20, every_n_epochs=2, provider=provider)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, callbacks=[knn], default_root_dir=tmp_path, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(UserModule(), train_dataloaders=provider.labeled_train_dataloader())
    assert [e for e, _ in knn.history] == [1]  # epochs 0-based: only after the 2nd epoch
    assert knn.history[0][1] > 90.0  # colour-separable toy classes
    assert trainer.callback_metrics["knn_top1"].item() == pytest.approx(knn.history[0][1])
    assert provider.calls[-1]["augment"] is False and provider.calls[-1]["shuffle"] is False


def test_k_larger_than_the_bank_is_refused_not_clamped():
    g = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(10, 4, generator=g), torch.randint(0, 2, (10,), generator=g)
    assert knn_classify(bank[:3], bank, labels, 2, k=10).shape == (3,)  # k == bank size is fine
    with pytest.raises(ValueError, match=r"k=11 is larger than the kNN feature bank \(10 samples\)"):
        knn_classify(bank[:3], bank, labels, 2, k=11)
    provider = FakeProvider(n_per_class=4)  # 16-image bank
    with pytest.raises(ValueError, match=r"k=200 is larger than the kNN feature bank \(16 samples\)"):
        KNNMonitor(k=200, provider=provider).evaluate(UserModule())


def test_default_k_adapts_to_a_small_bank_visibly(caplog):
    """The default k=200 on a 16-image bank uses the whole bank, says so once and records it."""
    provider = FakeProvider(n_per_class=4)  # 16-image bank
    knn = KNNMonitor(provider=provider)
    with caplog.at_level("INFO"):
        acc = knn.evaluate(UserModule())
        knn.evaluate(UserModule())
    assert knn.k_used == 16
    said = [r.getMessage() for r in caplog.records if "default k=200" in r.getMessage()]
    assert len(said) == 1 and "using k=16" in said[0]
    assert acc == KNNMonitor(k=16, provider=FakeProvider(n_per_class=4)).evaluate(UserModule())


def test_validation():
    with pytest.raises(ValueError, match="k must.*0"):
        KNNMonitor(k=0)
    with pytest.raises(ValueError, match="temperature.*-1"):
        KNNMonitor(temperature=-1)
