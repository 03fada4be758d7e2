"""KNNMonitor: the InstDisc/MoCo weighted vote against a hand-written reference, 100% on
separable features, chance on shuffled labels, logged during fit of a user's module."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from eval_fixtures import FakeProvider, UserModule
from ssl_cropmix.callbacks.knn import KNNMonitor, knn_candidates, knn_classify, top_k_of


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


def test_equals_lightly_knn_predict_with_uneven_bank_blocks():
    """Blocked similarities + running top-k + vote == lightly's whole-bank ``knn_predict``."""
    from lightly.utils.benchmarking import knn_predict

    g = torch.Generator().manual_seed(1)
    bank, q = torch.randn(1000, 32, generator=g), torch.randn(200, 32, generator=g)
    labels = torch.randint(0, 7, (1000,), generator=g)
    ref = knn_predict(F.normalize(q, dim=1), F.normalize(bank, dim=1).t(), labels, 7, 50, 0.1)[:, 0]
    for chunk, block in ((1024, 65536), (64, 257), (37, 1000)):
        assert torch.equal(knn_classify(q, bank, labels, 7, k=50, chunk_size=chunk, bank_chunk_size=block), ref)


def test_shard_candidates_merge_to_the_whole_bank_top_k():
    """What the ranks do: top-k per shard (a shard may be smaller than k, or empty), then the
    top-k of the shards' candidates == the top-k over the whole bank."""
    g = torch.Generator().manual_seed(2)
    bank, q = torch.randn(103, 16, generator=g), torch.randn(9, 16, generator=g)
    labels = torch.randint(0, 4, (103,), generator=g)
    sim = F.normalize(q, dim=1) @ F.normalize(bank, dim=1).t()
    ref_v, ref_i = sim.topk(10, dim=1)
    shards = [(bank[r::4], labels[r::4]) for r in range(4)] + [(bank[:0], labels[:0]), (bank[:3], labels[:3])]
    parts = [knn_candidates(q, b, y, 10, bank_chunk_size=5) for b, y in shards[:4]]
    v, y = top_k_of([p[0] for p in parts], [p[1] for p in parts], 10)
    torch.testing.assert_close(v, ref_v)
    assert torch.equal(y, labels[ref_i])
    empty_v, _ = knn_candidates(q, *shards[4], 10)
    assert torch.isinf(empty_v).all()  # an empty shard offers only -inf candidates
    small_v, _ = knn_candidates(q, *shards[5], 10)
    assert torch.isinf(small_v[:, 3:]).all() and torch.isfinite(small_v[:, :3]).all()


def _peak_cpu_bytes(fn):
    """Peak of live CPU allocator bytes while ``fn`` runs, from the profiler's memory events
    (every allocation and free of torch's CPU allocator, in order; deterministic)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, n in events:
        live += n
        peak = max(peak, live)
    return out, peak


def test_peak_memory_is_one_chunk_beyond_the_bank():
    """A 200k x 512 bank (391 MiB): classifying never copies, normalises or transposes it whole;
    the extra memory is one float32 normalised bank block + one similarity block (+ the
    O(chunk x k) candidates). The previous implementation took 2 x the bank (781 MiB)."""
    g = torch.Generator().manual_seed(0)
    n, d, q_n, chunk, block, k = 200_000, 512, 64, 64, 8192, 200
    bank, labels = torch.randn(n, d, generator=g), torch.randint(0, 10, (n,), generator=g)
    q = torch.randn(q_n, d, generator=g)
    pred, peak = _peak_cpu_bytes(lambda: knn_classify(q, bank, labels, 10, k=k, chunk_size=chunk, bank_chunk_size=block))
    one_chunk = block * d * 4 + chunk * block * 4 + 2**20  # normalised block, similarities, candidates (< 1 MiB)
    assert peak <= one_chunk, (peak / 2**20, one_chunk / 2**20)
    assert peak < bank.nbytes / 20
    assert pred.shape == (q_n,) and 0 <= int(pred.min()) and int(pred.max()) < 10


def test_bank_storage_dtype():
    """``"auto"`` keeps float32 on the CPU; a bf16 shard gives (nearly) the float32 result."""
    assert KNNMonitor().storage_dtype(torch.device("cpu")) == torch.float32
    assert KNNMonitor(bank_dtype="float16").storage_dtype(torch.device("cpu")) == torch.float16
    knn32, knn16 = KNNMonitor(k=10, provider=FakeProvider()), KNNMonitor(k=10, bank_dtype="bfloat16", provider=FakeProvider())
    acc32, acc16 = knn32.evaluate(UserModule()), knn16.evaluate(UserModule())
    assert (knn32.last_bank_dtype, knn16.last_bank_dtype) == (torch.float32, torch.bfloat16)
    assert abs(acc32 - acc16) <= 5.0 and acc16 > 90.0


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
    with pytest.raises(ValueError, match="bank_chunk_size must be an int >= 1, got 0"):
        KNNMonitor(bank_chunk_size=0)
    with pytest.raises(ValueError, match="bank_dtype must be one of .*'half'"):
        KNNMonitor(bank_dtype="half")  # type: ignore[arg-type]
