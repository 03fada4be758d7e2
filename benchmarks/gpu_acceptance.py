"""GPU acceptance: one command, one GPU, <= 8 minutes; exits non-zero when a check fails.

Checks (each a function in ``CHECKS``; more can be registered with :func:`register_check`,
and a module ``benchmarks/device_views.py`` defining ``acceptance_check(ctx) -> CheckResult``
is picked up automatically):

(a) ``loader``: the MoCo pair loader on CIFAR-10 (``--data-root``, default ``../shared/data``)
    with 14 workers: plain vs contrastive vs cropmix query, images/s and the ratios to plain
    (``benchmarks/dataloader.py``'s interleaved rounds). Targets: cropmix >= 0.9x plain,
    contrastive >= 0.65x plain.
(b) ``steps``: the ``MoCoCropMix`` ResNet-50 224-px training step (bf16 autocast,
    channels_last) against the lightly reference of ``benchmarks/moco_step.py``, and the
    ``MAECropMix`` ViT-B/16 step against ``benchmarks/mae_step.py``'s reference: ms/step,
    ratio, peak GPU memory of each. Target: ours <= 1.05x the reference's time (docs/benchmarks.md).
(c) ``pretrain_eval``: a short ResNet-18 MoCo + CropMix pretraining on CIFAR-10 (bf16-mixed),
    then the end-of-fit linear probe and kNN; **asserts that both evaluations ran on the GPU**
    (the device of the probe module's parameters during its training steps, and the kNN
    feature device), on the pretraining's accelerator and precision; reports accuracy and time.
(d) ``device_views`` (from ``benchmarks/device_views.py``): the ``augment_on="device"`` views,
    contrastive MoCo pairs/s at 224 px, batch 256, decode excluded (target >= 5,000), and a
    ResNet-50 ``MoCoCropMix`` step fed by them vs the step on pre-made tensors (>= 0.95x).

Writes ``<out>/gpu_acceptance.md`` (markdown table) and ``<out>/gpu_acceptance.json``.

    python benchmarks/gpu_acceptance.py                      # the GPU run (needs CUDA)
    python benchmarks/gpu_acceptance.py --cpu-smoke          # same code, toy sizes, CPU (tests)
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402


@dataclass
class Context:
    """What every check gets: device, sizes, where data and outputs are."""

    device: torch.device
    smoke: bool
    data_root: str
    workers: int
    tmp: Path
    pretrain_epochs: int


@dataclass
class CheckResult:
    """One check's outcome: ``rows`` become table lines ``| check | item | value | target | ok |``."""

    name: str
    passed: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


Check = Callable[[Context], CheckResult]
CHECKS: list[tuple[str, Check]] = []


def register_check(name: str, fn: Check) -> None:
    """Add a check (run in registration order)."""
    CHECKS.append((name, fn))


def _row(item: str, value: Any, target: str = "", ok: bool = True) -> dict[str, Any]:
    return {"item": item, "value": value, "target": target, "ok": bool(ok)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ----------------------------------------------------------------------------- (a) loader
def _cifar_train(ctx: Context):
    from ssl_cropmix.data.datasets import ImageFolderDataset

    if ctx.smoke:  # toy size: the built-in demo photos, no external data
        from ssl_cropmix.data.demo import write_demo_folder

        return ImageFolderDataset(write_demo_folder(ctx.tmp / "demo") / "train")
    from ssl_cropmix.data.cifar import resolve_cifar10

    return ImageFolderDataset(resolve_cifar10(ctx.data_root) / "train")


def check_loader(ctx: Context) -> CheckResult:
    from dataloader import run_rounds

    source = _cifar_train(ctx)
    a = argparse.Namespace(batches=1 if ctx.smoke else 10, repeats=2 if ctx.smoke else 3,
                           num_workers=ctx.workers, batch_size=4 if ctx.smoke else 256)
    pipelines = ["plain", "contrastive", "cropmix"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as benchmarks/dataloader.py: one torch thread per loader process
    try:
        res = run_rounds(source, 32, pipelines, a)
    finally:
        torch.set_num_threads(threads)
    rows, ok_all = [], True
    targets = {"plain": None, "contrastive": 0.65, "cropmix": 0.9}
    for k in pipelines:
        ips = statistics.median(res[k])
        ratio = statistics.median([x / p for x, p in zip(res[k], res["plain"])])
        t = targets[k]
        ok = ips > 0 and (ctx.smoke or t is None or ratio >= t)
        ok_all &= ok
        rows.append(_row(f"{k} query, {ctx.workers} workers: images/s", round(ips, 1)))
        if t is not None:
            rows.append(_row(f"{k} / plain", round(ratio, 3), f">= {t}" + (" (not enforced in smoke)" if ctx.smoke else ""), ok))
    return CheckResult("loader", ok_all, rows)


# ----------------------------------------------------------------------------- (b) steps
def _time_pair(ctx: Context, ref_step: Callable[[], None], ours_step: Callable[[], None], steps: int, repeats: int
               ) -> tuple[dict[str, list[float]], dict[str, int]]:
    from timing import interleaved_times

    times = interleaved_times({"ref": ref_step, "ours": ours_step}, steps, repeats, 1 if ctx.smoke else 3,
                              lambda: _sync(ctx.device))
    peak = {}
    for name, fn in (("ref", ref_step), ("ours", ours_step)):
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(ctx.device)
            fn()
            fn()
            _sync(ctx.device)
            peak[name] = int(torch.cuda.max_memory_allocated(ctx.device))
        else:
            peak[name] = 0
    return times, peak


def _step_rows(label: str, times: dict[str, list[float]], peak: dict[str, int], smoke: bool, limit: float = 1.05
               ) -> tuple[list[dict[str, Any]], bool]:
    ratio = statistics.median([o / r for o, r in zip(times["ours"], times["ref"])])
    ok = smoke or ratio <= limit
    gib = 1024**3
    return [
        _row(f"{label}: reference ms/step", round(1e3 * statistics.median(times["ref"]), 2)),
        _row(f"{label}: ours ms/step", round(1e3 * statistics.median(times["ours"]), 2)),
        _row(f"{label}: ours / reference", round(ratio, 3), f"<= {limit}" + (" (not enforced in smoke)" if smoke else ""), ok),
        _row(f"{label}: peak GPU memory reference / ours (GiB)", f"{peak['ref'] / gib:.2f} / {peak['ours'] / gib:.2f}"),
    ], ok


def _compare_training(
    ctx: Context,
    label: str,
    method: str,
    amp: dict[str, Any],
    steps: int,
    repeats: int,
    ref: tuple[torch.nn.Module, Callable[[], torch.Tensor], torch.optim.Optimizer],
    ours: tuple[torch.nn.Module, Callable[[], torch.Tensor], torch.optim.Optimizer],
) -> tuple[list[dict[str, Any]], bool]:
    """Time full training steps (autocast forward, backward, optimiser step) of the reference
    and of ours, interleaved; rows of :func:`_step_rows` plus "<method> losses finite".

    ``ref`` / ``ours``: ``(module, loss_fn, optimizer)``; the modules are put in train mode.
    Our losses are kept on the device (no host sync inside the timed steps) and checked
    once at the end.
    """
    losses: list[torch.Tensor] = []

    def step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, keep: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.autocast(**amp):
                loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if keep:
                losses.append(loss.detach())

        return run

    ref[0].train()
    ours[0].train()
    times, peak = _time_pair(ctx, step(ref[1], ref[2], False), step(ours[1], ours[2], True), steps, repeats)
    rows, ok = _step_rows(label, times, peak, ctx.smoke)
    finite = bool(torch.isfinite(torch.stack(losses).float()).all())
    return rows + [_row(f"{method} losses finite", finite, "True", finite)], ok and finite


def check_steps(ctx: Context) -> CheckResult:
    from mae_step import ReferenceMAE
    from moco_step import ReferenceMoCo

    from ssl_cropmix.methods.mae import MAECropMix
    from ssl_cropmix.methods.moco import MoCoCropMix
    from ssl_cropmix.models.vit import build_vit

    dev = ctx.device
    cl = torch.channels_last
    amp = dict(device_type=dev.type, dtype=torch.bfloat16)
    rows: list[dict[str, Any]] = []
    ok_all = True
    steps, repeats = (1, 1) if ctx.smoke else (5, 3)

    # MoCo: ResNet-50 at 224 px (smoke: ResNet-18 at 16 px, small head)
    bb, size, bs, queue, small, hidden = (("resnet18", 16, 4, 64, True, 64) if ctx.smoke
                                          else ("resnet50", 224, 128, 65536, False, 2048))
    torch.manual_seed(0)
    ref = ReferenceMoCo(bb, small, hidden, 128, queue, 0.999).to(dev, memory_format=cl)
    ours = MoCoCropMix(backbone=bb, small_image=small, proj_hidden_dim=hidden, queue_size=queue, cosine_lr=False,
                       lr=0.03).to(dev, memory_format=cl)
    ours.log = lambda *a, **k: None  # outside a Trainer
    sgd = dict(lr=0.03, momentum=0.9, weight_decay=1e-4)
    opt_r = torch.optim.SGD([p for p in ref.parameters() if p.requires_grad], **sgd)
    opt_o = torch.optim.SGD([p for p in ours.parameters() if p.requires_grad], **sgd)
    g = torch.Generator().manual_seed(0)
    xq = torch.rand(bs, 3, size, size, generator=g).to(dev).contiguous(memory_format=cl)
    xk = torch.rand(bs, 3, size, size, generator=g).to(dev).contiguous(memory_format=cl)
    y = torch.zeros(bs, dtype=torch.long, device=dev)
    r, ok = _compare_training(
        ctx, f"MoCoCropMix {bb} {size}px b{bs} bf16 channels_last", "MoCo", amp, steps, repeats,
        (ref, lambda: ref.step(xq, xk), opt_r), (ours, lambda: ours.training_step(((xq, xk), y), 0)["loss"], opt_o),
    )
    rows += r
    ok_all &= ok
    del ref, ours, opt_r, opt_o, xq, xk
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # MAE: ViT-B/16 at 224 px (smoke: a 2-block ViT-Tiny at 32 px, patch 4)
    if ctx.smoke:
        model, img, patch, vkw, bs, ddim, ddepth, dheads = "vit_tiny_patch16_224", 16, 4, {"depth": 1}, 4, 32, 1, 2
    else:
        model, img, patch, vkw, bs, ddim, ddepth, dheads = "vit_base_patch16_224", 224, 16, {}, 128, 512, 8, 16
    torch.manual_seed(0)
    ref_m = ReferenceMAE(build_vit(model, img_size=img, patch_size=patch, vit_kwargs=vkw), ddim, ddepth, dheads, 0.75).to(dev)
    ours_m = MAECropMix(model, img_size=img, patch_size=patch, vit_kwargs=vkw, decoder_dim=ddim, decoder_depth=ddepth,
                        decoder_num_heads=dheads).to(dev)
    ours_m.log = lambda *a, **k: None
    opt_rm = torch.optim.AdamW([p for p in ref_m.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    opt_om = torch.optim.AdamW(ours_m.parameter_groups(0.05), lr=1e-4, betas=(0.9, 0.95))
    x = torch.rand(bs, 3, img, img, generator=g).to(dev)
    labels = torch.zeros(bs, dtype=torch.long, device=dev)
    r, ok = _compare_training(
        ctx, f"MAECropMix {model} {img}px b{bs} bf16", "MAE", amp, steps, repeats,
        (ref_m, lambda: ref_m.step(x), opt_rm), (ours_m, lambda: ours_m.training_step((x, labels), 0)["loss"], opt_om),
    )
    rows += r
    ok_all &= ok
    return CheckResult("steps", ok_all, rows)


# ----------------------------------------------------------------------------- (c) pretrain + eval
def check_pretrain_eval(ctx: Context) -> CheckResult:
    import pytorch_lightning as pl

    from ssl_cropmix.callbacks import KNNMonitor, LinearProbe, OnlineLinearProbe
    from ssl_cropmix.data.datamodule import CropMixDataModule
    from ssl_cropmix.methods.moco import MoCoCropMix

    if ctx.smoke:
        # fp32: bf16 on the CPU is emulated and slow; the bf16 paths run in the "steps" smoke
        dm = CropMixDataModule(dataset="demo", views="moco", query="contrastive", image_size=16, batch_size=8,
                               num_workers=ctx.workers, persistent_workers=False)
        trainer_kw: dict[str, Any] = dict(accelerator="cpu", devices=1, precision="32-true", limit_train_batches=1,
                                          limit_val_batches=1)
        probe_epochs, knn_k, queue = 2, 20, 64
    else:
        from ssl_cropmix.data.cifar import resolve_cifar10

        dm = CropMixDataModule(data_dir=str(resolve_cifar10(ctx.data_root)), dataset="folder", val_split="test",
                               views="moco", query="contrastive", image_size=32, batch_size=512, num_workers=ctx.workers)
        trainer_kw = dict(accelerator="gpu", devices=1, precision="bf16-mixed")
        probe_epochs, knn_k, queue = 30, 200, 4096
    epochs = ctx.pretrain_epochs
    # The CPU-sized fast probe (cached un-augmented features, BN + linear, SGD lr 0.1 x 256/256):
    # a short CIFAR run, not the paper's 90-epoch LARS protocol; the protocol string says so.
    probe = LinearProbe("moco", optimizer="sgd", base_lr=0.1, batch_size=256, head_norm=True, epochs=probe_epochs,
                        cached_features=True)
    knn = KNNMonitor(k=knn_k, every_n_epochs=epochs)
    model = MoCoCropMix(backbone="resnet18", small_image=True, queue_size=queue, momentum=0.99, base_lr=0.06,
                        weight_decay=5e-4, **({"proj_hidden_dim": 64} if ctx.smoke else {}))
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[OnlineLinearProbe(), knn, probe], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=ctx.tmp / "pretrain", **trainer_kw)
    t0 = time.perf_counter()
    trainer.fit(model, dm)
    total = time.perf_counter() - t0
    res = probe.results[-1]
    hw = res.hardware
    want = "cuda" if not ctx.smoke else "cpu"
    probe_dev = str(hw.get("device"))
    knn_dev = str(knn.last_device)
    rows = [
        _row("pretraining epochs", epochs),
        _row("linear probe top-1 / top-5 (%)", f"{res.top1:.2f} / {res.top5:.2f}",
             "> 20 top-1" if not ctx.smoke else "", ctx.smoke or res.top1 > 20),
        _row("kNN top-1 (%)", round(knn.history[-1][1], 2), "> 20" if not ctx.smoke else "", ctx.smoke or knn.history[-1][1] > 20),
        _row("probe parameters' device during its steps", probe_dev, f"{want}*", probe_dev.startswith(want)),
        _row("kNN feature device", knn_dev, f"{want}*", knn_dev.startswith(want)),
        _row("probe trainer accelerator / precision", f"{hw.get('accelerator')} / {hw.get('precision')}",
             f"{type(trainer.accelerator).__name__} / {trainer.precision}",
             hw.get("accelerator") == type(trainer.accelerator).__name__ and hw.get("precision") == str(trainer.precision)),
        _row("probe wall time (s)", round(res.wall_seconds, 1)),
        _row("pretraining + evaluation wall time (s)", round(total, 1)),
        _row("probe protocol", res.protocol),
    ]
    return CheckResult("pretrain_eval", all(r["ok"] for r in rows), rows)


register_check("loader", check_loader)
register_check("steps", check_steps)
register_check("pretrain_eval", check_pretrain_eval)


def _optional_checks() -> None:
    """Checks other scripts provide: ``benchmarks/<module>.py`` with ``acceptance_check``."""
    for mod in ("device_views",):
        if not (HERE / f"{mod}.py").is_file():
            continue
        fn = getattr(importlib.import_module(mod), "acceptance_check", None)
        if callable(fn) and mod not in [n for n, _ in CHECKS]:
            register_check(mod, fn)


# ----------------------------------------------------------------------------- main
def run_checks(ctx: Context, names: list[str] | None = None) -> list[CheckResult]:
    out = []
    for name, fn in CHECKS:
        if names and name not in names:
            continue
        t0 = time.perf_counter()
        try:
            res = fn(ctx)
        except Exception as e:  # a crashing check is a failed check; the others still run
            res = CheckResult(name, False, error=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}")
        res.seconds = round(time.perf_counter() - t0, 1)
        print(f"[{'PASS' if res.passed else 'FAIL'}] {name} ({res.seconds}s)" + (f": {res.error}" if res.error else ""),
              flush=True)
        out.append(res)
    return out


def markdown(results: list[CheckResult], header: str) -> str:
    lines = [header, "", "| check | item | value | target | ok |", "|---|---|---|---|---|"]
    for r in results:
        for row in r.rows:
            lines.append(f"| {r.name} | {row['item']} | {row['value']} | {row['target']} | {'yes' if row['ok'] else 'NO'} |")
        if r.error:
            lines.append(f"| {r.name} | error | {r.error.splitlines()[0]} | | NO |")
        lines.append(f"| {r.name} | **check** ({r.seconds}s) | {'PASS' if r.passed else 'FAIL'} | | {'yes' if r.passed else 'NO'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="same code at toy size on the CPU (no GPU, no CIFAR needed)")
    p.add_argument("--data-root", default=str(HERE.parents[1] / "shared" / "data"))
    p.add_argument("--workers", type=int, default=None, help="loader workers (default 14; smoke 0)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default 5 (smoke 1)")
    p.add_argument("--checks", default=None, help="comma-separated subset of the checks")
    p.add_argument("--out", default="gpu_acceptance", help="folder for gpu_acceptance.md / .json")
    a = p.parse_args(argv)
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("gpu_acceptance: no CUDA GPU on this machine; run with --cpu-smoke for the CPU toy run", file=sys.stderr)
        return 2
    if a.cpu_smoke:
        torch.set_num_threads(1)  # toy sizes: one thread is fastest, and shared CI machines are not oversubscribed
    _optional_checks()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Context(device=torch.device("cpu" if a.cpu_smoke else "cuda"), smoke=a.cpu_smoke, data_root=a.data_root,
                      workers=a.workers if a.workers is not None else (0 if a.cpu_smoke else 14), tmp=Path(tmp),
                      pretrain_epochs=a.pretrain_epochs or (1 if a.cpu_smoke else 5))
        results = run_checks(ctx, a.checks.split(",") if a.checks else None)
    wall = time.perf_counter() - t0
    gpu = torch.cuda.get_device_name(0) if ctx.device.type == "cuda" else "none (CPU smoke)"
    header = (f"## GPU acceptance ({'CPU smoke' if ctx.smoke else 'GPU'}): {gpu}, torch {torch.__version__}, "
              f"{wall:.0f}s total")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(results, header)
    (out / "gpu_acceptance.md").write_text(md)
    (out / "gpu_acceptance.json").write_text(json.dumps(
        {"device": gpu, "smoke": ctx.smoke, "wall_seconds": round(wall, 1), "passed": all(r.passed for r in results),
         "checks": [asdict(r) for r in results]}, indent=2, default=str))
    print(md)
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
